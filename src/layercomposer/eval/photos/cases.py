"""`eval photos` settings and benchmark canvases: the engines, options, cases, identities and locked regions."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ...canvas import Canvas, load_canvas
from ...errors import LayerComposerError
from ...photo.cutout import rgb_array

if TYPE_CHECKING:
    from .scoring import IdentityScorer


ENGINES = ("layered", "paste", "refine-kontext", "refine-qwen", "refine-demo")
"""`layered`: our pipeline (``--model``); `paste`: naive pasting, the flattened canvas itself (no model: a baseline
that changes nothing); `refine-kontext` / `refine-qwen`: the rough collage refined by FLUX.1 Kontext /
Qwen-Image-Edit (``--kontext-model`` / ``--qwen-model``); `refine-demo`: the refine technique on our
collage-conditioned model (``--collage-model``)."""

OLD_ENGINE_NAMES = {"collage": "paste"}
"""Engine names of earlier versions, still read from ``--engines`` ("collage" meant no model at all, while
everywhere else it names the collage model and mode)."""

NA_WEIGHTS = "n/a (weights missing)"
LOCK_MODES = ("canvas", "background", "none")
LOCKED_WEIGHT = 0.99
"""A pixel is in the locked region when at least this share of its flattened colour comes from locked layers."""
FACE_SCORE = 0.5
"""Face-detection confidence in outputs and identity references."""
PSNR_CAP = 100.0
"""`eval.metrics.psnr`'s value for identical pixels."""

BENCHMARK_INSTRUCTION = (
    "Turn this rough collage into one natural, seamless photograph of: {prompt}. Match the lighting, shadows, "
    "perspective and scale of every element, blend the cut-out edges, keep each person's identity and the "
    "composition."
)
"""What the editing models (refine-kontext, refine-qwen) are told; the canvas prompt goes in first, so that
CLIP's 77 tokens see it."""

ARCFACE_PACK = "buffalo_l"
VQA_MODEL = "clip-flant5-xxl"
VQA_REPOS = {"clip-flant5-xxl": "zhiqiulin/clip-flant5-xxl", "clip-flant5-xl": "zhiqiulin/clip-flant5-xl"}

Log = Callable[[str], None]


@dataclass
class EvalOptions:
    engines: list[str]
    model: str | None = None
    """Layered engine's model (name or folder); default: the shipped demo model, else tiny-random."""
    kontext_model: str | None = None
    qwen_model: str | None = None
    collage_model: str | None = None
    """refine-demo's model (default demo-collage)."""
    steps: int = 28
    seed: int = 0
    guidance: float | None = None
    device: str | None = None
    hard_lock: bool = False
    lock: str = "canvas"
    """canvas: the canvas's own locks; background: lock the background layer, nothing else; none: unlock all."""
    instruction: str | None = None
    """Template for the editing models ({prompt} is filled in); default `BENCHMARK_INSTRUCTION`."""
    embedder: str = "auto"
    arcface_dir: str | None = None
    clip_model: str | None = None
    vqa_model: str = VQA_MODEL
    hps_checkpoint: str | None = None


# ----------------------------------------------------------------------------------------------------------
# Canvases


@dataclass
class Identity:
    layer: str
    reference: Image.Image
    """The layer's own image over white, with a margin (what the face was found in)."""
    embedding: np.ndarray


@dataclass
class PhotoCase:
    id: str
    path: Path
    canvas: Canvas
    target: Image.Image
    """The canvas's own pixels: the flattened canvas at the generation size, over white (RGB)."""
    locked: np.ndarray
    """Locked region (bool, generation size)."""
    identities: list[Identity] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    """Subject layers in whose image no face was found (objects): not identities."""


def find_canvases(root: str | os.PathLike[str], exclude: Path | None = None) -> list[Path]:
    """Canvas files (.json, .lcz) in `root` and its sub-folders (one level), sorted; or `root` itself.
    Results folders of this command (table.json beside table.md) and `exclude` are left out."""
    path = Path(root)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LayerComposerError(f"--canvases {root}: no such folder")
    skip = exclude.resolve() if exclude is not None else None
    found = sorted(
        p for pattern in ("*.json", "*.lcz", "*/*.json", "*/*.lcz") for p in path.glob(pattern)
        if p.is_file() and not p.name.startswith(".") and not (skip and p.resolve().is_relative_to(skip))
        and not (p.parent / "table.md").is_file()
    )
    if not found:
        raise LayerComposerError(f"--canvases {root}: no canvas (.json / .lcz) in it")
    return found


def canvas_id(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if root.is_dir() else Path(path.name)
    stem = str(rel.with_suffix("")).replace(os.sep, "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "canvas"


def apply_lock(canvas: Canvas, lock: str) -> Canvas:
    """The canvas with locks as `lock` says (see `EvalOptions.lock`)."""
    if lock not in LOCK_MODES:
        raise LayerComposerError(f"--lock: must be one of {', '.join(LOCK_MODES)}, got {lock!r}")
    if lock == "canvas":
        return canvas
    out = canvas.copy()
    for layer in out.layers:
        layer.locked = lock == "background" and layer.is_background
    return out


def locked_region(canvas: Canvas, size: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels whose flattened colour comes (at least `LOCKED_WEIGHT`) from locked layers (bool, (H, W))."""
    w, h = size or canvas.generation_size
    weight = np.zeros((h, w), np.float64)  # share of the composite contributed by locked layers so far
    for layer in canvas.visible_layers():  # back to front: over-compositing the weights like colours
        a = np.asarray(canvas.render_layer(layer, (w, h)).getchannel("A"), np.float64) / 255.0
        weight = (a if layer.locked else 0.0) + weight * (1.0 - a)
    return weight >= LOCKED_WEIGHT


def canvas_pixels(canvas: Canvas) -> Image.Image:
    """The flattened canvas at its generation size over white, RGB: the `paste` engine's picture, and what the
    refine engines start from."""
    w, h = canvas.generation_size
    base = Image.new("RGBA", (w, h), (255, 255, 255, 255))
    return Image.alpha_composite(base, canvas.flatten((w, h))).convert("RGB")


def reference_image(layer_image: Image.Image) -> Image.Image:
    """A layer's own image over white, with a 25% margin (face detectors miss faces that touch the edge)."""
    rgba = layer_image.convert("RGBA")
    box = rgba.getchannel("A").getbbox() or (0, 0, *rgba.size)
    crop = rgba.crop(box)
    m = max(8, round(0.25 * max(crop.size)))
    sheet = Image.new("RGBA", (crop.width + 2 * m, crop.height + 2 * m), (255, 255, 255, 255))
    sheet.alpha_composite(crop, (m, m))
    return sheet.convert("RGB")


def load_cases(root: str | os.PathLike[str], scorer: IdentityScorer, lock: str = "canvas",
               log: Log | None = None, exclude: Path | None = None) -> list[PhotoCase]:
    """Load every canvas under `root`, with its identities (faces of its subject layers) and locked region."""
    root_path = Path(root)
    cases: list[PhotoCase] = []
    seen: set[str] = set()
    for path in find_canvases(root_path, exclude):
        canvas = apply_lock(load_canvas(path), lock)
        cid = canvas_id(path, root_path)
        if cid in seen:
            cid = f"{cid}-{len(cases)}"
        seen.add(cid)
        case = PhotoCase(cid, path, canvas, canvas_pixels(canvas), locked_region(canvas))
        for layer in canvas.visible_layers():
            if layer.is_background:
                continue
            ref = reference_image(layer.image.rgba)
            faces = scorer.faces(rgb_array(ref))
            if not faces:
                case.no_face.append(layer.name)
                continue
            _, emb = max(faces, key=lambda fe: fe[0].width * fe[0].height)
            case.identities.append(Identity(layer.name, ref, emb))
        if log and not case.identities:
            log(f"{path}: no face in any subject layer; identity is not measured on this canvas")
        if log and not (canvas.prompt or "").strip():
            log(f"{path}: no prompt; prompt alignment is not measured on this canvas")
        cases.append(case)
    return cases
