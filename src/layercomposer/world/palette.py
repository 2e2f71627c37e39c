"""Named colours and named lightings of the sprites world, and how a lighting re-colours pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (214, 48, 49),
    "orange": (240, 132, 30),
    "yellow": (250, 208, 45),
    "green": (62, 176, 74),
    "teal": (28, 166, 166),
    "blue": (46, 98, 214),
    "purple": (136, 74, 200),
    "pink": (246, 128, 178),
    "brown": (134, 84, 44),
    "white": (246, 246, 240),
}
"""Character colours (as seen in daylight); their names are the words prompts use."""

OUTLINE: RGB = (34, 28, 44)
"""One dark ink for every outline, pupil and mouth: a cartoon look that a small model learns quickly."""

MIN_PAIR_DISTANCE = 100.0
"""Primary/secondary pairs closer than this (RGB Euclidean) are not used: the pattern would not show."""


def colour_distance(a: RGB, b: RGB) -> float:
    """Euclidean distance between two RGB colours."""
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


@dataclass(frozen=True)
class Lighting:
    """A named lighting: the sky it paints and the affine re-colouring it applies to everything lit."""

    name: str
    sky_top: RGB
    sky_bottom: RGB
    saturation: float
    multiply: tuple[float, float, float]
    add: tuple[float, float, float]
    shade: float
    """Strength of the directional shade across characters (0 = flat light)."""

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Re-light float RGB values (last axis = channels, 0..255); the result is not clipped."""
        rgb = np.asarray(rgb, dtype=np.float32)
        grey = rgb.mean(axis=-1, keepdims=True)
        out = grey + (rgb - grey) * self.saturation
        return out * np.asarray(self.multiply, np.float32) + np.asarray(self.add, np.float32)

    def colour(self, rgb: RGB) -> RGB:
        """Re-light one colour, for drawing calls."""
        out = np.clip(np.rint(self.apply(np.asarray(rgb, np.float32))), 0, 255)
        return (int(out[0]), int(out[1]), int(out[2]))


LIGHTINGS: dict[str, Lighting] = {
    lit.name: lit
    for lit in (
        Lighting("day", (78, 156, 238), (186, 224, 250), 1.0, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 0.12),
        Lighting("sunset", (72, 58, 138), (250, 142, 78), 1.0, (1.0, 0.72, 0.56), (22.0, 6.0, 12.0), 0.24),
        Lighting("night", (8, 12, 40), (32, 44, 92), 0.7, (0.3, 0.36, 0.58), (4.0, 6.0, 18.0), 0.14),
        Lighting("overcast", (138, 144, 156), (192, 196, 204), 0.5, (0.8, 0.82, 0.86), (0.0, 0.0, 0.0), 0.03),
    )
}
"""The lightings; the order of this dict is the canonical order (e.g. for confusion matrices)."""

LIGHTING_NAMES: tuple[str, ...] = tuple(LIGHTINGS)


def get_lighting(name: str) -> Lighting:
    """The lighting called `name`, or a ValueError listing the known names."""
    try:
        return LIGHTINGS[name]
    except KeyError:
        raise ValueError(f"unknown lighting {name!r}; known: {', '.join(LIGHTINGS)}") from None
