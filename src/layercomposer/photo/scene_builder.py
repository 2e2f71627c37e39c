"""The scene builder: folders of photos of the same people -> training scenes (docs/DESIGN.md section 4).

``PHOTOS_DIR/<scene>/*.{png,jpg,jpeg,webp}``: each sub-folder is a scene, several photos of the same people.
For each photo:

1. faces are detected (MediaPipe); faces smaller than ``min_face`` px are not subjects (they still separate
   their person from the others); a photo with no face, or more than ``max_people`` faces, is skipped;
2. people are segmented (MediaPipe selfie segmentation) and the person mask is split into instances by a
   watershed seeded at each face (face core and a strip below it for the torso; the photo's edges steer it);
3. each subject is a full-frame RGBA layer (feathered alpha); the background layer is the photo with the
   subjects inpainted away (OpenCV Telea);
4. identities are matched across the photos of the scene by face embedding (see `identity`), so a person
   keeps one subject id ``s0``, ``s1``, ... in every photo.

The prompt of a photo is its sidecar ``<photo>.txt``, else the scene's ``prompt.txt``, else a template.
The output loads with `layercomposer.data.scenes` unchanged; extra keys record faces, sources and tools.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..canvas import write_atomic
from ..errors import LayerComposerError
from ..imageio import encode_png
from . import PhotoError, require
from .cutout import (
    FACE_DETECTOR_NAME,
    SEGMENTER_NAME,
    Face,
    clean_mask,
    detect_faces,
    feather,
    load_photo,
    person_probability,
    rgb_array,
    rgba_layer,
)
from .identity import get_embedder, match_identities

PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_TEMPLATE = "a photo of {people}"
_COUNT_WORDS = {1: "a person", 2: "two people", 3: "three people", 4: "four people"}


@dataclass
class BuildOptions:
    max_people: int = 4
    """Skip photos with more faces than this (the paper keeps at most 4 people)."""
    min_face: int = 32
    """Faces smaller than this (box height, px, after resizing) are not subjects."""
    max_side: int = 1024
    """Photos larger than this are downscaled (longer side)."""
    min_score: float = 0.6
    """Face detection confidence."""
    template: str = DEFAULT_TEMPLATE
    """Prompt when there is no sidecar text: ``{people}`` ("two people") and ``{n}`` are filled in."""
    embedder: str = "auto"
    overwrite: bool = False

    def check(self) -> BuildOptions:
        if not 1 <= self.max_people <= 16:
            raise LayerComposerError(f"--max-people: must be 1..16, got {self.max_people}")
        if not 8 <= self.min_face <= 4096:
            raise LayerComposerError(f"--min-face: must be 8..4096 px, got {self.min_face}")
        if not 64 <= self.max_side <= 4096:
            raise LayerComposerError(f"--max-side: must be 64..4096 px, got {self.max_side}")
        if not 0.0 < self.min_score < 1.0:
            raise LayerComposerError(f"--min-score: must be in (0, 1), got {self.min_score}")
        try:
            self.template.format(people="a person", n=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise LayerComposerError(f"--template {self.template!r}: only {{people}} and {{n}} ({exc})") from None
        return self


@dataclass
class PhotoLayers:
    """One photo split into subject layers and a background (before identities are matched)."""

    source: Path
    image: Image.Image
    faces: list[Face]
    """The subjects' faces (big enough), in the order of `masks`."""
    masks: list[np.ndarray]
    """Binary mask of each subject (bool, full frame)."""
    alphas: list[np.ndarray]
    background: Image.Image
    ignored_faces: list[Face] = field(default_factory=list)


@dataclass
class BuildReport:
    scenes: list[Path] = field(default_factory=list)
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embedder: str = ""


# ----------------------------------------------------------------------------------------------------------
# One photo


def split_people(
    image: Image.Image | np.ndarray,
    faces: list[Face],
    prob: np.ndarray | None = None,
    markers_only: list[Face] | None = None,
) -> list[np.ndarray]:
    """One binary mask per face: the person mask split into instances.

    A connected part of the person mask with one face is that person's. A part with several faces is split
    by a body distance (pixels below a face: horizontal distance to its centre; above: distance to the centre;
    both in units of that face's width, so a nearer, larger person claims more), and where two faces are
    about as near, a watershed on the photo moves the boundary onto its edges. Parts without a face belong to
    nobody (they stay in the background). `markers_only` faces take their share but get no mask. Each
    subject keeps the parts of its region that are at least 10% of its largest part.
    """
    cv2 = require("cv2", "opencv-python-headless")
    arr = rgb_array(image)
    h, w = arr.shape[:2]
    if prob is None:
        prob = person_probability(arr)
    person = clean_mask(prob >= 0.5, largest=False)
    seeds = [*faces, *(markers_only or [])]
    if not seeds:
        return []
    n_comp, comp = cv2.connectedComponents(person.astype(np.uint8), connectivity=8)
    # The part of the person mask each face belongs to: most of its (slightly grown) box.
    seed_comp = []
    for f in seeds:
        gx, gy = round(0.25 * f.width), round(0.25 * f.height)
        window = comp[max(0, f.box[1] - gy) : min(h, f.box[3] + gy), max(0, f.box[0] - gx) : min(w, f.box[2] + gx)]
        counts = np.bincount(window.ravel(), minlength=n_comp)
        counts[0] = 0
        seed_comp.append(int(np.argmax(counts)) if counts.max() > 0 else -1)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.full((len(seeds), h, w), np.inf, np.float32)
    for i, f in enumerate(seeds):
        if seed_comp[i] < 0:
            continue
        cx, cy = f.centre
        d = np.where(ys >= cy, np.abs(xs - cx), np.hypot(xs - cx, ys - cy)) / max(1, f.width)
        dist[i] = np.where(comp == seed_comp[i], d, np.inf)
    order = np.argsort(dist, axis=0)
    best = order[0]
    best_d = np.take_along_axis(dist, order[:1], axis=0)[0]
    second_d = np.take_along_axis(dist, order[1:2], axis=0)[0] if len(seeds) > 1 else np.full((h, w), np.inf)
    owned = np.isfinite(best_d)
    labels = np.where(owned, best + 2, 0).astype(np.int32)
    ambiguous = owned & (second_d < 1.5 * best_d + 0.25)
    if ambiguous.any():
        markers = np.where(ambiguous, 0, np.where(owned, labels, 1)).astype(np.int32)
        ws = cv2.watershed(cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), markers)
        labels = np.where(ambiguous & (ws >= 2), ws, labels)
    masks = []
    for i in range(len(faces)):
        region = (labels == 2 + i).astype(np.uint8)
        n, parts, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        if n > 2:
            areas = stats[1:, cv2.CC_STAT_AREA]
            region = np.isin(parts, [1 + j for j, a in enumerate(areas) if a >= 0.1 * areas.max()]).astype(np.uint8)
        masks.append(region.astype(bool))
    return masks


def inpaint_background(arr: np.ndarray, remove: np.ndarray) -> Image.Image:
    """The photo with the `remove` pixels (slightly grown) filled by OpenCV's Telea inpainting (RGBA, opaque)."""
    cv2 = require("cv2", "opencv-python-headless")
    h, w = arr.shape[:2]
    k = max(3, round(0.012 * min(h, w)) | 1)
    grown = cv2.dilate(remove.astype(np.uint8) * 255, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    radius = max(3, round(0.01 * min(h, w)))
    filled = cv2.inpaint(arr, grown, radius, cv2.INPAINT_TELEA) if grown.any() else arr
    return Image.fromarray(filled, "RGB").convert("RGBA")


def process_photo(path: Path, options: BuildOptions) -> PhotoLayers:
    """Detect, segment, separate and inpaint one photo; raises PhotoError when it must be skipped."""
    image = load_photo(path)
    if max(image.size) > options.max_side:
        factor = options.max_side / max(image.size)
        image = image.resize(
            (max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.Resampling.LANCZOS
        )
    arr = rgb_array(image)
    faces = detect_faces(arr, min_score=options.min_score)
    subjects = [f for f in faces if f.height >= options.min_face]
    small = [f for f in faces if f.height < options.min_face]
    if not subjects:
        reason = f"no face of at least {options.min_face} px" + (f" ({len(small)} smaller)" if small else "")
        raise PhotoError(reason)
    if len(subjects) > options.max_people:
        raise PhotoError(f"{len(subjects)} people, more than {options.max_people}")
    subjects.sort(key=lambda f: f.centre[0])  # left to right: a stable order before identities are matched
    prob = person_probability(arr)
    masks = split_people(arr, subjects, prob, markers_only=small)
    for face, mask in zip(subjects, masks, strict=True):
        if mask.sum() < 0.5 * face.width * face.height:
            raise PhotoError(f"the person of the face at {list(face.box)} was not segmented")
    alphas = [feather(m) for m in masks]
    background = inpaint_background(arr, np.logical_or.reduce(masks))
    return PhotoLayers(path, image, subjects, masks, alphas, background, small)


# ----------------------------------------------------------------------------------------------------------
# Scenes


def list_scene_folders(photos_dir: Path) -> list[tuple[Path, list[Path]]]:
    """(folder, photos) for each sub-folder holding photos, sorted by name."""
    if not photos_dir.is_dir():
        raise LayerComposerError(f"{photos_dir}: not a folder (expected one sub-folder of photos per scene)")
    out = []
    for folder in sorted(p for p in photos_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_EXTENSIONS)
        if photos:
            out.append((folder, photos))
    if not out:
        raise LayerComposerError(
            f"{photos_dir}: no sub-folder with photos ({', '.join(PHOTO_EXTENSIONS)}); put the photos of each "
            "scene in their own sub-folder"
        )
    return out


def photo_prompt(photo: Path, people: int, template: str) -> tuple[str, str]:
    """(prompt, where it came from): sidecar <photo>.txt, the scene's prompt.txt, or the template."""
    for candidate, origin in ((photo.with_suffix(".txt"), "sidecar"), (photo.parent / "prompt.txt", "scene")):
        if candidate.is_file():
            try:
                text = " ".join(candidate.read_text(encoding="utf-8").split())
            except (OSError, UnicodeDecodeError) as exc:
                raise PhotoError(f"{candidate}: cannot read prompt ({exc})") from None
            if text:
                return text, origin
    return template.format(people=_COUNT_WORDS.get(people, f"{people} people"), n=people), "template"


def build_scene(
    folder: Path, photos: list[Path], out_dir: Path, options: BuildOptions, warn: Callable[[str], None] | None = None
) -> tuple[Path | None, list[tuple[str, str]]]:
    """Build one scene; written to a temporary folder and renamed, so a failure leaves nothing half-written.

    Returns (scene folder or None when every photo was skipped, [(photo, reason) skipped]).
    """
    skipped: list[tuple[str, str]] = []
    done: list[PhotoLayers] = []
    for photo in photos:
        try:
            done.append(process_photo(photo, options))
        except LayerComposerError as exc:
            skipped.append((str(photo), str(exc)))
            if warn:
                warn(f"skipped {photo}: {exc}")
    if not done:
        return None, skipped
    embedder = get_embedder(options.embedder)
    embeddings = [[embedder(rgb_array(p.image), f) for f in p.faces] for p in done]
    ids = match_identities(embeddings, embedder.threshold)
    n_ids = 1 + max(i for row in ids for i in row)
    subjects = [f"s{i}" for i in range(n_ids)]

    target = out_dir / folder.name
    tmp = out_dir / f".{folder.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        images = []
        for n, (p, row) in enumerate(zip(done, ids, strict=True)):
            stem = f"img{n}"
            write_atomic(tmp / f"{stem}.png", encode_png(p.image))
            arr = rgb_array(p.image)
            layers = {"background": f"layers/{stem}/background.png"}
            write_atomic(tmp / layers["background"], encode_png(p.background))
            faces = {}
            for face, alpha, ident in zip(p.faces, p.alphas, row, strict=True):
                name = subjects[ident]
                layers[name] = f"layers/{stem}/{name}.png"
                write_atomic(tmp / layers[name], encode_png(rgba_layer(arr, alpha)))
                faces[name] = face.to_dict()
            # Back to front: the smaller face first (further away), the largest in front.
            front = sorted(zip(p.faces, row, strict=True), key=lambda fr: (fr[0].height, fr[0].box[3]))
            prompt, origin = photo_prompt(p.source, len(p.faces), options.template)
            images.append(
                {
                    "file": f"{stem}.png",
                    "prompt": prompt,
                    "layers": layers,
                    "order": ["background", *(subjects[i] for _, i in front)],
                    "source": p.source.name,
                    "prompt_from": origin,
                    "faces": faces,
                    "ignored_small_faces": len(p.ignored_faces),
                }
            )
        doc: dict[str, Any] = {
            "subjects": subjects,
            "images": images,
            "builder": "layercomposer scenes build",
            "segmenter": SEGMENTER_NAME,
            "face_detector": FACE_DETECTOR_NAME,
            "identity_embedder": embedder.name,
            "identity_threshold": embedder.threshold,
            "background": "opencv inpaint (telea)",
            "skipped": [{"file": Path(f).name, "reason": r} for f, r in skipped],
        }
        write_atomic(tmp / "scene.json", (json.dumps(doc, indent=2) + "\n").encode())
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, skipped


def build_scenes(
    photos_dir: str | Path,
    out_dir: str | Path,
    options: BuildOptions | None = None,
    warn: Callable[[str], None] | None = None,
) -> BuildReport:
    """Build every scene of `photos_dir` into `out_dir` (one sub-folder per scene, docs/DESIGN.md section 4)."""
    options = (options or BuildOptions()).check()
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    folders = list_scene_folders(photos_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LayerComposerError(f"-o {out_dir}: exists and is not a folder")
    if not options.overwrite:
        taken = [f.name for f, _ in folders if (out_dir / f.name).exists()]
        if taken:
            raise LayerComposerError(f"-o {out_dir}: scene {taken[0]!r} exists already (use --overwrite)")
    require("mediapipe")
    require("cv2", "opencv-python-headless")
    report = BuildReport(embedder=get_embedder(options.embedder).name)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder, photos in folders:
        target, skipped = build_scene(folder, photos, out_dir, options, warn)
        report.skipped.extend(skipped)
        if target is not None:
            report.scenes.append(target)
            report.images += len(photos) - len(skipped)
        elif warn:
            warn(f"skipped scene {folder.name}: no usable photo")
    if not report.scenes:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise LayerComposerError(f"{photos_dir}: no usable photo in any scene ({len(report.skipped)} skipped)")
    return report
