"""Procedural backgrounds: a per-scene layout of flat shapes, rendered under a per-image lighting.

A layout is generated once per scene from the scene's RNG (so the place stays the same) and drawn for each
image with that image's lighting, light side and a small horizontal camera shift. Coordinates are
normalised: x in [0, 1] across the width, y in [0, 1] down the height; shapes reach past the edges so that
the camera shift never uncovers anything. Both are in units of the picture's height: a wider picture
(`render_background(..., width=)`) shows more of the same place on both sides, undistorted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .palette import RGB, Lighting
from .sprite import SUPERSAMPLE

BACKGROUNDS: tuple[str, ...] = ("meadow", "beach", "city", "forest", "snow", "desert", "room")

Point = tuple[float, float]


@dataclass(frozen=True)
class Prim:
    """One flat shape of a layout: 'rect', 'ellipse' (two corner points), 'poly', 'line' or 'sky' (a window)."""

    kind: str
    pts: tuple[Point, ...]
    colour: RGB
    width: float = 0.0
    """Line width as a fraction of the image height ('line' only)."""
    outline: RGB | None = None
    night: RGB | None = None
    """If set, the shape glows at night in this colour instead of being darkened (lit windows, lamps)."""


@dataclass
class Layout:
    """A background's geometry, fixed for a scene; `horizon` is where the ground starts (characters stand below)."""

    kind: str
    horizon: float
    prims: list[Prim] = field(default_factory=list)
    clouds: list[list[Prim]] = field(default_factory=list)
    stars: list[Point] = field(default_factory=list)
    outdoor: bool = True


def _rect(x0: float, y0: float, x1: float, y1: float, colour: RGB, **kw: object) -> Prim:
    return Prim("rect", ((x0, y0), (x1, y1)), colour, **kw)  # type: ignore[arg-type]


def _ellipse(cx: float, cy: float, rx: float, ry: float, colour: RGB, **kw: object) -> Prim:
    return Prim("ellipse", ((cx - rx, cy - ry), (cx + rx, cy + ry)), colour, **kw)  # type: ignore[arg-type]


def _poly(pts: list[Point], colour: RGB, **kw: object) -> Prim:
    return Prim("poly", tuple(pts), colour, **kw)  # type: ignore[arg-type]


def _line(pts: list[Point], colour: RGB, width: float) -> Prim:
    return Prim("line", tuple(pts), colour, width=width)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _clouds(rng: np.random.Generator, horizon: float, n: int = 5) -> list[list[Prim]]:
    """Puffy clouds as clusters of ellipses; how many are shown depends on the lighting."""
    out = []
    for _ in range(n):
        cx, cy, s = _u(rng, -0.05, 1.05), _u(rng, 0.06, max(0.08, horizon - 0.2)), _u(rng, 0.05, 0.09)
        puffs = [
            _ellipse(cx + dx * s, cy + dy * s, rx * s, ry * s, (248, 248, 250))
            for dx, dy, rx, ry in ((-1.0, 0.2, 1.0, 0.6), (0.0, -0.2, 1.2, 0.9), (1.1, 0.15, 0.9, 0.6))
        ]
        out.append(puffs)
    return out


def _round_tree(x: float, base: float, s: float, leaf: RGB) -> list[Prim]:
    trunk = _rect(x - 0.1 * s, base - 0.9 * s, x + 0.1 * s, base, (118, 78, 44))
    crowns = [
        _ellipse(x + dx * s, base - dy * s, 0.45 * s, 0.42 * s, leaf)
        for dx, dy in ((-0.3, 0.95), (0.3, 0.95), (0, 1.3))
    ]
    return [trunk, *crowns]


def _pine(x: float, base: float, height: float, leaf: RGB, snow: RGB | None = None) -> list[Prim]:
    w = height * 0.42
    out = [_rect(x - 0.05 * w, base - 0.15 * height, x + 0.05 * w, base, (104, 70, 42))]
    for k in range(3):
        y0 = base - 0.15 * height - k * 0.26 * height
        half = w * (1.0 - 0.25 * k)
        out.append(_poly([(x - half, y0), (x + half, y0), (x, y0 - 0.42 * height)], leaf))
        if snow is not None:
            out.append(
                _poly(
                    [
                        (x - half * 0.38, y0 - 0.26 * height),
                        (x + half * 0.38, y0 - 0.26 * height),
                        (x, y0 - 0.42 * height),
                    ],
                    snow,
                )
            )
    return out


def _hills_and_ground(rng: np.random.Generator, hz: float, tallest: float, hill: RGB, ground: RGB) -> list[Prim]:
    """Two or three low hills on the horizon, then the ground below it (meadow and snow)."""
    hills = [_ellipse(_u(rng, -0.1, 1.1), hz + 0.03, _u(rng, 0.25, 0.45), _u(rng, 0.07, tallest), hill)
             for _ in range(int(rng.integers(2, 4)))]
    return [*hills, _rect(-0.3, hz, 1.3, 1.01, ground)]


def _meadow(rng: np.random.Generator) -> Layout:
    hz = _u(rng, 0.5, 0.6)
    lay = Layout("meadow", hz, clouds=_clouds(rng, hz))
    lay.prims += _hills_and_ground(rng, hz, 0.13, (132, 198, 100), (98, 178, 76))
    for _ in range(int(rng.integers(1, 4))):
        lay.prims += _round_tree(_u(rng, -0.05, 1.05), hz + _u(rng, 0.0, 0.04), _u(rng, 0.07, 0.11), (54, 142, 62))
    for _ in range(int(rng.integers(8, 15))):
        colour = [(250, 250, 250), (250, 214, 60), (240, 120, 170)][int(rng.integers(3))]
        r = _u(rng, 0.007, 0.011)
        lay.prims.append(_ellipse(_u(rng, -0.1, 1.1), _u(rng, hz + 0.05, 0.99), r, r, colour))
    return lay


def _beach(rng: np.random.Generator) -> Layout:
    hz = _u(rng, 0.48, 0.56)
    shore = hz + _u(rng, 0.08, 0.12)
    lay = Layout("beach", hz, clouds=_clouds(rng, hz))
    lay.prims.append(_rect(-0.3, hz, 1.3, shore + 0.05, (44, 126, 204)))
    for k in range(2):
        y = hz + (k + 1) * (shore - hz) / 3
        lay.prims.append(
            _line(
                [(x, y + (0.006 if i % 2 else -0.006)) for i, x in enumerate(np.arange(-0.3, 1.3, 0.05))],
                (178, 218, 244),
                0.006,
            )
        )
    wave = [(float(x), shore + 0.012 * np.sin(x * 9 + _u(rng, 0, 6))) for x in np.linspace(-0.3, 1.3, 24)]
    lay.prims.append(_poly([*wave, (1.3, 1.01), (-0.3, 1.01)], (238, 214, 152)))
    if rng.random() < 0.6:  # palm tree
        x, base = _u(rng, 0.0, 1.0), shore + _u(rng, 0.0, 0.04)
        lean = _u(rng, -0.08, 0.08)
        top = (x + lean, base - 0.38)
        lay.prims.append(_line([(x, base), (x + lean * 0.6, base - 0.2), top], (150, 106, 62), 0.028))
        for ang in np.linspace(-2.6, -0.5, 5):
            tip = (top[0] + 0.14 * np.cos(ang), top[1] + 0.14 * np.sin(ang) + 0.06)
            lay.prims.append(
                _line([top, ((top[0] + tip[0]) / 2, top[1] + 0.3 * (tip[1] - top[1]) - 0.02), tip], (52, 156, 70), 0.03)
            )
    if rng.random() < 0.6:  # beach umbrella
        x, base = _u(rng, 0.05, 0.95), shore + _u(rng, 0.04, 0.1)
        colour = [(222, 62, 62), (250, 200, 40), (60, 120, 220)][int(rng.integers(3))]
        lay.prims.append(_line([(x, base), (x, base - 0.2)], (240, 240, 240), 0.008))
        arc = [(x + 0.12 * np.cos(t), base - 0.2 + 0.07 * np.sin(t)) for t in np.linspace(np.pi, 2 * np.pi, 16)]
        lay.prims.append(_poly(arc, colour))
    for _ in range(int(rng.integers(2, 6))):
        lay.prims.append(_ellipse(_u(rng, -0.1, 1.1), _u(rng, shore + 0.05, 0.99), 0.012, 0.008, (250, 200, 192)))
    return lay


def _city(rng: np.random.Generator) -> Layout:
    hz = _u(rng, 0.6, 0.66)
    lay = Layout("city", hz, clouds=_clouds(rng, hz, 4))
    walls = [(172, 162, 150), (156, 102, 82), (122, 132, 152), (204, 188, 160), (142, 154, 140)]
    x = -0.25
    while x < 1.25:
        w, top = _u(rng, 0.12, 0.22), _u(rng, 0.14, hz - 0.18)
        lay.prims.append(_rect(x, top, x + w, hz, walls[int(rng.integers(len(walls)))]))
        for wy in np.arange(top + 0.03, hz - 0.06, 0.07):
            for wx in np.arange(x + 0.025, x + w - 0.04, 0.055):
                lit = (255, 222, 120) if rng.random() < 0.6 else None
                lay.prims.append(_rect(wx, wy, wx + 0.03, wy + 0.042, (164, 204, 232), night=lit))
        x += w + _u(rng, 0.0, 0.02)
    lay.prims.append(_rect(-0.3, hz, 1.3, hz + 0.07, (178, 178, 172)))
    lay.prims.append(_rect(-0.3, hz + 0.07, 1.3, 1.01, (90, 90, 98)))
    dash_y = hz + 0.07 + (1 - hz - 0.07) * 0.45
    for dx in np.arange(-0.3, 1.3, 0.16):
        lay.prims.append(_rect(dx, dash_y, dx + 0.08, dash_y + 0.012, (236, 236, 236)))
    lamp_x = _u(rng, 0.0, 1.0)
    lay.prims.append(_line([(lamp_x, hz + 0.04), (lamp_x, hz - 0.22)], (60, 64, 72), 0.012))
    lay.prims.append(_ellipse(lamp_x, hz - 0.235, 0.022, 0.018, (236, 236, 210), night=(255, 236, 160)))
    return lay


def _forest(rng: np.random.Generator) -> Layout:
    hz = _u(rng, 0.52, 0.6)
    lay = Layout("forest", hz, clouds=_clouds(rng, hz, 3))
    for x in np.arange(-0.2, 1.25, 0.09):
        lay.prims += _pine(float(x) + _u(rng, -0.03, 0.03), hz + 0.01, _u(rng, 0.26, 0.4), (38, 104, 62))
    lay.prims.append(_rect(-0.3, hz, 1.3, 1.01, (76, 138, 58)))
    for x in (_u(rng, -0.12, 0.08), _u(rng, 0.92, 1.12)):
        lay.prims += _round_tree(x, hz + _u(rng, 0.1, 0.2), _u(rng, 0.16, 0.22), (46, 126, 52))
    for _ in range(int(rng.integers(2, 5))):
        x, y = _u(rng, -0.1, 1.1), _u(rng, hz + 0.06, 0.99)
        lay.prims.append(_rect(x - 0.006, y - 0.02, x + 0.006, y, (240, 236, 224)))
        lay.prims.append(
            _poly(
                [(x + 0.02 * np.cos(t), y - 0.02 + 0.02 * np.sin(t)) for t in np.linspace(np.pi, 2 * np.pi, 10)],
                (204, 52, 48),
            )
        )
    return lay


def _snow(rng: np.random.Generator) -> Layout:
    hz = _u(rng, 0.5, 0.6)
    lay = Layout("snow", hz, clouds=_clouds(rng, hz))
    lay.prims += _hills_and_ground(rng, hz, 0.14, (220, 230, 244), (240, 245, 252))
    for _ in range(int(rng.integers(2, 6))):
        lay.prims += _pine(
            _u(rng, -0.1, 1.1), hz + _u(rng, 0.0, 0.04), _u(rng, 0.14, 0.26), (48, 108, 82), (248, 250, 255)
        )
    if rng.random() < 0.5:  # a snowman
        x, base = _u(rng, 0.05, 0.95), hz + _u(rng, 0.05, 0.12)
        for r, dy in ((0.045, 0.045), (0.034, 0.12), (0.025, 0.178)):
            lay.prims.append(_ellipse(x, base - dy, r, r, (250, 252, 255), outline=(150, 162, 186)))
        lay.prims.append(_poly([(x, base - 0.18), (x + 0.03, base - 0.175), (x, base - 0.17)], (240, 130, 30)))
    return lay


def _desert(rng: np.random.Generator) -> Layout:
    hz = _u(rng, 0.5, 0.6)
    lay = Layout("desert", hz, clouds=_clouds(rng, hz, 2))
    if rng.random() < 0.5:  # a pyramid on the horizon
        x, h = _u(rng, 0.1, 0.9), _u(rng, 0.12, 0.2)
        lay.prims.append(_poly([(x - h * 1.3, hz + 0.01), (x, hz - h), (x + h * 1.3, hz + 0.01)], (214, 180, 112)))
        lay.prims.append(_poly([(x, hz - h), (x + h * 1.3, hz + 0.01), (x + h * 0.4, hz + 0.01)], (188, 150, 88)))
    for _ in range(int(rng.integers(2, 4))):
        lay.prims.append(
            _ellipse(_u(rng, -0.1, 1.1), hz + 0.03, _u(rng, 0.25, 0.5), _u(rng, 0.06, 0.12), (222, 176, 104))
        )
    lay.prims.append(_rect(-0.3, hz, 1.3, 1.01, (234, 198, 130)))
    for _ in range(int(rng.integers(2, 5))):
        y, x0 = _u(rng, hz + 0.06, 0.98), _u(rng, -0.2, 0.9)
        pts = [(float(x), y + 0.01 * np.sin(x * 25)) for x in np.linspace(x0, x0 + _u(rng, 0.15, 0.35), 10)]
        lay.prims.append(_line(pts, (214, 172, 102), 0.006))
    for _ in range(int(rng.integers(1, 4))):  # cacti
        x, base, h = _u(rng, -0.05, 1.05), hz + _u(rng, 0.0, 0.08), _u(rng, 0.1, 0.18)
        green = (70, 150, 82)
        lay.prims.append(_line([(x, base), (x, base - h)], green, 0.04))
        lay.prims.append(
            _line([(x - 0.01, base - 0.4 * h), (x - 0.05, base - 0.42 * h), (x - 0.05, base - 0.7 * h)], green, 0.022)
        )
        lay.prims.append(
            _line(
                [(x + 0.01, base - 0.55 * h), (x + 0.045, base - 0.57 * h), (x + 0.045, base - 0.8 * h)], green, 0.022
            )
        )
    return lay


def _room(rng: np.random.Generator) -> Layout:
    hz = _u(rng, 0.58, 0.64)
    lay = Layout("room", hz, outdoor=False)
    wall = [(226, 206, 176), (200, 220, 206), (214, 200, 226)][int(rng.integers(3))]
    lay.prims.append(_rect(-0.3, -0.01, 1.3, hz, wall))
    lay.prims.append(_rect(-0.3, hz - 0.08, 1.3, hz, (196, 166, 136)))
    wx, wy = _u(rng, 0.05, 0.6), _u(rng, 0.08, 0.16)
    ww, wh = _u(rng, 0.24, 0.34), _u(rng, 0.24, 0.3)
    lay.prims.append(_rect(wx - 0.015, wy - 0.015, wx + ww + 0.015, wy + wh + 0.015, (246, 246, 240)))
    lay.prims.append(Prim("sky", ((wx, wy), (wx + ww, wy + wh)), (0, 0, 0)))
    lay.prims.append(_rect(wx + ww / 2 - 0.006, wy, wx + ww / 2 + 0.006, wy + wh, (246, 246, 240)))
    lay.prims.append(_rect(wx, wy + wh / 2 - 0.006, wx + ww, wy + wh / 2 + 0.006, (246, 246, 240)))
    px = wx + ww + _u(rng, 0.08, 0.2) if wx < 0.4 else wx - _u(rng, 0.22, 0.3)
    art = [(220, 90, 80), (80, 140, 210), (240, 200, 70)][int(rng.integers(3))]
    lay.prims.append(_rect(px, wy + 0.03, px + 0.14, wy + 0.18, (150, 100, 60)))
    lay.prims.append(_rect(px + 0.015, wy + 0.045, px + 0.125, wy + 0.165, art))
    lay.prims.append(_rect(-0.3, hz, 1.3, 1.01, (164, 114, 72)))
    for y in np.arange(hz + 0.07, 1.0, 0.09):
        lay.prims.append(_line([(-0.3, float(y)), (1.3, float(y))], (138, 94, 58), 0.005))
    rug = [(186, 64, 76), (64, 104, 172), (90, 150, 110)][int(rng.integers(3))]
    lay.prims.append(_ellipse(_u(rng, 0.3, 0.7), _u(rng, hz + 0.16, hz + 0.24), _u(rng, 0.25, 0.35), 0.07, rug))
    lx = _u(rng, 0.0, 1.0)
    lay.prims.append(_line([(lx, hz + 0.03), (lx, hz - 0.25)], (70, 60, 56), 0.01))
    lay.prims.append(
        _poly(
            [(lx - 0.04, hz - 0.24), (lx + 0.04, hz - 0.24), (lx + 0.025, hz - 0.31), (lx - 0.025, hz - 0.31)],
            (240, 222, 168),
            night=(255, 230, 150),
        )
    )
    return lay


_MAKERS: dict[str, Callable[[np.random.Generator], Layout]] = {
    "meadow": _meadow,
    "beach": _beach,
    "city": _city,
    "forest": _forest,
    "snow": _snow,
    "desert": _desert,
    "room": _room,
}


def make_layout(kind: str, rng: np.random.Generator) -> Layout:
    """A random layout of background `kind` (the scene's RNG decides where things are)."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown background {kind!r}; known: {', '.join(BACKGROUNDS)}")
    lay = _MAKERS[kind](rng)
    lay.stars = [(_u(rng, 0.0, 1.0), _u(rng, 0.02, max(0.05, lay.horizon - 0.1))) for _ in range(16)]
    return lay


def _sky(lighting: Lighting, width: int, height: int, horizon: float) -> Image.Image:
    """Vertical sky gradient from the lighting's top colour to its horizon colour."""
    t = np.clip(np.arange(height, dtype=np.float32) / max(1.0, horizon * height), 0, 1)[:, None]
    col = (1 - t) * np.asarray(lighting.sky_top, np.float32) + t * np.asarray(lighting.sky_bottom, np.float32)
    return Image.fromarray(np.broadcast_to(np.rint(col)[:, None, :], (height, width, 3)).astype(np.uint8), "RGB")


def render_background(
    layout: Layout, lighting: Lighting, size: int, light_side: float = 1.0, shift: float = 0.0,
    width: int | None = None,
) -> Image.Image:
    """Draw `layout` under `lighting` at `size` x `size` (RGB, opaque); `shift` pans the camera (fraction of the
    height). `width` makes the picture `width` x `size`: the layout's unit square stays centred and undistorted,
    and up to 0.25 of the height more of the place shows on each side (width / height up to 1.5)."""
    s = SUPERSAMPLE
    h = size * s
    w = (width or size) * s
    x0 = (h - w) / (2 * h)  # layout x at the picture's left edge (0 for a square picture)
    sky = _sky(lighting, w, h, layout.horizon)
    im = sky.copy()
    draw = ImageDraw.Draw(im)
    night = lighting.name == "night"

    def px(p: Point, dx: float = shift) -> tuple[float, float]:
        return ((p[0] - dx - x0) * h, p[1] * h)

    def paint(prim: Prim, dx: float = shift) -> None:
        colour = prim.night if night and prim.night is not None else lighting.colour(prim.colour)
        edge = lighting.colour(prim.outline) if prim.outline else None
        pts = [px(p, dx) for p in prim.pts]
        lw = max(1, round(0.004 * h))
        if prim.kind == "rect":
            draw.rectangle((*pts[0], *pts[1]), fill=colour, outline=edge, width=lw if edge else 0)
        elif prim.kind == "ellipse":
            draw.ellipse((*pts[0], *pts[1]), fill=colour, outline=edge, width=lw if edge else 0)
        elif prim.kind == "poly":
            draw.polygon(pts, fill=colour, outline=edge)
        elif prim.kind == "line":
            width = max(1, round(prim.width * h))
            draw.line(pts, fill=colour, width=width, joint="curve")
            for x, y in (pts[0], pts[-1]):
                draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=colour)
        elif prim.kind == "sky":
            mask = Image.new("L", (w, h), 0)
            ImageDraw.Draw(mask).rectangle((*pts[0], *pts[1]), fill=255)
            im.paste(sky, (0, 0), mask)

    if layout.outdoor:
        _paint_sky_bodies(draw, layout, lighting, light_side, h, x0, sky_paint=paint)
    for prim in layout.prims:
        paint(prim)
    return im.reduce(s)


def _paint_sky_bodies(
    draw: ImageDraw.ImageDraw,
    layout: Layout,
    lighting: Lighting,
    side: float,
    h: int,
    x0: float,
    sky_paint: Callable[..., None],
) -> None:
    """Sun, moon, stars and clouds: they say which lighting it is, and sit on the light's side (`h`: the
    supersampled height in px, `x0`: the layout x at the picture's left edge)."""

    def disc(cx: float, cy: float, r: float, colour: RGB) -> None:
        draw.ellipse(((cx - r - x0) * h, (cy - r) * h, (cx + r - x0) * h, (cy + r) * h), fill=colour)

    name = lighting.name
    sun_x = 0.5 + 0.32 * side
    if name == "day":
        disc(sun_x, 0.12, 0.075, (255, 246, 196))
        disc(sun_x, 0.12, 0.055, (255, 232, 120))
    elif name == "sunset":
        disc(sun_x, layout.horizon - 0.03, 0.1, (255, 168, 72))
    elif name == "night":
        for x, y in layout.stars:
            disc(x, y, 0.0045, (236, 236, 255))
        disc(sun_x, 0.13, 0.05, (242, 240, 214))
        t = min(1.0, 0.13 / max(0.05, layout.horizon))
        behind = tuple(round((1 - t) * a + t * b) for a, b in zip(lighting.sky_top, lighting.sky_bottom, strict=True))
        disc(sun_x + 0.022 * side, 0.12, 0.044, behind)  # type: ignore[arg-type]
    shown = {"day": 2, "sunset": 2, "night": 1, "overcast": 5}[name]
    for cloud in layout.clouds[:shown]:
        for puff in cloud:
            sky_paint(puff, 0.0)
