"""`layercomposer eval photos`: the paper's Table 1 on benchmark canvases, for any set of engines.

For each canvas (identity layers and a prompt, as `layercomposer photos canvases` writes them) every engine
renders a picture; each picture is scored on

- identity: faces found in the output are paired one-to-one with the canvas's identity layers (the face of
  each layer's own image is the identity reference) by embedding distance; the cosine similarity of each pair,
  and the face-detection rate (identities with a face in the output). The embedder is ArcFace through
  insightface when that package and its model files are on this machine, else dlib's ResNet from
  face_recognition_models, else the weak hog-colour descriptor; its name heads the column, so numbers from
  different embedders are never mixed;
- prompt alignment: VQAScore (t2v_metrics, with its CLIP-FlanT5 weights in the Hugging Face cache) and CLIPScore
  (a local transformers CLIP folder, ``--clip-model``); "n/a (weights missing)" otherwise;
- image quality: HPSv3 (the ``hpsv3`` package and a local checkpoint, ``--hps-checkpoint``); else "n/a";
- locked-region fidelity (our addition): PSNR between the output and the canvas's own pixels (its flattened
  canvas over white) where the flattened colour comes (99% or more) from locked layers.

Nothing is downloaded: every optional model is used only when its files are already here.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..canvas import Canvas, load_canvas, write_atomic
from ..errors import LayerComposerError
from ..photo import PhotoError, require
from ..photo.cutout import Face, detect_faces, rgb_array
from ..photo.identity import get_embedder
from .metrics import psnr

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


# ----------------------------------------------------------------------------------------------------------
# Identity


class IdentityScorer(Protocol):
    name: str
    threshold: float
    """Euclidean distance (of the embeddings as given) below which two faces are the same person."""

    def faces(self, image: np.ndarray) -> list[tuple[Face, np.ndarray]]: ...


@dataclass
class MediapipeScorer:
    """MediaPipe face detection + an embedder of `identity.py` (dlib ResNet or hog-colour)."""

    kind: str = "auto"

    def __post_init__(self) -> None:
        self.embedder = get_embedder(self.kind)
        self.name = self.embedder.name
        self.threshold = self.embedder.threshold

    def faces(self, image: np.ndarray) -> list[tuple[Face, np.ndarray]]:
        return [(f, self.embedder(image, f)) for f in detect_faces(image, min_score=FACE_SCORE)]


def arcface_folder(explicit: str | None = None) -> Path | None:
    """The folder of insightface ONNX models to use, or None: `explicit`, else ~/.insightface/models/buffalo_l,
    else the first folder there holding .onnx files."""
    if explicit:
        folder = Path(explicit).expanduser()
        return folder if folder.is_dir() and any(folder.glob("*.onnx")) else None
    base = Path(os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser() / "models"
    candidates = [base / ARCFACE_PACK, *(sorted(base.iterdir()) if base.is_dir() else [])]
    return next((c for c in candidates if c.is_dir() and any(c.glob("*.onnx"))), None)


class ArcFaceScorer:
    """insightface's own detector (SCRFD / RetinaFace) and ArcFace recogniser from local ONNX files."""

    threshold = 1.0  # normalised embeddings: distance 1.0 is cosine 0.5 (ArcFace's usual same-person bar ~0.3-0.4)

    def __init__(self, folder: Path, device: str | None = None) -> None:
        insightface = require("insightface")
        from insightface import model_zoo

        providers = ["CPUExecutionProvider"]
        if device and device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        self._det = self._rec = None
        for onnx in sorted(folder.glob("*.onnx")):
            try:
                model = model_zoo.get_model(str(onnx), providers=providers)
            except Exception:  # a file insightface does not know: not ours to use
                continue
            task = getattr(model, "taskname", None)
            if task == "detection" and self._det is None:
                self._det = model
            elif task == "recognition" and self._rec is None:
                self._rec = model
        if self._det is None or self._rec is None:
            raise PhotoError(f"--arcface-dir {folder}: needs a detection and a recognition ONNX model "
                             f"(insightface's {ARCFACE_PACK} pack, for example)")
        ctx = 0 if device and device.startswith("cuda") else -1
        self._det.prepare(ctx, input_size=(640, 640), det_thresh=FACE_SCORE)
        self._rec.prepare(ctx)
        self.name = f"arcface ({folder.name}, insightface {getattr(insightface, '__version__', '?')})"

    def faces(self, image: np.ndarray) -> list[tuple[Face, np.ndarray]]:
        from insightface.app.common import Face as InsightFace

        bgr = np.ascontiguousarray(image[..., ::-1])
        boxes, kpss = self._det.detect(bgr, max_num=0, metric="default")
        h, w = image.shape[:2]
        out = []
        for i, row in enumerate(boxes):
            kps = kpss[i] if kpss is not None else None
            face = InsightFace(bbox=row[:4], kps=kps, det_score=float(row[4]))
            emb = np.asarray(self._rec.get(bgr, face), np.float32)
            x0, y0, x1, y1 = (int(np.rint(v)) for v in row[:4])
            box = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
            points = tuple((float(x), float(y)) for x, y in kps) if kps is not None else ()
            out.append((Face(box, float(row[4]), points), emb / (np.linalg.norm(emb) + 1e-12)))
        return out


def get_identity_scorer(kind: str = "auto", arcface_dir: str | None = None,
                        device: str | None = None) -> IdentityScorer:
    """``auto``: ArcFace when insightface and its model files are here, else dlib, else hog-colour; or the one
    named (``arcface``, ``dlib``, ``hog-colour``): a one-line error when it cannot be used."""
    if kind in ("auto", "arcface"):
        has_package = importlib.util.find_spec("insightface") is not None
        folder = arcface_folder(arcface_dir)
        if has_package and folder is not None:
            return ArcFaceScorer(folder, device)
        if kind == "arcface" or arcface_dir:
            missing = "the insightface package (pip install insightface onnxruntime)" if not has_package else (
                f"its model files ({'--arcface-dir ' + arcface_dir if arcface_dir else '~/.insightface/models/'}"
                f"{ARCFACE_PACK if not arcface_dir else ''} has no .onnx files)")
            raise PhotoError(f"--embedder arcface needs {missing}")
        kind = "auto"
    if kind not in ("auto", "dlib", "hog-colour"):
        raise PhotoError(f"--embedder {kind!r}: must be auto, arcface, dlib or hog-colour")
    return MediapipeScorer(kind)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def identity_scores(case: PhotoCase, output: Image.Image, scorer: IdentityScorer) -> list[dict[str, Any]]:
    """Per identity of the canvas: the output face paired with it (one-to-one, least total distance), its
    cosine similarity and distance; `detected` is False when no output face is left for it."""
    if not case.identities:
        return []
    found = scorer.faces(rgb_array(output))
    rows = []
    if found:
        from ..photo.identity import assign

        dist = np.array([[float(np.linalg.norm(i.embedding - e)) for _, e in found] for i in case.identities])
        # Every identity gets a face while there are faces (an unpaired identity costs more than any pair).
        chosen = assign(dist, threshold=float(dist.max()) * 10 + 1.0)
    else:
        chosen = [None] * len(case.identities)
    for ident, c in zip(case.identities, chosen, strict=True):
        if c is None:
            rows.append({"layer": ident.layer, "detected": False, "cosine": None, "distance": None,
                         "same_person": False})
            continue
        face, emb = found[c]
        d = float(np.linalg.norm(ident.embedding - emb))
        rows.append({"layer": ident.layer, "detected": True, "cosine": round(cosine(ident.embedding, emb), 5),
                     "distance": round(d, 5), "same_person": d < scorer.threshold, "face": list(face.box)})
    return rows


# ----------------------------------------------------------------------------------------------------------
# Prompt alignment and quality


class Metric:
    """A column scored per output picture; unavailable metrics carry the reason (their cells say n/a)."""

    key = ""
    label = ""
    higher_is_better = True

    def __init__(self) -> None:
        self.name = self.label
        self.reason: str | None = None  # why not available (None: available)

    @property
    def available(self) -> bool:
        return self.reason is None

    def score(self, image: Image.Image, prompt: str) -> float:
        raise NotImplementedError


class ClipScore(Metric):
    """CLIPScore as torchmetrics computes it: 100 * max(cosine(image, text), 0), from a local CLIP folder."""

    key, label = "clipscore", "CLIPScore"

    def __init__(self, folder: str | None, device: str | None = None) -> None:
        super().__init__()
        self.folder = Path(folder).expanduser() if folder else None
        self.device = device or "cpu"
        self._model: Any = None
        if self.folder is None:
            self.reason = "no --clip-model folder given (a transformers CLIP model folder)"
        elif not (self.folder / "config.json").is_file():
            self.reason = f"--clip-model {folder}: no config.json (not a transformers model folder)"
        else:
            self.name = f"CLIPScore ({self.folder.name})"

    def _load(self) -> None:
        from transformers import CLIPModel, CLIPProcessor

        try:
            self._processor = CLIPProcessor.from_pretrained(str(self.folder), local_files_only=True)
            self._model = CLIPModel.from_pretrained(str(self.folder), local_files_only=True).eval().to(self.device)
        except (OSError, ValueError) as exc:
            raise LayerComposerError(f"--clip-model {self.folder}: cannot load a CLIP model "
                                     f"({str(exc).splitlines()[0]})") from None

    def score(self, image: Image.Image, prompt: str) -> float:
        import torch

        if self._model is None:
            self._load()
        tok = self._processor.tokenizer
        text = tok([prompt], padding=True, truncation=True, max_length=min(77, tok.model_max_length),
                   return_tensors="pt")
        pixels = self._processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            img = self._model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
            txt = self._model.get_text_features(input_ids=text["input_ids"].to(self.device),
                                                attention_mask=text["attention_mask"].to(self.device))
        img, txt = _features(img), _features(txt)
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float()).item()
        return 100.0 * max(cos, 0.0)


def _features(out: Any) -> Any:
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    return out


def _hf_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    hit = try_to_load_from_cache(repo, "config.json")
    return isinstance(hit, str)


class VqaScore(Metric):
    """VQAScore (Lin et al. 2024) through t2v_metrics, only with its weights in the Hugging Face cache."""

    key, label = "vqascore", "VQAScore"

    def __init__(self, model: str = VQA_MODEL, device: str | None = None) -> None:
        super().__init__()
        self.model, self.device = model, device or "cpu"
        self._scorer: Any = None
        repo = VQA_REPOS.get(model, model)
        if importlib.util.find_spec("t2v_metrics") is None:
            self.reason = "t2v_metrics is not installed (pip install t2v-metrics)"
        elif not _hf_cached(repo):
            self.reason = f"{repo} is not in the Hugging Face cache"
        else:
            self.name = f"VQAScore ({model})"

    def score(self, image: Image.Image, prompt: str) -> float:
        import tempfile

        if self._scorer is None:
            os.environ["HF_HUB_OFFLINE"] = "1"  # use the cache, never download
            import t2v_metrics

            self._scorer = t2v_metrics.VQAScore(model=self.model, device=self.device)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image.png"
            image.save(path)
            return float(self._scorer(images=[str(path)], texts=[prompt])[0][0])


class HpsV3(Metric):
    """HPSv3 (Ma et al. 2025) through the hpsv3 package with a local checkpoint (its Qwen2-VL base cached)."""

    key, label = "hpsv3", "HPSv3"

    def __init__(self, checkpoint: str | None, device: str | None = None) -> None:
        super().__init__()
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint else None
        self.device = device or "cpu"
        self._inferencer: Any = None
        if importlib.util.find_spec("hpsv3") is None:
            self.reason = "the hpsv3 package is not installed"
        elif self.checkpoint is None:
            self.reason = "no --hps-checkpoint given (HPSv3's .safetensors checkpoint)"
        elif not self.checkpoint.is_file():
            self.reason = f"--hps-checkpoint {checkpoint}: no such file"
        else:
            self.name = f"HPSv3 ({self.checkpoint.name})"

    def score(self, image: Image.Image, prompt: str) -> float:
        import tempfile

        if self._inferencer is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            from hpsv3 import HPSv3RewardInferencer

            self._inferencer = HPSv3RewardInferencer(checkpoint_path=str(self.checkpoint), device=self.device)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image.png"
            image.save(path)
            rewards = self._inferencer.reward(prompts=[prompt], image_paths=[str(path)])
        value = rewards[0]
        return float(value[0] if getattr(value, "ndim", 0) else value)  # (mu, sigma): the mean


def prompt_metrics(options: EvalOptions) -> list[Metric]:
    """The prompt-alignment and quality columns, in table order (VQAScore, CLIPScore, HPSv3)."""
    return [VqaScore(options.vqa_model, options.device), ClipScore(options.clip_model, options.device),
            HpsV3(options.hps_checkpoint, options.device)]


# ----------------------------------------------------------------------------------------------------------
# Engines


class Engine(Protocol):
    name: str
    description: str

    def __call__(self, canvas: Canvas) -> Image.Image: ...


@dataclass
class PasteEngine:
    """Naive pasting, the baseline that changes nothing: the flattened canvas over white, no model."""

    name: str = "paste"
    description: str = "flattened canvas, no model"

    def __call__(self, canvas: Canvas) -> Image.Image:
        return canvas_pixels(canvas)


class LayeredEngine:
    def __init__(self, options: EvalOptions) -> None:
        import torch

        from ..models.registry import shipped_models
        from ..pipeline import LayerComposerPipeline

        model = options.model or ("demo" if "demo" in shipped_models() else "tiny-random")
        self.name = "layered"
        self.description = f"{model}{' (hard lock)' if options.hard_lock else ''}"
        self.options = options
        self.pipe = LayerComposerPipeline.from_pretrained(model)
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device != "cpu":
            self.pipe.to(device, torch.bfloat16)

    def __call__(self, canvas: Canvas) -> Image.Image:
        o = self.options
        result = self.pipe.generate(canvas, num_inference_steps=o.steps, guidance_scale=o.guidance, seed=o.seed,
                                    mode="layered", hard_lock=o.hard_lock)
        return result.image


class RefineEngineAdapter:
    def __init__(self, name: str, model: str, backend: str, options: EvalOptions) -> None:
        from ..refine import RefineEngine

        self.name, self.description, self.backend, self.options = name, model, backend, options
        self.engine = RefineEngine(model, backend, options.device)

    def __call__(self, canvas: Canvas) -> Image.Image:
        from ..refine import RefineSettings

        o = self.options
        if self.backend == "demo":
            instruction = None  # our collage model follows the canvas prompt
        else:
            template = o.instruction or BENCHMARK_INSTRUCTION
            instruction = template.replace("{prompt}", (canvas.prompt or "the scene").strip().rstrip("."))
        settings = RefineSettings(instruction=instruction, steps=o.steps, guidance=o.guidance, seed=o.seed)
        return self.engine(canvas, settings)


_MODEL_OPTION = {"refine-kontext": ("kontext_model", "--kontext-model", "a FLUX.1 Kontext diffusers folder"),
                 "refine-qwen": ("qwen_model", "--qwen-model", "a Qwen-Image-Edit(-Plus) diffusers folder")}


def load_engine(name: str, options: EvalOptions) -> Engine:
    """Load one engine; a one-line LayerComposerError naming what is missing when it cannot."""
    if name == "paste":
        return PasteEngine()
    if name == "layered":
        return LayeredEngine(options)
    if name in _MODEL_OPTION:
        attr, flag, what = _MODEL_OPTION[name]
        model = getattr(options, attr)
        if not model:
            raise LayerComposerError(f"{name}: no {flag} given ({what} or a cached hub id)")
        return RefineEngineAdapter(name, model, "kontext" if name == "refine-kontext" else "qwen", options)
    if name == "refine-demo":
        return RefineEngineAdapter(name, options.collage_model or "demo-collage", "demo", options)
    raise LayerComposerError(f"--engines: unknown engine {name!r} (known: {', '.join(ENGINES)})")


def parse_engines(text: str | Sequence[str]) -> list[str]:
    """The engine names of ``--engines`` (comma-separated or a list), checked; old names read as today's."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    names = [OLD_ENGINE_NAMES.get(n, n) for n in names]
    if not names:
        raise LayerComposerError("--engines: give at least one engine")
    for n in names:
        if n not in ENGINES:
            raise LayerComposerError(f"--engines: unknown engine {n!r} (known: {', '.join(ENGINES)})")
    if len(set(names)) != len(names):
        raise LayerComposerError("--engines: an engine is named twice")
    return names


def _quiet_libraries() -> None:
    """No loading progress bars or advisory warnings from diffusers / transformers (one line per engine is ours)."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover
        return
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def _free(engine: Any) -> None:
    del engine
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# ----------------------------------------------------------------------------------------------------------
# The run


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _save_png(image: Image.Image, path: Path) -> None:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def evaluate_photos(canvases: str | os.PathLike[str], out: str | os.PathLike[str], options: EvalOptions,
                    log: Log | None = None) -> dict[str, Any]:
    """Run every engine on every canvas, score the outputs, write `table.md`, `table.json` and the pictures
    (``outputs/<canvas>/<engine>.png``, identity references in ``references/<canvas>/``) under `out`.

    Engines that cannot load: with one engine asked for, a one-line error; with several, that engine's row says
    why it was skipped (and a line goes to `log`); all of them failing is an error.
    """
    say = log or (lambda line: None)
    engines = parse_engines(options.engines)
    if not 1 <= options.steps <= 1000:
        raise LayerComposerError(f"--steps: must be between 1 and 1000, got {options.steps}")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise LayerComposerError(f"--out {out}: exists and is not a folder")
    scorer = get_identity_scorer(options.embedder, options.arcface_dir, options.device)
    # Bad canvases fail before any model loads.
    cases = load_cases(canvases, scorer, options.lock, say, exclude=out_dir)
    metrics = prompt_metrics(options)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for ident in case.identities:
            _save_png(ident.reference, out_dir / "references" / case.id / f"{_safe(ident.layer)}.png")

    _quiet_libraries()
    rows: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, Image.Image]] = {case.id: {} for case in cases}
    for name in engines:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():  # libraries' deprecation notices are not the user's business here
                warnings.simplefilter("ignore", FutureWarning)
                engine = load_engine(name, options)
        except LayerComposerError as exc:
            if len(engines) == 1:
                raise
            reason = str(exc).removeprefix(f"{name}: ")
            say(f"{name}: skipped ({reason})")
            rows[name] = {"status": "skipped", "reason": reason}
            continue
        load_s = time.perf_counter() - t0
        seconds = []
        for case in cases:
            t1 = time.perf_counter()
            image = engine(case.canvas).convert("RGB")
            seconds.append(time.perf_counter() - t1)
            if image.size != case.target.size:  # compare at the canvas's generation size
                image = image.resize(case.target.size, Image.Resampling.LANCZOS)
            outputs[case.id][name] = image
            _save_png(image, out_dir / "outputs" / case.id / f"{name}.png")
        say(f"{name}: {len(cases)} canvases in {sum(seconds):.1f}s (load {load_s:.1f}s)")
        rows[name] = {"status": "ok", "model": engine.description, "load_seconds": round(load_s, 2),
                      "seconds_per_canvas": round(float(np.mean(seconds)), 3)}
        _free(engine)
    if all(row["status"] == "skipped" for row in rows.values()):
        raise LayerComposerError("no engine could run: " + "; ".join(f"{n}: {r['reason']}" for n, r in rows.items()))

    per_canvas: list[dict[str, Any]] = []
    for case in cases:
        prompt = (case.canvas.prompt or "").strip()
        entry: dict[str, Any] = {
            "id": case.id, "canvas": str(case.path), "prompt": prompt or None,
            "size": list(case.target.size), "identities": [i.layer for i in case.identities],
            "layers_without_face": case.no_face, "locked_pixels": int(case.locked.sum()),
            "references": {i.layer: f"references/{case.id}/{_safe(i.layer)}.png" for i in case.identities},
            "engines": {},
        }
        for name, image in outputs[case.id].items():
            record: dict[str, Any] = {"output": f"outputs/{case.id}/{name}.png",
                                      "identity": identity_scores(case, image, scorer)}
            record["locked_psnr"] = psnr(image, case.target, case.locked) if case.locked.any() else None
            for metric in metrics:
                record[metric.key] = metric.score(image, prompt) if metric.available and prompt else None
            entry["engines"][name] = record
        per_canvas.append(entry)

    for name, row in rows.items():
        if row["status"] != "ok":
            continue
        records = [c["engines"][name] for c in per_canvas]
        pairs = [p for r in records for p in r["identity"]]
        detected = [p for p in pairs if p["detected"]]
        row["identity"] = {
            "cosine": _mean([p["cosine"] for p in detected]), "distance": _mean([p["distance"] for p in detected]),
            "detected": len(detected), "identities": len(pairs),
            "same_person": sum(bool(p["same_person"]) for p in pairs),
        }
        locked = [r["locked_psnr"] for r in records if r["locked_psnr"] is not None]
        row["locked_psnr"] = {"mean_db": _mean(locked), "canvases": len(locked)}
        for metric in metrics:
            row[metric.key] = _mean([r[metric.key] for r in records]) if metric.available else None

    report = {
        "format": "layercomposer-photo-table/1",
        "embedder": scorer.name,
        "embedder_threshold": scorer.threshold,
        "canvases": len(cases),
        "settings": {"steps": options.steps, "seed": options.seed, "guidance": options.guidance,
                     "lock": options.lock, "hard_lock": options.hard_lock},
        "metrics": {m.key: {"name": m.name, "available": m.available, "reason": m.reason} for m in metrics},
        "engines": rows,
        "per_canvas": per_canvas,
    }
    write_atomic(out_dir / "table.json", (json.dumps(report, indent=2) + "\n").encode())
    write_atomic(out_dir / "table.md", table_markdown(report).encode())
    return report


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "layer"


# ----------------------------------------------------------------------------------------------------------
# The table


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _psnr_cell(value: float | None) -> str:
    if value is None:
        return "n/a (no locked region)"
    return f"{value:.2f}" + (" (identical)" if value >= PSNR_CAP else "")


def table_markdown(report: dict[str, Any]) -> str:
    """The paper's Table 1 layout: rows = engines; identity, prompt alignment, quality, plus locked PSNR."""
    metrics = report["metrics"]
    emb = report["embedder"]
    heads = [
        "Engine", f"Identity ↑ (cosine, {emb})", "Face detected", "Same person",
        f"Prompt: {metrics['vqascore']['name']} ↑", f"Prompt: {metrics['clipscore']['name']} ↑",
        f"Quality: {metrics['hpsv3']['name']} ↑", "Locked PSNR (dB) ↑",
    ]
    lines = [
        f"# Photo benchmark: {report['canvases']} canvases",
        "",
        f"Steps {report['settings']['steps']}, seed {report['settings']['seed']}, locks: "
        f"{report['settings']['lock']}{', hard lock' if report['settings']['hard_lock'] else ''}. "
        f"Identity: {emb} (same person: distance below {report['embedder_threshold']}).",
        "",
        "| " + " | ".join(heads) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(heads) - 1)) + " |",
    ]
    for name, row in report["engines"].items():
        if row["status"] != "ok":
            lines.append(f"| {name} | skipped: {row['reason']} |" + " |" * (len(heads) - 2))
            continue
        ident = row["identity"]
        n = ident["identities"]
        if n == 0:
            id_cell = det_cell = same_cell = "n/a (no identity faces)"
        else:
            id_cell = _fmt(ident["cosine"]) if ident["detected"] else "n/a (no face detected)"
            det_cell = f"{ident['detected']}/{n} ({100 * ident['detected'] / n:.0f}%)"
            same_cell = f"{ident['same_person']}/{n}"
        cells = [f"{name} ({row['model']})", id_cell, det_cell, same_cell]
        for key, digits in (("vqascore", 3), ("clipscore", 2), ("hpsv3", 2)):
            cells.append(_fmt(row[key], digits) if metrics[key]["available"] else NA_WEIGHTS)
        cells.append(_psnr_cell(row["locked_psnr"]["mean_db"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Identity: mean cosine similarity between each identity layer's face and the output face paired "
                 "with it (one-to-one, least total embedding distance), over the identities whose face was found. "
                 "Locked PSNR: output vs the canvas's own pixels where the flattened colour is at least "
                 f"{LOCKED_WEIGHT:.0%} from locked layers, mean over the canvases that have such pixels "
                 f"({PSNR_CAP:.0f} = identical).")
    missing = [f"- {m['name']}: {m['reason']}" for m in metrics.values() if not m["available"]]
    if missing:
        lines += ["", "Columns without weights:", *missing]
    return "\n".join(lines) + "\n"
