"""Subject cut-out and face detection on photos.

- People: MediaPipe 0.10.14's selfie segmentation (general model, its .tflite ships in the wheel).
- Objects: OpenCV GrabCut initialised with a box.
- Faces: MediaPipe face detection, short- and full-range models merged (boxes, scores, six keypoints).

Masks are cleaned the same way whatever made them: a threshold, a small morphological opening and closing,
small holes filled, the largest connected component kept, then a slight Gaussian feather for the alpha edge.
The layer is cropped to its content.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import PhotoError, require

MODEL_SIDE = 1024
"""Photos are handed to the MediaPipe models at most this large (they work at 256 px or less inside)."""

GRABCUT_SIDE = 640
"""GrabCut runs on a copy at most this large (its cost grows with the pixels); the mask is scaled back."""

PERSON_FACE_SCORE = 0.6
"""Face confidence that makes a person in `cutout` (scikit-image's cat gets 0.52 from the face detector)."""

SEGMENTER_NAME = "mediapipe-0.10.14 selfie segmentation (general)"
FACE_DETECTOR_NAME = "mediapipe-0.10.14 face detection (short+full range)"


@dataclass(frozen=True)
class Face:
    """A detected face in pixel coordinates of the image it was found in."""

    box: tuple[int, int, int, int]
    """(x0, y0, x1, y1), exclusive right/bottom."""
    score: float
    keypoints: tuple[tuple[float, float], ...] = ()
    """MediaPipe's six: the subject's right eye, left eye, nose tip, mouth centre, right ear, left ear."""

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def eyes(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """(image-left eye, image-right eye) or None without keypoints."""
        if len(self.keypoints) < 2:
            return None
        a, b = self.keypoints[0], self.keypoints[1]
        return (a, b) if a[0] <= b[0] else (b, a)

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": list(self.box),
            "score": round(self.score, 4),
            "keypoints": [[round(x, 1), round(y, 1)] for x, y in self.keypoints],
        }


@dataclass
class Cutout:
    """A subject cut out of a photo."""

    layer: Image.Image
    """RGBA, cropped to the content (alpha > 0)."""
    box: tuple[int, int, int, int]
    """Where `layer` sits in the photo: (x0, y0, x1, y1)."""
    alpha: np.ndarray
    """Full-frame alpha (uint8, the photo's size)."""
    method: str


# ----------------------------------------------------------------------------------------------------------
# Loading


def load_photo(path: str | Path) -> Image.Image:
    """Read and decode a photo with the project's limits (the canvas's own reader); RGB, alpha dropped."""
    from ..canvas import LayerImage

    return LayerImage.from_file(path).rgba.convert("RGB")


def rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A C-contiguous HxWx3 uint8 RGB array (greyscale is repeated, alpha dropped)."""
    if isinstance(image, Image.Image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise PhotoError(f"expected an HxWx3 image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def _model_input(arr: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longer side is at most `side`; returns the array and the factor applied."""
    h, w = arr.shape[:2]
    factor = min(1.0, side / max(h, w))
    if factor >= 1.0:
        return arr, 1.0
    cv2 = require("cv2", "opencv-python-headless")
    small = cv2.resize(arr, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small), factor


# ----------------------------------------------------------------------------------------------------------
# Models


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what MediaPipe's C++ (TFLite, absl) writes straight to file descriptor 2, and Python warnings.

    The CLI promises a quiet stderr (one line on success or error); Python exceptions are unaffected.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (embedded): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def person_probability(image: Image.Image | np.ndarray) -> np.ndarray:
    """Per-pixel probability of "person" (float32 in [0, 1], the image's size), MediaPipe selfie segmentation."""
    arr = rgb_array(image)
    mp = require("mediapipe")
    cv2 = require("cv2", "opencv-python-headless")
    small, factor = _model_input(arr, MODEL_SIDE)
    with quiet_native_stderr(), mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        result = seg.process(small)
    prob = np.asarray(result.segmentation_mask, dtype=np.float32)
    if factor < 1.0:
        prob = cv2.resize(prob, (arr.shape[1], arr.shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(prob, 0.0, 1.0)


def detect_faces(image: Image.Image | np.ndarray, min_score: float = 0.5) -> list[Face]:
    """Faces in the image, best score first: MediaPipe's short-range and full-range detectors, merged.

    The detectors see a small square (128 / 192 px), so a wide or tall photo is also searched in square
    tiles along its long side (half overlapping): small faces in group photos are found too. Overlapping
    detections (IoU > 0.3) are one face; the higher score wins.
    """
    arr = rgb_array(image)
    mp = require("mediapipe")
    h, w = arr.shape[:2]
    side = min(h, w)
    windows = [(0, 0, w, h)]
    if max(h, w) > 1.2 * side:
        steps = math.ceil((max(h, w) - side) / (side / 2))
        for i in range(steps + 1):
            o = round(i * (max(h, w) - side) / steps)
            windows.append((o, 0, o + side, h) if w > h else (0, o, w, o + side))
    found: list[Face] = []
    with quiet_native_stderr():
        for selection in (0, 1):
            with mp.solutions.face_detection.FaceDetection(
                model_selection=selection, min_detection_confidence=min_score
            ) as det:
                for wx0, wy0, wx1, wy1 in windows:
                    small, _ = _model_input(np.ascontiguousarray(arr[wy0:wy1, wx0:wx1]), MODEL_SIDE)
                    found.extend(_faces(det.process(small), (wx0, wy0, wx1 - wx0, wy1 - wy0), (w, h)))
    # MediaPipe's own threshold lets some lower scores through (the cat in scikit-image: 0.52 at 0.6).
    found = sorted((f for f in found if f.score >= min_score), key=lambda f: -f.score)
    kept: list[Face] = []
    for face in found:
        if all(box_iou(face.box, other.box) <= 0.3 for other in kept):
            kept.append(face)
    return kept


def _faces(result: Any, window: tuple[int, int, int, int], size: tuple[int, int]) -> list[Face]:
    """MediaPipe detections (relative to `window` = x, y, w, h) as Faces in image pixels."""
    ox, oy, ww, wh = window
    w, h = size
    out = []
    for d in result.detections or []:
        rel = d.location_data.relative_bounding_box
        x0 = max(0, math.floor(ox + rel.xmin * ww))
        y0 = max(0, math.floor(oy + rel.ymin * wh))
        x1 = min(w, math.ceil(ox + (rel.xmin + rel.width) * ww))
        y1 = min(h, math.ceil(oy + (rel.ymin + rel.height) * wh))
        if x1 <= x0 or y1 <= y0:
            continue
        keypoints = tuple((ox + kp.x * ww, oy + kp.y * wh) for kp in d.location_data.relative_keypoints)
        out.append(Face((x0, y0, x1, y1), float(d.score[0]), keypoints))
    return out


def grabcut_mask(image: Image.Image | np.ndarray, box: tuple[int, int, int, int], iterations: int = 5) -> np.ndarray:
    """Foreground (bool, the image's size) of OpenCV GrabCut initialised with `box` (x0, y0, x1, y1)."""
    cv2 = require("cv2", "opencv-python-headless")
    arr = rgb_array(image)
    h, w = arr.shape[:2]
    small, factor = _model_input(arr, GRABCUT_SIDE)
    sh, sw = small.shape[:2]
    x0, y0, x1, y1 = (round(v * factor) for v in box)
    x0, y0 = min(max(0, x0), sw - 1), min(max(0, y0), sh - 1)
    x1, y1 = max(x0 + 1, min(sw, x1)), max(y0 + 1, min(sh, y1))
    if (x1 - x0) * (y1 - y0) >= sw * sh:
        # GrabCut needs some background outside the rectangle: keep a 1-pixel frame.
        x0, y0, x1, y1 = min(1, sw - 1), min(1, sh - 1), max(2, sw - 1), max(2, sh - 1)
    mask = np.zeros((sh, sw), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(
            cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
            mask,
            (x0, y0, x1 - x0, y1 - y0),
            bgd,
            fgd,
            iterations,
            cv2.GC_INIT_WITH_RECT,
        )
    except cv2.error as exc:
        raise PhotoError(f"GrabCut failed on box {box}: {str(exc).strip().splitlines()[-1]}") from None
    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    if factor < 1.0:
        fg = cv2.resize(fg * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
    return fg.astype(bool)


# ----------------------------------------------------------------------------------------------------------
# Masks


def clean_mask(mask: np.ndarray, largest: bool = True) -> np.ndarray:
    """Binary mask cleanup: opening and closing (about 1% of the short side), small holes filled, and (by
    default) only the largest 8-connected component kept. Returns bool."""
    cv2 = require("cv2", "opencv-python-headless")
    m = (np.asarray(mask) > 0).astype(np.uint8)
    h, w = m.shape
    k = max(3, round(0.01 * min(h, w)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    # Fill holes smaller than ~ (3k)^2 that do not touch the border (gaps between arm and body stay).
    n, labels, stats, _ = cv2.connectedComponentsWithStats(1 - m, connectivity=4)
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if area <= (3 * k) ** 2 and x > 0 and y > 0 and x + bw < w and y + bh < h:
            m[labels == i] = 1
    if largest:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if n > 1:
            m = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    return m.astype(bool)


def feather(mask: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """A soft alpha (uint8) from a binary mask: a Gaussian of ~0.25% of the short side (at least 0.7 px)."""
    cv2 = require("cv2", "opencv-python-headless")
    m = np.asarray(mask, dtype=np.float32)
    if sigma is None:
        sigma = max(0.7, 0.0025 * min(m.shape))
    soft = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return np.clip(np.round(soft * 255), 0, 255).astype(np.uint8)


def rgba_layer(arr: np.ndarray, alpha: np.ndarray) -> Image.Image:
    """Full-frame RGBA from RGB pixels and an alpha; colour is zeroed where alpha is 0 (smaller PNGs)."""
    rgb = np.where(alpha[..., None] > 0, arr, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


# ----------------------------------------------------------------------------------------------------------
# Cut-out


def parse_box(text: str, size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """Parse ``x0,y0,x1,y1`` (pixels); with `size` (w, h), check it lies in the image and is not empty."""
    parts = text.replace(" ", "").split(",")
    try:
        if len(parts) != 4:
            raise ValueError
        x0, y0, x1, y1 = (round(float(p)) for p in parts)
    except (ValueError, OverflowError):
        raise PhotoError(f"--box {text!r}: expected x0,y0,x1,y1 in pixels, e.g. 10,20,200,300") from None
    if x1 <= x0 or y1 <= y0:
        raise PhotoError(f"--box {text!r}: needs x1 > x0 and y1 > y0")
    if size is not None:
        w, h = size
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise PhotoError(f"--box {text!r}: outside the {w}x{h} photo")
        if (x1 - x0) < 8 or (y1 - y0) < 8:
            raise PhotoError(f"--box {text!r}: smaller than 8x8 pixels")
    return x0, y0, x1, y1


def cutout(
    image: Image.Image | np.ndarray, box: tuple[int, int, int, int] | None = None, method: str = "auto"
) -> Cutout:
    """Cut the subject out of a photo.

    `method`: "person" (selfie segmentation, restricted to `box` when given; the person of the largest
    detected face), "grabcut" (needs `box`), or "auto" (GrabCut when a box is given, else person).
    """
    arr = rgb_array(image)
    if method == "auto":
        method = "grabcut" if box is not None else "person"
    face: Face | None = None
    if method == "person":
        # The selfie model calls anything "person" when there is none (a cat: 91% of the pixels), so a person
        # is looked for where there is a face: the largest face (inside `box`, when given) picks the part kept.
        faces = [
            f
            for f in detect_faces(arr, min_score=PERSON_FACE_SCORE)
            if box is None or (box[0] <= f.centre[0] <= box[2] and box[1] <= f.centre[1] <= box[3])
        ]
        if not faces:
            raise PhotoError(
                "no person found in the photo (no face detected; for an object, or a person seen "
                "from behind, give --box x0,y0,x1,y1)"
            )
        face = max(faces, key=lambda f: f.width * f.height)
        raw = person_probability(arr) >= 0.5
        if box is not None:
            inside = np.zeros_like(raw)
            inside[box[1] : box[3], box[0] : box[2]] = True
            raw &= inside
        name = SEGMENTER_NAME
    elif method == "grabcut":
        if box is None:
            raise PhotoError("GrabCut needs a box: --box x0,y0,x1,y1")
        raw = grabcut_mask(arr, box)
        name = "opencv grabcut (box)"
    else:
        raise PhotoError(f"unknown cut-out method {method!r} (person, grabcut or auto)")
    if raw.mean() < 0.002:
        what = "no person" if method == "person" else "nothing"
        hint = " (for an object, give --box x0,y0,x1,y1)" if method == "person" else " (try a tighter --box)"
        raise PhotoError(f"{what} found in the photo{hint}")
    mask = clean_mask(raw, largest=face is None)
    if face is not None:
        mask = _part_at(mask, face)
    alpha = feather(mask)
    ys, xs = np.nonzero(alpha)
    crop = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    layer = rgba_layer(arr, alpha).crop(crop)
    return Cutout(layer=layer, box=crop, alpha=alpha, method=name)


def _part_at(mask: np.ndarray, face: Face) -> np.ndarray:
    """The connected part of `mask` with the most pixels in the face's box (grown by a quarter)."""
    cv2 = require("cv2", "opencv-python-headless")
    n, parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    h, w = mask.shape
    gx, gy = face.width // 4, face.height // 4
    x0, y0, x1, y1 = face.box
    window = parts[max(0, y0 - gy) : min(h, y1 + gy), max(0, x0 - gx) : min(w, x1 + gx)]
    counts = np.bincount(window.ravel(), minlength=n)
    counts[0] = 0
    if counts.max() == 0:
        raise PhotoError(f"no person found around the face at {list(face.box)}")
    return parts == int(np.argmax(counts))


# ----------------------------------------------------------------------------------------------------------
# Geometry


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
