"""Body geometry in normalised body coordinates: outlines of the shapes and the pattern figures.

A body spans y in [-0.5, 0.5] (height 1, y down) and x in [-aspect/2, aspect/2]. Drawing code maps these
coordinates to pixels with the per-image squash/stretch, so patterns deform with the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

Points = list[tuple[float, float]]


@dataclass(frozen=True)
class ShapeInfo:
    """Per-shape constants: width/height ratio and where the face and shoulders sit."""

    aspect: float
    face_y: float
    eye_gap: float
    """Half the distance between the two eyes, in body heights."""


SHAPE_INFO: dict[str, ShapeInfo] = {
    "round": ShapeInfo(1.0, -0.08, 0.15),
    "tall": ShapeInfo(0.62, -0.2, 0.12),
    "boxy": ShapeInfo(0.95, -0.1, 0.16),
    "pear": ShapeInfo(0.92, 0.0, 0.13),
    "star": ShapeInfo(1.06, 0.02, 0.12),
    "ghost": ShapeInfo(0.82, -0.14, 0.14),
}

_N = 128  # outline vertices: smooth at 4x supersampling, cheap to fill


def _normalise(pts: np.ndarray, aspect: float) -> np.ndarray:
    """Scale an outline so it spans exactly height 1 and width `aspect`, centred on the origin."""
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = (lo + hi) / 2
    return (pts - centre) * np.array([aspect / (hi[0] - lo[0]), 1.0 / (hi[1] - lo[1])])


def _capsule(aspect: float) -> np.ndarray:
    r = aspect / 2
    t = np.linspace(0, np.pi, _N // 2)
    top = np.stack([-r * np.cos(t), -0.5 + r - r * np.sin(t)], axis=1)
    bottom = np.stack([r * np.cos(t), 0.5 - r + r * np.sin(t)], axis=1)
    return np.concatenate([top, bottom])


def _ghost(aspect: float) -> np.ndarray:
    r = aspect / 2
    t = np.linspace(np.pi, 2 * np.pi, _N // 2)
    dome = np.stack([r * np.cos(t), -0.5 + r + r * np.sin(t)], axis=1)
    x = np.linspace(r, -r, _N // 2)
    # Three scallops along the hem.
    hem = np.stack([x, 0.42 + 0.08 * np.abs(np.sin(3 * np.pi * (x + r) / (2 * r)))], axis=1)
    return np.concatenate([dome, hem])


@cache
def outline(shape: str) -> np.ndarray:
    """The closed outline of `shape` as an (N, 2) array in body coordinates (clockwise on screen)."""
    info = SHAPE_INFO[shape]
    t = np.linspace(0, 2 * np.pi, _N, endpoint=False)
    s, c = np.sin(t), np.cos(t)
    if shape == "round":
        pts = np.stack([s, -c], axis=1)
    elif shape == "tall":
        pts = _capsule(info.aspect)
    elif shape == "boxy":
        # Superellipse |x|^4 + |y|^4 = 1: a box with soft corners.
        pts = np.stack([np.sign(s) * np.abs(s) ** 0.5, -np.sign(c) * np.abs(c) ** 0.5], axis=1)
    elif shape == "pear":
        v = (1 - c) / 2  # 0 at the top, 1 at the bottom
        pts = np.stack([s * (0.55 + 0.45 * v**0.8), -c], axis=1)
    elif shape == "star":
        r = 0.6 + 0.4 * ((1 + np.cos(5 * t)) / 2) ** 1.6
        pts = np.stack([r * s, -r * c], axis=1)
    elif shape == "ghost":
        pts = _ghost(info.aspect)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    pts = _normalise(pts, info.aspect)
    pts.setflags(write=False)
    return pts


def half_width(shape: str, y: float) -> float:
    """Half the body's width at height `y` (body coordinates)."""
    pts = outline(shape)
    near = np.abs(pts[:, 1] - y)
    band = pts[near <= max(0.03, float(near.min()) + 1e-6)]
    return float(np.abs(band[:, 0]).max())


def top_y(shape: str) -> float:
    """Height of the top of the body over its centre line (where hats sit)."""
    pts = outline(shape)
    central = pts[np.abs(pts[:, 0]) <= 0.12]
    return float(central[:, 1].min())


def pattern_figures(pattern: str, aspect: float) -> list[tuple[str, Points, float]]:
    """Figures of a pattern as (kind, points, width), kind 'poly', 'ellipse' or 'line', in body coordinates."""
    # No randomness here: a character's stripes or spots are the same in every image; only the body's squash,
    # the image's rotation and its lighting change them.
    w = aspect / 2 + 0.05
    figs: list[tuple[str, Points, float]] = []
    if pattern == "plain":
        return figs
    if pattern == "stripes":
        for y0 in np.arange(-0.56, 0.56, 0.2):
            figs.append(("poly", [(-w, y0), (w, y0), (w, y0 + 0.09), (-w, y0 + 0.09)], 0.0))
    elif pattern == "spots":
        spots = [
            (-0.62, -0.3),
            (0.55, -0.36),
            (-0.72, 0.08),
            (0.7, 0.06),
            (-0.3, 0.32),
            (0.3, 0.3),
            (0.0, 0.44),
            (-0.05, -0.47),
        ]
        for fx, fy in spots:
            x, r = fx * aspect / 2, 0.085
            figs.append(("ellipse", [(x - r, fy - r), (x + r, fy + r)], 0.0))
    elif pattern == "checker":
        cell = 0.18
        for row, y0 in enumerate(np.arange(-0.54, 0.54, cell)):
            for col, x0 in enumerate(np.arange(-w, w, cell)):
                if (row + col) % 2 == 0:
                    figs.append(("poly", [(x0, y0), (x0 + cell, y0), (x0 + cell, y0 + cell), (x0, y0 + cell)], 0.0))
    elif pattern == "zigzag":
        for y0 in (-0.36, 0.16, 0.36):
            xs = np.arange(-w, w + 0.09, 0.09)
            pts = [(float(x), y0 + (0.045 if k % 2 else -0.045)) for k, x in enumerate(xs)]
            figs.append(("line", pts, 0.06))
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return figs
