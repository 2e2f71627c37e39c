"""The scene generator: several images of the same characters, re-posed and re-lit, with exact per-character
layers, made in memory (`GeneratedScene`, `GeneratedImage`) and written in the training scene format that
`layercomposer.data.scenes` (`Scene`, `SceneImage`) reads.

Every picture is, byte for byte, ``Image.alpha_composite`` of its opaque background layer and its full-frame
character layers (back to front), converted to RGB: the composite is how the picture is made.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .backgrounds import BACKGROUNDS, Layout, make_layout, render_background
from .body import SHAPE_INFO
from .identity import Identity, identity_from_index, split_indices
from .palette import LIGHTING_NAMES, get_lighting
from .prompts import scene_prompt
from .sprite import Pose, render_layer, sample_pose

CHARACTER_COUNTS = (1, 2, 3, 4)
CHARACTER_COUNT_P = (0.2, 0.35, 0.25, 0.2)
IMAGE_COUNTS = (2, 3, 4)
IMAGE_COUNT_P = (0.3, 0.4, 0.3)
OVERLAP_P = 0.5
"""Chance that an image with several characters places one of them deliberately against another."""
BODY_HEIGHT = {1: (0.26, 0.36), 2: (0.22, 0.3), 3: (0.19, 0.26), 4: (0.17, 0.23), 5: (0.15, 0.2), 6: (0.14, 0.19)}
"""Range of a character's body height (fraction of the image height) by the number of characters in the scene.
Scenes draw 1-4 characters (`CHARACTER_COUNTS`); 5 and 6 are made only when asked for (`characters=`)."""
MAX_CHARACTERS = 6
MAX_ASPECT = 1.5
"""Widest picture (width / height) the backgrounds cover: their shapes reach 0.3 of the height past each side."""
MAX_OCCLUSION = 0.5
"""Placements where one character's box hides more than this share of another's are redrawn."""


@dataclass(frozen=True)
class Placement:
    """Where and how one character appears in one image (normalised: x a fraction of the image width, y and
    sizes fractions of its height; a square picture's side for both)."""

    subject: str
    pose: Pose
    centre: tuple[float, float]
    height: float
    """Unsquashed body height; hats, arms and feet reach beyond it."""

    @property
    def foot(self) -> float:
        """Height of the feet: the z-order key (lower in the image = nearer = in front)."""
        return self.centre[1] + 0.58 * self.height * self.pose.stretch


@dataclass
class GeneratedImage:
    """One image of a generated scene, in memory: the picture, its layers and what was used to make it."""

    picture: Image.Image
    background: Image.Image
    layers: dict[str, Image.Image]
    order: list[str]
    prompt: str
    lighting: str
    light_side: float
    camera_shift: float
    placements: dict[str, Placement]


@dataclass
class GeneratedScene:
    """A generated scene in memory (written by `write_scene`; read back as a `data.scenes.Scene`): 2-4 images
    of the same 1-4 (on request up to 6) characters in one place."""

    scene_id: str
    index: int
    seed: int
    split: str
    size: int
    background: str
    identities: list[Identity]
    images: list[GeneratedImage]
    layout: Layout = field(repr=False)
    width: int | None = None
    """Picture width in px when it differs from `size` (the height); None: square pictures."""

    @property
    def frame(self) -> tuple[int, int]:
        """(width, height) of every picture and layer."""
        return (self.width or self.size, self.size)

    @property
    def subjects(self) -> list[str]:
        """Subject ids, e.g. ``["c00042", "c00107"]``."""
        return [i.id for i in self.identities]

    def to_json(self) -> dict[str, Any]:
        """The scene.json content (docs/DESIGN.md section 4 plus background, lighting and order)."""
        images = []
        for k, im in enumerate(self.images):
            layers = {sid: f"layers/img{k}/{sid}.png" for sid in self.subjects}
            layers["background"] = f"layers/img{k}/background.png"
            images.append(
                {
                    "file": f"img{k}.png",
                    "prompt": im.prompt,
                    "lighting": im.lighting,
                    "order": ["background", *im.order],
                    "layers": layers,
                }
            )
        return {"subjects": self.subjects, "background": self.background, "images": images}


def check_size(size: int) -> int:
    """The size as an int, or a ValueError unless it is a multiple of 16 from 128 to 1024."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size % 16 or not 128 <= size <= 1024:
        raise ValueError(f"size must be a multiple of 16 from 128 to 1024, got {size!r}")
    return int(size)


def scene_rng(seed: int, scene_index: int, split: str) -> np.random.Generator:
    """The scene's own generator, from a hash of (seed, split, index): no global state, any int seed."""
    digest = hashlib.blake2b(f"sprites-scene/{split}/{seed}/{scene_index}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def check_width(width: int | None, size: int) -> int | None:
    """The picture width (None: square), or a ValueError unless it is a valid size (`check_size`) with
    width / height in 1/MAX_ASPECT..MAX_ASPECT."""
    if width is None:
        return None
    width = check_size(width)
    if not size <= width * MAX_ASPECT + 1e-9 or not width <= size * MAX_ASPECT + 1e-9:
        raise ValueError(f"width {width} at height {size}: the aspect must be within 1/{MAX_ASPECT}..{MAX_ASPECT}")
    return width


def _box(p: Placement, identity: Identity, aspect: float = 1.0) -> tuple[float, float, float, float]:
    """Approximate bounding box of body, arms and feet (normalised), for placement decisions."""
    s, h = p.pose.stretch, p.height
    half_w = 0.5 * h * (SHAPE_INFO[identity.shape].aspect / s**0.5 + 0.3) / aspect
    return (p.centre[0] - half_w, p.centre[1] - 0.5 * h * s, p.centre[0] + half_w, p.centre[1] + 0.62 * h * s)


def _cover(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Share of the smaller box covered by the other."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _place_one(
    rng: np.random.Generator,
    identity: Identity,
    base: float,
    horizon: float,
    near: Placement | None,
    near_identity: Identity | None,
    base_pose: Pose | None = None,
    pose_spread: float = 1.0,
    aspect: float = 1.0,
) -> Placement:
    """Draw a pose and a spot on the ground, optionally right beside another character (to overlap it).
    With `base_pose`, the pose is `blend_pose(base_pose, a fresh draw, pose_spread)`. `aspect` is the
    picture's width / height: widths are drawn in height units and x is kept a fraction of the width."""
    pose = sample_pose(rng)
    if base_pose is not None:
        pose = blend_pose(base_pose, pose, pose_spread, rng)
    s = pose.stretch
    lo_foot = min(0.9, horizon + 0.14)
    if near is not None and near_identity is not None:
        foot = float(np.clip(near.foot + rng.uniform(-0.1, 0.1), lo_foot, 0.98))
    else:
        foot = float(rng.uniform(lo_foot, 0.98))
    depth = 0.8 + 0.4 * (foot - lo_foot) / max(1e-3, 0.98 - lo_foot)  # nearer = bigger
    h = base * depth * float(rng.uniform(0.9, 1.1))
    # Keep the head (and a hat) inside the frame: shrink rather than crop.
    h = min(h, (foot - 0.03) / (0.58 * s + 0.5 * s + 0.32))
    cy = foot - 0.58 * h * s
    half_w = 0.5 * h * (SHAPE_INFO[identity.shape].aspect / s**0.5 + 0.3) / aspect
    if near is not None and near_identity is not None:
        other = 0.5 * near.height * (SHAPE_INFO[near_identity.shape].aspect / near.pose.stretch**0.5 + 0.3) / aspect
        gap = (half_w + other) * float(rng.uniform(0.35, 0.75))
        cx = near.centre[0] + gap * (1 if rng.random() < 0.5 else -1)
    else:
        # A character wider than the picture (`--heights` up to 0.6) is centred somewhere in the middle.
        cx = float(rng.uniform(min(half_w, 0.5), max(1 - half_w, 0.5)))
    margin = 0.04 / aspect
    cx = float(np.clip(cx, half_w - margin, 1 - half_w + margin))
    return Placement(identity.id, pose, (cx, cy), h)


def blend_pose(base: Pose, fresh: Pose, spread: float, rng: np.random.Generator) -> Pose:
    """A pose `spread` of the way from `base` to `fresh`: numbers interpolated, expression and arm kind taken
    from `fresh` with chance `spread` (0: the base pose itself; 1: the fresh one)."""
    if spread >= 1.0:
        return fresh
    swap = rng.random(2) < spread
    arms_from = fresh if swap[1] else base

    def mix(a: float, b: float) -> float:
        return float(a + spread * (b - a))

    def arm(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
        return (mix(a[0], b[0]), mix(a[1], b[1]))

    return Pose(
        expression=fresh.expression if swap[0] else base.expression,
        arms=arms_from.arms,
        left_arm=arm(base.left_arm, fresh.left_arm) if not swap[1] else fresh.left_arm,
        right_arm=arm(base.right_arm, fresh.right_arm) if not swap[1] else fresh.right_arm,
        stretch=mix(base.stretch, fresh.stretch),
        feet_spread=mix(base.feet_spread, fresh.feet_spread),
        gaze=arm(base.gaze, fresh.gaze),
        rotation=mix(base.rotation, fresh.rotation),
    )


def _place_all(
    rng: np.random.Generator, identities: list[Identity], bases: list[float], horizon: float,
    base_poses: list[Pose] | None = None, pose_spread: float = 1.0, aspect: float = 1.0,
) -> list[Placement]:
    """Place every character of one image; some placements are made to overlap, none hides another."""
    n = len(identities)
    pair = None
    if n >= 2 and rng.random() < OVERLAP_P:
        a, b = rng.choice(n, 2, replace=False)
        pair = (int(a), int(b))
    for _attempt in range(30):
        out: list[Placement | None] = [None] * n
        order = list(range(n)) if pair is None else [pair[0], *[i for i in range(n) if i != pair[0]]]
        for i in order:
            near = out[pair[0]] if pair is not None and i == pair[1] else None
            near_id = identities[pair[0]] if near is not None else None
            out[i] = _place_one(rng, identities[i], bases[i], horizon, near, near_id,
                                None if base_poses is None else base_poses[i], pose_spread, aspect)
        placed = [p for p in out if p is not None]
        boxes = [_box(p, idt, aspect) for p, idt in zip(placed, identities, strict=True)]
        if all(_cover(boxes[i], boxes[j]) <= MAX_OCCLUSION for i in range(n) for j in range(i + 1, n)):
            return placed
    return placed


def generate_scene(scene_index: int, seed: int = 0, size: int = 256, split: str = "train",
                   pose_spread: float = 1.0, heights: tuple[float, float] | None = None,
                   characters: int | None = None, width: int | None = None) -> GeneratedScene:
    """Generate one scene in memory, deterministically from (seed, scene_index, split) at `size` px.

    `pose_spread` < 1 gives each character one pose per scene that every picture varies by that share
    (`blend_pose`): the pictures differ mostly in light, place and size. `heights` draws body heights from
    that range (fractions of the picture) instead of `BODY_HEIGHT`'s, which shrink as characters are added.
    `characters` (1 to `MAX_CHARACTERS`) sets the number of characters instead of drawing 1-4. `width` makes
    `width` x `size` pictures (width / height up to `MAX_ASPECT` either way): the background is the same
    place seen wider or narrower (undistorted, centred), characters keep their heights and spread over the
    width. The defaults make the scenes they always made (same seeds, same pictures)."""
    if not 0.0 <= pose_spread <= 1.0:
        raise ValueError(f"pose_spread {pose_spread} outside 0..1")
    if characters is not None and (isinstance(characters, bool) or not 1 <= characters <= MAX_CHARACTERS):
        raise ValueError(f"characters must be 1..{MAX_CHARACTERS}, got {characters!r}")
    # All random draws are resolution-free, so the same scene can be made at 128 px and at 512 px.
    size = check_size(size)
    width = check_width(width, size)
    pool = split_indices(split)
    rng = scene_rng(seed, scene_index, split)
    n_chars = int(rng.choice(CHARACTER_COUNTS, p=CHARACTER_COUNT_P))  # drawn always: the stream stays the same
    if characters is not None:
        n_chars = int(characters)
    n_images = int(rng.choice(IMAGE_COUNTS, p=IMAGE_COUNT_P))
    identities = [identity_from_index(int(pool[k])) for k in rng.choice(len(pool), n_chars, replace=False)]
    background = str(rng.choice(BACKGROUNDS))
    layout = make_layout(background, rng)
    lightings = [LIGHTING_NAMES[k] for k in rng.permutation(len(LIGHTING_NAMES))[:n_images]]
    bases = [float(rng.uniform(*(heights or BODY_HEIGHT[n_chars]))) for _ in identities]
    # Drawn only when asked for, so the default scenes keep their random streams.
    base_poses = [sample_pose(rng) for _ in identities] if pose_spread < 1.0 else None

    frame = (width or size, size)
    images = []
    for lighting_name in lightings:
        side = 1.0 if rng.random() < 0.5 else -1.0
        shift = float(rng.uniform(-0.03, 0.03))
        placements = _place_all(rng, identities, bases, layout.horizon, base_poses, pose_spread, frame[0] / size)
        images.append(_render_image(identities, placements, layout, background, lighting_name, side, shift, frame))
    scene_id = f"{split}-s{seed}-{scene_index:06d}"
    return GeneratedScene(scene_id, scene_index, seed, split, size, background, identities, images, layout, width)


def _render_image(
    identities: list[Identity],
    placements: list[Placement],
    layout: Layout,
    background: str,
    lighting_name: str,
    side: float,
    shift: float,
    frame: tuple[int, int],
) -> GeneratedImage:
    """Render the background and every character layer of one (width, height) `frame`, then composite them."""
    lighting = get_lighting(lighting_name)
    w, h = frame
    bg = render_background(layout, lighting, h, light_side=side, shift=shift, width=w)
    layers = {
        p.subject: render_layer(idt, p.pose, p.height * h, (p.centre[0] * w, p.centre[1] * h), frame, lighting, side)
        for idt, p in zip(identities, placements, strict=True)
    }
    order = [p.subject for p in sorted(placements, key=lambda p: p.foot)]
    picture = composite(bg, [layers[s] for s in order])
    left_to_right = [
        idt for _, idt in sorted(zip([p.centre[0] for p in placements], identities, strict=True), key=lambda t: t[0])
    ]
    prompt = scene_prompt(left_to_right, background, lighting_name)
    return GeneratedImage(
        picture, bg, layers, order, prompt, lighting_name, side, shift, {p.subject: p for p in placements}
    )


def composite(background: Image.Image, layers: list[Image.Image]) -> Image.Image:
    """The picture: `Image.alpha_composite` of the background and `layers` (back to front), as RGB."""
    out = background.convert("RGBA")
    for layer in layers:
        out = Image.alpha_composite(out, layer)
    return out.convert("RGB")


def visible_overlaps(image: GeneratedImage, min_share: float = 0.03, min_pixels: int = 8) -> list[tuple[str, str]]:
    """Pairs of characters whose masks (alpha >= 128) share `min_share` of the smaller one and `min_pixels`."""
    # `min_pixels` is meant at 256 px and scales with the image area, so the test means the same at any size.
    masks = {s: np.asarray(layer.getchannel("A")) >= 128 for s, layer in image.layers.items()}
    floor = min_pixels * (image.picture.width * image.picture.height) / 256**2
    names = list(masks)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            inter = int(np.count_nonzero(masks[a] & masks[b]))
            smaller = min(int(masks[a].sum()), int(masks[b].sum()))
            if smaller and inter >= max(floor, min_share * smaller):
                pairs.append((a, b))
    return pairs


def overlap_share(scenes: list[GeneratedScene]) -> float:
    """Share of images with at least two characters in which two of them visibly overlap."""
    multi = [im for sc in scenes for im in sc.images if len(im.layers) >= 2]
    if not multi:
        return 0.0
    return sum(1 for im in multi if visible_overlaps(im)) / len(multi)


def _save_png(im: Image.Image, path: Path) -> None:
    im.save(path, format="PNG", compress_level=6)


def write_scene(scene: GeneratedScene, out_dir: str | os.PathLike[str]) -> Path:
    """Write `scene` under `out_dir/<scene_id>/` (replacing an older copy) and return that folder."""
    # Files go to a temporary sibling folder first (scene.json last) which is then renamed into place, so a
    # crash never leaves a scene.json that points at missing files.
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / scene.scene_id
    tmp = out_dir / f".{scene.scene_id}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    meta = scene.to_json()
    for k, (im, entry) in enumerate(zip(scene.images, meta["images"], strict=True)):
        (tmp / "layers" / f"img{k}").mkdir(parents=True)
        _save_png(im.picture, tmp / entry["file"])
        _save_png(im.background, tmp / entry["layers"]["background"])
        for sid in scene.subjects:
            _save_png(im.layers[sid], tmp / entry["layers"][sid])
    (tmp / "scene.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    if final.exists():
        old = out_dir / f".{scene.scene_id}.old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    return final


def generate_dataset(
    out_dir: str | os.PathLike[str],
    num_scenes: int,
    seed: int = 0,
    size: int = 256,
    split: str = "train",
    progress: bool = False,
    pose_spread: float = 1.0,
    heights: tuple[float, float] | None = None,
    characters: int | None = None,
    width: int | None = None,
) -> list[Path]:
    """Generate and write scenes 0..num_scenes-1 of (seed, split) at `size`; returns their folders
    (`pose_spread`, `heights`, `characters`, `width`: see `generate_scene`)."""
    size = check_size(size)
    check_width(width, size)
    split_indices(split)  # validate before writing anything
    if characters is not None and (isinstance(characters, bool) or not 1 <= characters <= MAX_CHARACTERS):
        raise ValueError(f"characters must be 1..{MAX_CHARACTERS}, got {characters!r}")
    paths = []
    for i in range(num_scenes):
        scene = generate_scene(i, seed, size, split, pose_spread, heights, characters, width)
        paths.append(write_scene(scene, out_dir))
        if progress and ((i + 1) % 50 == 0 or i + 1 == num_scenes):
            print(f"sprites: {i + 1}/{num_scenes} scenes written to {out_dir}", file=sys.stderr, flush=True)
    return paths
