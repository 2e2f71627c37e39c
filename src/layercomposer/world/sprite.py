"""Drawing one character: pose sampling, supersampled vector drawing, rotation, lighting, placement.

Everything is drawn with hard-edged ImageDraw calls at `SUPERSAMPLE` times the output resolution, rotated
there, then box-reduced (coverage anti-aliasing, premultiplied by Pillow), so edges are smooth and there is
no texture noise: flat colours, one dark outline ink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .body import SHAPE_INFO, half_width, outline, pattern_figures, top_y
from .identity import Identity
from .palette import COLOURS, OUTLINE, RGB, Lighting, get_lighting

SUPERSAMPLE = 4
EXPRESSIONS: tuple[str, ...] = ("happy", "neutral", "surprised", "sad", "angry")
ARM_POSES: tuple[str, ...] = ("down", "out", "up", "wave")

EXTENT = 1.2
"""Every part of a character, in any pose and rotation, lies within EXTENT body heights of its centre."""

WHITE: RGB = (250, 250, 250)
HAT: RGB = (62, 54, 76)
GOLD: RGB = (246, 196, 40)
CHEEK: RGB = (250, 140, 160)
TEAR: RGB = (120, 200, 250)
MOUTH: RGB = (92, 24, 40)

# Typical (shoulder angle, elbow bend) in degrees for each named arm pose; angle 0 = hanging straight down,
# 90 = sideways, 180 = straight up.
_ARM_CENTRES = {"down": (28.0, 3.0), "out": (88.0, 0.0), "up": (150.0, 0.0), "wave": (112.0, 48.0)}
_ARM_SPREAD = {"down": (10.0, 12.0), "out": (12.0, 25.0), "up": (15.0, 15.0), "wave": (12.0, 12.0)}


@dataclass(frozen=True)
class Pose:
    """How a character stands in one image: expression, limbs, squash/stretch, gaze and rotation."""

    expression: str = "happy"
    arms: str = "down"
    left_arm: tuple[float, float] = _ARM_CENTRES["down"]
    right_arm: tuple[float, float] = _ARM_CENTRES["down"]
    stretch: float = 1.0
    """Body height multiplier (width shrinks as 1/sqrt): < 1 squashed, > 1 stretched."""
    feet_spread: float = 0.0
    gaze: tuple[float, float] = (0.0, 0.0)
    rotation: float = 0.0
    """Degrees, counter-clockwise, about the body centre."""

    def __post_init__(self) -> None:
        if self.expression not in EXPRESSIONS:
            raise ValueError(f"unknown expression {self.expression!r}; known: {', '.join(EXPRESSIONS)}")
        if self.arms not in ARM_POSES:
            raise ValueError(f"unknown arm pose {self.arms!r}; known: {', '.join(ARM_POSES)}")
        if not 0.5 <= self.stretch <= 1.5:
            raise ValueError(f"stretch {self.stretch} outside 0.5..1.5")


def named_pose(expression: str = "happy", arms: str = "down", stretch: float = 1.0, rotation: float = 0.0) -> Pose:
    """A pose with the typical limb angles of `arms` (right arm waves for 'wave')."""
    left = _ARM_CENTRES["down" if arms == "wave" else arms]
    return Pose(expression, arms, left, _ARM_CENTRES[arms], stretch, 0.0, (0.0, 0.0), rotation)


def sample_pose(rng: np.random.Generator, max_rotation: float = 25.0) -> Pose:
    """A random pose: every field is drawn, so two images of a character differ beyond an affine map."""
    arms = str(rng.choice(ARM_POSES))

    def arm(kind: str) -> tuple[float, float]:
        (a, b), (da, db) = _ARM_CENTRES[kind], _ARM_SPREAD[kind]
        return (a + float(rng.uniform(-da, da)), b + float(rng.uniform(-db, db)))

    left, right = arm("down" if arms == "wave" else arms), arm(arms)
    if arms == "wave" and rng.random() < 0.5:
        left, right = right, left
    return Pose(
        expression=str(rng.choice(EXPRESSIONS)),
        arms=arms,
        left_arm=left,
        right_arm=right,
        stretch=float(rng.uniform(0.86, 1.14)),
        feet_spread=float(rng.uniform(-0.03, 0.06)),
        gaze=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
        rotation=float(rng.uniform(-max_rotation, max_rotation)),
    )


class _Pen:
    """Maps body coordinates to supersampled pixels and draws outlined figures."""

    def __init__(self, im: Image.Image, centre: tuple[float, float], height: float, stretch: float) -> None:
        self.im = im
        self.draw = ImageDraw.Draw(im)
        self.cx, self.cy = centre
        self.h = height
        self.sx, self.sy = 1.0 / math.sqrt(stretch), stretch
        self.lw = max(2, round(0.035 * height))

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Body coordinates (squashed with the body) to pixels."""
        return (self.cx + x * self.h * self.sx, self.cy + y * self.h * self.sy)

    def off(self, p: tuple[float, float], dx: float, dy: float) -> tuple[float, float]:
        """A point offset from pixel point `p` by (dx, dy) body heights, not squashed (keeps features round)."""
        return (p[0] + dx * self.h, p[1] + dy * self.h)

    def disc(self, p: tuple[float, float], rx: float, ry: float, fill: RGB, outline: bool = True) -> None:
        """An ellipse of radii (rx, ry) body heights at pixel point `p`, optionally outlined."""
        rx, ry = rx * self.h, ry * self.h
        box = (p[0] - rx, p[1] - ry, p[0] + rx, p[1] + ry)
        self.draw.ellipse(box, fill=fill, outline=OUTLINE if outline else None, width=self.lw if outline else 0)

    def poly(self, pts: list[tuple[float, float]], fill: RGB) -> None:
        """A filled, outlined polygon given in pixels."""
        self.draw.polygon(pts, fill=fill)
        self.draw.line([*pts, pts[0], pts[1]], fill=OUTLINE, width=self.lw, joint="curve")

    def limb(self, pts: list[tuple[float, float]], width: float, fill: RGB) -> None:
        """A thick outlined stroke with round ends (arms, antennae)."""
        w = max(1, round(width * self.h))
        for colour, ww in ((OUTLINE, w + 2 * self.lw), (fill, w)):
            self.draw.line(pts, fill=colour, width=ww, joint="curve")
            r = ww / 2
            for x, y in (pts[0], pts[-1]):
                self.draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def draw_character(im: Image.Image, identity: Identity, pose: Pose, centre: tuple[float, float], height: float) -> None:
    """Draw `identity` in `pose`, unrotated and unlit, onto RGBA `im`: body centre at `centre`, `height` px tall."""
    pen = _Pen(im, centre, height, pose.stretch)
    info = SHAPE_INFO[identity.shape]
    primary, secondary = COLOURS[identity.primary], COLOURS[identity.secondary]
    _draw_feet(pen, identity, pose, secondary)
    _draw_arms(pen, identity, pose, secondary)
    _draw_body(pen, identity, primary, secondary)
    face = pen.at(0.0, info.face_y)
    eyes = _eye_points(pen, identity, face)
    _draw_eyes(pen, identity, pose, eyes)
    _draw_mouth(pen, identity, pose, face, eyes)
    _draw_accessory(pen, identity, secondary, eyes)


def _draw_feet(pen: _Pen, identity: Identity, pose: Pose, colour: RGB) -> None:
    aspect = SHAPE_INFO[identity.shape].aspect
    bottom = pen.at(0.0, 0.5)
    for side in (-1, 1):
        x = side * (0.2 * aspect + pose.feet_spread) * pen.sx
        pen.disc(pen.off(bottom, x, 0.02), 0.1, 0.06, colour)


def _draw_arms(pen: _Pen, identity: Identity, pose: Pose, colour: RGB) -> None:
    shoulder_y = SHAPE_INFO[identity.shape].face_y + 0.24
    reach = max(0.0, half_width(identity.shape, shoulder_y) - 0.06)
    for side, (angle, bend) in ((-1, pose.left_arm), (1, pose.right_arm)):
        shoulder = pen.at(side * reach, shoulder_y)
        a1, a2 = math.radians(angle), math.radians(angle + bend)
        elbow = pen.off(shoulder, side * 0.22 * math.sin(a1), 0.22 * math.cos(a1))
        hand = pen.off(elbow, side * 0.2 * math.sin(a2), 0.2 * math.cos(a2))
        pen.limb([shoulder, elbow, hand], 0.08, colour)
        pen.disc(hand, 0.065, 0.065, colour)


def _draw_body(pen: _Pen, identity: Identity, primary: RGB, secondary: RGB) -> None:
    pts = [pen.at(float(x), float(y)) for x, y in outline(identity.shape)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, y0 = math.floor(min(xs)) - 1, math.floor(min(ys)) - 1
    box = (x0, y0, math.ceil(max(xs)) + 2, math.ceil(max(ys)) + 2)
    size = (box[2] - box[0], box[3] - box[1])
    local = [(x - x0, y - y0) for x, y in pts]
    body = Image.new("L", size, 0)
    ImageDraw.Draw(body).polygon(local, fill=255)
    pen.im.paste(primary, box, body)
    info = SHAPE_INFO[identity.shape]
    figures = pattern_figures(identity.pattern, info.aspect)
    if figures:
        mask = Image.new("L", size, 0)
        md = ImageDraw.Draw(mask)
        for kind, fpts, width in figures:
            px = [(x - x0, y - y0) for x, y in (pen.at(fx, fy) for fx, fy in fpts)]
            if kind == "poly":
                md.polygon(px, fill=255)
            elif kind == "ellipse":
                md.ellipse((*px[0], *px[1]), fill=255)
            else:
                md.line(px, fill=255, width=max(1, round(width * pen.h)), joint="curve")
        # A plain patch behind the face keeps eyes and mouth readable on busy patterns.
        fx, fy = pen.at(0.0, info.face_y + 0.05)
        rx, ry = (info.eye_gap + 0.13) * pen.h, 0.2 * pen.h
        md.ellipse((fx - x0 - rx, fy - y0 - ry, fx - x0 + rx, fy - y0 + ry), fill=0)
        pen.im.paste(secondary, box, Image.fromarray(np.minimum(np.asarray(mask), np.asarray(body))))
    pen.draw.line([*pts, pts[0], pts[1]], fill=OUTLINE, width=pen.lw, joint="curve")


def _eye_points(pen: _Pen, identity: Identity, face: tuple[float, float]) -> list[tuple[float, float]]:
    if identity.eyes == "cyclops":
        return [pen.off(face, 0.0, -0.02)]
    gap = SHAPE_INFO[identity.shape].eye_gap * pen.sx
    return [pen.off(face, -gap, -0.02), pen.off(face, gap, -0.02)]


_EYE_RADIUS = {"dots": 0.045, "googly": 0.085, "cyclops": 0.13, "shiny": 0.07}


def _draw_eyes(pen: _Pen, identity: Identity, pose: Pose, eyes: list[tuple[float, float]]) -> None:
    grow = {"surprised": 1.25, "angry": 0.9, "sad": 0.95}.get(pose.expression, 1.0)
    r = _EYE_RADIUS[identity.eyes] * grow
    gx, gy = pose.gaze
    for p in eyes:
        if identity.eyes == "dots":
            pen.disc(pen.off(p, gx * 0.012, gy * 0.012), r, r, OUTLINE, outline=False)
        elif identity.eyes == "shiny":
            q = pen.off(p, gx * 0.01, gy * 0.01)
            pen.disc(q, r * 0.62, r, OUTLINE, outline=False)
            pen.disc(pen.off(q, -0.018, -0.03), 0.018, 0.018, WHITE, outline=False)
        else:
            pen.disc(p, r, r, WHITE)
            pupil = 0.46 * r
            pen.disc(pen.off(p, gx * (r - pupil) * 0.7, gy * (r - pupil) * 0.7), pupil, pupil, OUTLINE, outline=False)
        _draw_brow(pen, pose.expression, p, r, side=(1 if p[0] >= pen.cx else -1) if len(eyes) > 1 else 0)


def _draw_brow(pen: _Pen, expression: str, eye: tuple[float, float], r: float, side: int) -> None:
    """Brows carry most of an expression: raised (surprised), inner end up (sad) or down (angry)."""
    tilt = {"sad": -0.035, "angry": 0.04}.get(expression)
    if expression == "surprised":
        tilt, lift = 0.0, 0.09
    elif tilt is None:
        return
    else:
        lift = 0.05
    w = max(0.055, r * 0.9)
    y = -(r + lift)
    if side == 0:  # one eye: a V or an arch across it
        pts = [pen.off(eye, -w, y - tilt), pen.off(eye, 0, y + tilt), pen.off(eye, w, y - tilt)]
    else:
        inner, outer = -side * w, side * w
        pts = [pen.off(eye, inner, y + tilt), pen.off(eye, outer, y - tilt)]
    pen.draw.line(pts, fill=OUTLINE, width=max(2, round(0.03 * pen.h)), joint="curve")


def _draw_mouth(pen: _Pen, identity: Identity, pose: Pose, face: tuple[float, float], eyes: list) -> None:
    below = 0.17 if identity.eyes == "cyclops" else 0.12
    m = pen.off(face, 0.0, below)
    lw, h = max(2, round(0.03 * pen.h)), pen.h
    expr = pose.expression
    if expr == "happy":
        r = 0.075 * h
        pen.draw.pieslice((m[0] - r, m[1] - r, m[0] + r, m[1] + r), 0, 180, fill=MOUTH, outline=OUTLINE, width=lw)
        for p in eyes if len(eyes) > 1 else [pen.off(m, -0.13, -0.03), pen.off(m, 0.13, -0.03)]:
            side = -1 if p[0] < pen.cx else 1
            pen.disc(pen.off(p, side * 0.03, 0.085) if len(eyes) > 1 else p, 0.035, 0.022, CHEEK, outline=False)
    elif expr == "neutral":
        pen.draw.line([pen.off(m, -0.05, 0.0), pen.off(m, 0.05, 0.0)], fill=OUTLINE, width=lw)
    elif expr == "surprised":
        pen.disc(pen.off(m, 0.0, 0.01), 0.035, 0.045, MOUTH)
    else:
        r = (0.06 if expr == "sad" else 0.075) * h
        cy = m[1] + r * (0.8 if expr == "sad" else 1.1)
        span = (215, 325) if expr == "sad" else (235, 305)
        pen.draw.arc((m[0] - r, cy - r, m[0] + r, cy + r), *span, fill=OUTLINE, width=lw)
        if expr == "sad":
            e = eyes[-1]
            pen.disc(pen.off(e, 0.02, _EYE_RADIUS[identity.eyes] + 0.05), 0.022, 0.032, TEAR, outline=False)


def _draw_accessory(pen: _Pen, identity: Identity, colour: RGB, eyes: list[tuple[float, float]]) -> None:
    acc = identity.accessory
    top = pen.at(0.0, top_y(identity.shape))
    if acc == "hat":
        pen.poly([pen.off(top, dx, dy) for dx, dy in ((-0.24, -0.02), (0.24, -0.02), (0.24, 0.03), (-0.24, 0.03))], HAT)
        pen.poly([pen.off(top, dx, dy) for dx, dy in ((-0.15, -0.3), (0.15, -0.3), (0.15, -0.02), (-0.15, -0.02))], HAT)
        pen.poly(
            [pen.off(top, dx, dy) for dx, dy in ((-0.15, -0.1), (0.15, -0.1), (0.15, -0.04), (-0.15, -0.04))], colour
        )
    elif acc == "crown":
        zig = [(-0.17, 0.02), (-0.17, -0.2), (-0.085, -0.1), (0.0, -0.22), (0.085, -0.1), (0.17, -0.2), (0.17, 0.02)]
        pen.poly([pen.off(top, dx, dy) for dx, dy in zig], GOLD)
    elif acc == "bow":
        knot = pen.off(top, 0.11, 0.05)
        pen.poly([knot, pen.off(knot, -0.13, -0.08), pen.off(knot, -0.13, 0.08)], colour)
        pen.poly([knot, pen.off(knot, 0.13, -0.08), pen.off(knot, 0.13, 0.08)], colour)
        pen.disc(knot, 0.04, 0.04, colour)
    elif acc == "antennae":
        for side in (-1, 1):
            base = pen.at(side * 0.1, top_y(identity.shape) + 0.06)
            tip = pen.off(base, side * 0.1, -0.26)
            pen.limb([base, pen.off(base, side * 0.02, -0.14), tip], 0.02, OUTLINE)
            pen.disc(tip, 0.05, 0.05, colour)
    elif acc == "glasses":
        r = max(_EYE_RADIUS[identity.eyes] + 0.035, 0.085)
        w = max(2, round(0.025 * pen.h))
        for p in eyes:
            pen.draw.ellipse(
                (p[0] - r * pen.h, p[1] - r * pen.h, p[0] + r * pen.h, p[1] + r * pen.h), outline=OUTLINE, width=w
            )
        if len(eyes) == 2:
            (x0, y0), (x1, y1) = eyes
            pen.draw.line([(x0 + r * pen.h, y0), (x1 - r * pen.h, y1)], fill=OUTLINE, width=w)
    elif acc == "scarf":
        y = SHAPE_INFO[identity.shape].face_y + 0.27
        hw = half_width(identity.shape, y) + 0.02
        band = [
            pen.at(-hw, y - 0.045),
            pen.at(0, y - 0.02),
            pen.at(hw, y - 0.045),
            pen.at(hw, y + 0.045),
            pen.at(0, y + 0.07),
            pen.at(-hw, y + 0.045),
        ]
        pen.poly(band, colour)
        root = pen.at(hw * 0.45, y + 0.03)
        tail = [pen.off(root, dx, dy) for dx, dy in ((-0.05, 0.0), (0.05, 0.0), (0.08, 0.22), (-0.01, 0.23))]
        pen.poly(tail, colour)


def light_tile(
    tile: Image.Image, lighting: Lighting, centre: tuple[float, float], radius: float, side: float
) -> Image.Image:
    """Re-light an RGBA tile: the lighting's colour transform times a directional shade from `side` (+1 = right)."""
    # The shade is a ramp across the character (bright towards the light, a little brighter at the top), so a
    # cut-out taken from one image carries that image's light direction and colour.
    arr = np.asarray(tile, dtype=np.float32)
    rgb, alpha = arr[..., :3], arr[..., 3:]
    h, w = alpha.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = np.clip((xs + 0.5 - centre[0]) / radius, -1, 1) * side
    v = np.clip((ys + 0.5 - centre[1]) / radius, -1, 1)
    ramp = 1.0 + lighting.shade * (0.8 * u - 0.35 * v)
    out = lighting.apply(rgb) * ramp[..., None]
    out = np.where(alpha > 0, np.clip(np.rint(out), 0, 255), 0)  # clean RGB under full transparency
    return Image.fromarray(np.concatenate([out, alpha], axis=-1).astype(np.uint8), "RGBA")


def render_tile(
    identity: Identity, pose: Pose, height: float, centre: tuple[float, float], lighting: Lighting, side: float
) -> tuple[Image.Image, tuple[int, int]]:
    """A lit, rotated character as a square RGBA tile, and the integer pixel where the tile's corner goes."""
    # `centre` (output pixels, may be fractional) is where the body centre lands; `height` is the unsquashed
    # body height in output pixels. Subpixel placement comes free from drawing at 4x.
    s = SUPERSAMPLE
    side_px = math.ceil(2 * EXTENT * height) + 4
    ox, oy = math.floor(centre[0] - side_px / 2), math.floor(centre[1] - side_px / 2)
    local = ((centre[0] - ox) * s, (centre[1] - oy) * s)
    big = Image.new("RGBA", (side_px * s, side_px * s), (0, 0, 0, 0))
    draw_character(big, identity, pose, local, height * s)
    if pose.rotation:
        # Nearest is enough at 4x: the box reduce below does the anti-aliasing (and it is 30x faster than bicubic).
        big = big.rotate(pose.rotation, resample=Image.Resampling.NEAREST, center=local)
    tile = big.reduce(s)
    tile = light_tile(tile, lighting, (centre[0] - ox, centre[1] - oy), EXTENT * height * 0.8, side)
    return tile, (ox, oy)


def render_layer(
    identity: Identity,
    pose: Pose,
    height: float,
    centre: tuple[float, float],
    frame: tuple[int, int],
    lighting: Lighting,
    side: float = 1.0,
) -> Image.Image:
    """A full-frame RGBA layer (size `frame`) with the character where it stands, transparent elsewhere."""
    tile, corner = render_tile(identity, pose, height, centre, lighting, side)
    layer = Image.new("RGBA", frame, (0, 0, 0, 0))
    layer.paste(tile, corner)  # no mask: copy the tile's pixels (alpha included); off-frame parts are clipped
    return layer


def render_sprite(
    identity: Identity,
    size: int = 256,
    expression: str = "happy",
    lighting: str = "day",
    arms: str = "down",
    stretch: float = 1.0,
    rotation: float = 0.0,
    light_side: float = 1.0,
    pose: Pose | None = None,
) -> Image.Image:
    """A single character cut-out (RGBA, cropped to its content, longest side at most `size` px)."""
    if size < 8:
        raise ValueError(f"sprite size {size} is too small (at least 8 px)")
    pose = pose or named_pose(expression, arms, stretch, rotation)
    lit = get_lighting(lighting)
    # The content's extent depends on shape, pose and accessory: measure it and rescale until it fills `size`.
    height, best = size / 2.0, None
    for _ in range(4):
        tile, _corner = render_tile(identity, pose, height, (height * EXTENT + 2, height * EXTENT + 2), lit, light_side)
        box = tile.getchannel("A").getbbox()
        if box is None:
            raise ValueError("sprite rendered empty")
        longest = max(box[2] - box[0], box[3] - box[1])
        if longest <= size:
            best = tile.crop(box)
            if longest >= size - 2:
                break
        height *= size / longest * 0.995
    if best is None:
        best = tile.crop(box)
        best.thumbnail((size, size), Image.Resampling.LANCZOS)  # keeps the aspect ratio
    return best
