"""Face embeddings for matching identities across photos, offline.

- ``dlib``: dlib's ResNet face-recognition model (128-d, 99.38% on LFW per dlib) with its 5-point aligner,
  both from the ``face_recognition_models`` package (``dlib-bin`` provides dlib). Same person: distance < 0.6.
- ``hog-colour``: a weak fallback that needs only OpenCV: a HOG descriptor of the grey face crop plus a
  hue/saturation histogram. It is NOT a face-recognition model: it tells apart clearly different faces in
  similar conditions and nothing more; outputs name it so figures from different embedders are never mixed.

``get_embedder("auto")`` picks dlib when it is installed, else hog-colour.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from . import PhotoError, require
from .cutout import Face

DLIB_NAME = "dlib-resnet-v1 (face_recognition_models 0.3)"
HOG_NAME = "hog-colour-v1 (weak: HOG + hue/sat histogram, not a face-recognition model)"


class FaceEmbedder(Protocol):
    name: str
    threshold: float
    """Euclidean distance below which two embeddings are taken for the same person."""

    def __call__(self, image: np.ndarray, face: Face) -> np.ndarray: ...


def _face_recognition_models_dir() -> Path:
    # Its __init__ imports pkg_resources (gone from recent setuptools): locate the files without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PhotoError(
            'dlib embedder needs face_recognition_models; install with: pip install "layercomposer[photo]"'
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@dataclass
class DlibEmbedder:
    name: str = DLIB_NAME
    threshold: float = 0.6

    def __post_init__(self) -> None:
        dlib = require("dlib", "dlib-bin")
        models = _face_recognition_models_dir()
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def __call__(self, image: np.ndarray, face: Face) -> np.ndarray:
        x0, y0, x1, y1 = face.box
        shape = self._shape(image, self._dlib.rectangle(int(x0), int(y0), int(x1) - 1, int(y1) - 1))
        return np.asarray(self._net.compute_face_descriptor(image, shape, 1), dtype=np.float32)


@dataclass
class HogColourEmbedder:
    name: str = HOG_NAME
    threshold: float = 0.55

    def __call__(self, image: np.ndarray, face: Face) -> np.ndarray:
        cv2 = require("cv2", "opencv-python-headless")
        x0, y0, x1, y1 = face.box
        h, w = image.shape[:2]
        crop = image[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
        crop = cv2.resize(crop, (64, 64), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        grey = cv2.equalizeHist(grey)
        hog = cv2.HOGDescriptor((64, 64), (16, 16), (8, 8), (8, 8), 9).compute(grey).ravel()
        hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, [8, 8], [0, 180, 0, 256]).ravel()
        hog = hog / (np.linalg.norm(hog) + 1e-6)
        hist = np.sqrt(hist / (hist.sum() + 1e-6))  # Hellinger: unit norm already
        return (np.concatenate([hog, hist]) / np.sqrt(2)).astype(np.float32)


@cache
def get_embedder(kind: str = "auto") -> FaceEmbedder:
    """``auto`` (dlib when installed, else hog-colour), ``dlib`` or ``hog-colour``."""
    if kind == "auto":
        has_dlib = importlib.util.find_spec("dlib") is not None
        has_models = importlib.util.find_spec("face_recognition_models") is not None
        kind = "dlib" if has_dlib and has_models else "hog-colour"
    if kind == "dlib":
        return DlibEmbedder()
    if kind == "hog-colour":
        return HogColourEmbedder()
    raise PhotoError(f"--embedder {kind!r}: must be auto, dlib or hog-colour")


def assign(distances: np.ndarray, threshold: float) -> list[int | None]:
    """Best one-to-one assignment of rows (faces of one photo, at most a handful) to columns (identities)
    minimising the summed distance, an unassigned row costing `threshold`; pairs at or above `threshold` are
    never made (None). Exhaustive over each row's candidate columns."""
    rows = distances.shape[0]
    candidates = [[c for c in np.argsort(distances[r]) if distances[r, c] < threshold] for r in range(rows)]
    best: list = [float("inf"), []]

    def search(r: int, used: frozenset[int], cost: float, chosen: list[int | None]) -> None:
        if cost >= best[0]:
            return
        if r == rows:
            best[0], best[1] = cost, list(chosen)
            return
        for c in candidates[r]:
            if int(c) not in used:
                search(r + 1, used | {int(c)}, cost + float(distances[r, c]), [*chosen, int(c)])
        search(r + 1, used, cost + threshold, [*chosen, None])

    search(0, frozenset(), 0.0, [])
    return best[1]


def match_identities(embeddings: Sequence[Sequence[np.ndarray]], threshold: float) -> list[list[int]]:
    """Identity ids for the faces of each photo (photos in order; faces of one photo never share an id).

    Greedy over photos: each photo's faces are assigned one-to-one to the known identities (mean embedding)
    when closer than `threshold`, else start new identities (ids in order of first appearance).
    """
    members: list[list[np.ndarray]] = []
    out: list[list[int]] = []
    for faces in embeddings:
        centroids = [np.mean(m, axis=0) for m in members]
        dist = np.array([[float(np.linalg.norm(e - c)) for c in centroids] for e in faces]).reshape(
            len(faces), len(centroids)
        )
        chosen = assign(dist, threshold)
        ids = []
        for e, c in zip(faces, chosen, strict=True):
            if c is None:
                members.append([e])
                ids.append(len(members) - 1)
            else:
                members[c].append(e)
                ids.append(c)
        out.append(ids)
    return out
