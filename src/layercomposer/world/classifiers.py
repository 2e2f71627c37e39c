"""Classifiers of background type and lighting from image statistics, to check pictures against prompts.

Method (deliberately simple, no learning beyond rendering references):

1. Shrink the picture to 32x32 (box filter) and cut it into a grid of 8 horizontal bands x 3 columns. The
   feature of a cell is its per-channel *median* colour: bands follow the world's structure (sky at the top,
   horizon, ground at the bottom) and medians ignore small things (flowers, windows, a hand).
2. Reference features ("palettes") come from clean backgrounds the generator draws itself: for every
   (background, lighting) pair, `CALIBRATION_LAYOUTS` layouts from a fixed seed, both light sides.
3. The distance to a reference is the sum of per-cell colour distances over the best `KEEP_CELLS` share of
   cells: the cells a large character covers are the worst-matching ones and are dropped.
4. A picture gets the (background, lighting) of the nearest reference (1-nearest neighbour).

Lighting is read mostly from the sky cells (or the tinted wall indoors) and the overall tint; background from
the ground colour and the horizon's position.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

from .backgrounds import BACKGROUNDS, make_layout, render_background
from .palette import LIGHTING_NAMES, LIGHTINGS

CALIBRATION_LAYOUTS = 6
CALIBRATION_SIZE = 128
KEEP_CELLS = 0.75
_GRID = 32
_BANDS = 8
_COLUMNS = 3


def features(image: Image.Image) -> np.ndarray:
    """Median colour (0..1) of each of the 8x3 grid cells of an image (any size, any mode): shape (24, 3)."""
    small = np.asarray(image.convert("RGB").resize((_GRID, _GRID), Image.Resampling.BOX), dtype=np.float32)
    rows = [b * _GRID // _BANDS for b in range(_BANDS + 1)]
    cols = [c * _GRID // _COLUMNS for c in range(_COLUMNS + 1)]  # 32 is not a multiple of 3: cells of 10-11
    cells = [
        small[rows[b] : rows[b + 1], cols[c] : cols[c + 1]].reshape(-1, 3)
        for b in range(_BANDS)
        for c in range(_COLUMNS)
    ]
    return np.stack([np.median(cell, axis=0) for cell in cells]) / 255.0


@cache
def _references() -> tuple[np.ndarray, tuple[tuple[str, str], ...]]:
    """Features of the calibration backgrounds and their (background, lighting) labels, computed once."""
    rng = np.random.default_rng(20240917)
    feats, labels = [], []
    for kind in BACKGROUNDS:
        for k in range(CALIBRATION_LAYOUTS):
            layout = make_layout(kind, rng)
            for name in LIGHTING_NAMES:
                side = 1.0 if k % 2 else -1.0
                shift = float(rng.uniform(-0.03, 0.03))
                im = render_background(layout, LIGHTINGS[name], CALIBRATION_SIZE, light_side=side, shift=shift)
                feats.append(features(im))
                labels.append((kind, name))
    return np.stack(feats), tuple(labels)


def classify(image: Image.Image) -> tuple[str, str]:
    """(background, lighting) of the nearest calibration background, by a trimmed per-cell distance."""
    refs, labels = _references()
    per_cell = np.linalg.norm(refs - features(image)[None], axis=2)  # (references, cells)
    keep = max(1, round(KEEP_CELLS * per_cell.shape[1]))
    score = np.sort(per_cell, axis=1)[:, :keep].sum(axis=1)
    return labels[int(np.argmin(score))]


def classify_background(image: Image.Image) -> str:
    """The background type (one of BACKGROUNDS) a picture most looks like."""
    return classify(image)[0]


def classify_lighting(image: Image.Image) -> str:
    """The lighting (one of LIGHTING_NAMES) a picture most looks like."""
    return classify(image)[1]
