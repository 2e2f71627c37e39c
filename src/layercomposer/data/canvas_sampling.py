"""Locking-aware data sampling (docs/DESIGN.md section 4; the paper's complementary data sampling strategy).

For a target picture T of a scene: a random subset of T's layers is locked (T's own layers, pixel-aligned,
untouched); every other subject of T enters unlocked, cut from a *different* picture of the same scene
(same identity, other pose and lighting), placed over T's subject (centre and height) and augmented
(random scale, shift, colour jitter). The background is locked, unlocked (from another picture) or dropped.
Optionally (`p_aligned_unlocked`, off by default and in the paper) an unlocked subject is T's own, in place.

The output is an ordinary `Canvas`, so training conditions go through the same conditioning code as
inference (`ConditioningBuilder`), and the two cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..canvas import Canvas, Layer, LayerImage
from .scenes import BACKGROUND, Scene, SceneImage


@dataclass(frozen=True)
class SamplingConfig:
    """Probabilities and augmentation ranges of the sampler."""

    p_lock_none: float = 0.25
    """Chance that no layer is locked (all subjects from other pictures)."""
    p_lock_all: float = 0.15
    """Chance that every layer of T is locked (the picture is the composite of the condition)."""
    p_lock_each: float = 0.5
    """Otherwise, each layer is locked independently with this chance."""
    p_drop_background: float = 0.3
    """Chance that an unlocked background is left out (it is optional at inference)."""
    scale_jitter: float = 0.12
    """Unlocked layers: height matched to T's subject, times exp(U(-j, j))."""
    shift_jitter: float = 0.06
    """Unlocked layers: centre shifted by U(-j, j) times the subject's width and height."""
    rotation_jitter: float = 0.0
    """Unlocked layers: extra rotation in degrees, U(-j, j)."""
    p_aligned_unlocked: float = 0.0
    """Chance that an unlocked subject is cut from T itself instead of another picture: placed exactly over
    its own pixels, colours jittered, no other augmentation. 0 in the paper; it teaches the model to copy
    (and relight) what unlocked layer tokens show where they are shown (see docs/TRAINING.md)."""
    brightness: float = 0.12
    contrast: float = 0.12
    saturation: float = 0.15
    hue_degrees: float = 6.0


@dataclass
class TrainingSample:
    """A layered canvas built from a scene, and the picture the model must produce from it."""

    canvas: Canvas
    target: Image.Image
    """RGB, the canvas size."""
    scene: str
    image: int
    locked: list[str] = field(default_factory=list)
    unlocked: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)
    """Unlocked layer -> index of the picture it was cut from."""
    subjects: np.ndarray | None = None
    """(H, W) uint8, the largest alpha of T's own subject layers at each pixel (where T shows a subject,
    whether the canvas has it locked, unlocked or not at all); None for samples made without it."""

    @property
    def prompt(self) -> str:
        return self.canvas.prompt or ""


def choose_locks(names: list[str], rng: np.random.Generator, config: SamplingConfig) -> set[str]:
    """The random subset of T's layers to lock: sometimes none, sometimes all, else each with p_lock_each."""
    u = rng.random()
    if u < config.p_lock_none:
        return set()
    if u < config.p_lock_none + config.p_lock_all:
        return set(names)
    return {name for name in names if rng.random() < config.p_lock_each}


def sample_training_canvas(
    scene: Scene,
    rng: np.random.Generator,
    config: SamplingConfig | None = None,
    target_index: int | None = None,
) -> TrainingSample:
    """Build one locking-aware training canvas from `scene` (target chosen at random unless given)."""
    config = config or SamplingConfig()
    t_index = int(rng.integers(len(scene.images))) if target_index is None else target_index
    target = scene.images[t_index]
    picture = target.picture()
    names = list(target.order)  # background first when present, then subjects back to front
    locked = choose_locks(names, rng, config)
    # A layer that appears in no other picture cannot be taken from one: it stays T's own, locked.
    others = {name: [im for im in scene.images if name in im.layers and im.index != t_index] for name in names}
    for name in names:
        if not others[name]:
            locked.add(name)

    own = {name: target.layer(name) for name in names if name != BACKGROUND}  # T's subject layers, decoded once
    sample = TrainingSample(canvas=Canvas(picture.width, picture.height, prompt=target.prompt), target=picture,
                            scene=scene.id, image=t_index, subjects=subject_alpha(own.values(), picture.size))
    for name in names:
        is_bg = name == BACKGROUND
        kind = "background" if is_bg else "subject"
        if name in locked:
            image = LayerImage.from_pil(target.layer(name) if is_bg else own[name], source_name=f"{name}.png")
            sample.canvas.layers.append(Layer(name=name, image=image, locked=True, kind=kind))
            sample.locked.append(name)
            continue
        if is_bg and rng.random() < config.p_drop_background:
            sample.dropped.append(name)
            continue
        sample.unlocked.append(name)
        # The chance is only drawn when it is on, so the samples of runs without it stay what they were.
        if not is_bg and config.p_aligned_unlocked and rng.random() < config.p_aligned_unlocked:
            sample.sources[name] = t_index
            sample.canvas.layers.append(place_aligned(name, own[name], rng, config))
            continue
        source = others[name][int(rng.integers(len(others[name])))]
        sample.sources[name] = source.index
        if is_bg:
            bg = jitter_colours(source.layer(name), rng, config)
            sample.canvas.layers.append(Layer(name=name, image=LayerImage.from_pil(bg), kind="background"))
        else:
            sample.canvas.layers.append(place_unlocked(name, target, source, rng, config, own[name]))
    return sample


def subject_alpha(layers: Iterable[Image.Image], size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8: the largest alpha of a picture's subject layers (0 where it shows background only);
    `size` is the picture's (W, H)."""
    out = np.zeros((size[1], size[0]), np.uint8)
    for layer in layers:
        np.maximum(out, np.asarray(layer.getchannel("A"), np.uint8), out=out)
    return out


def place_unlocked(
    name: str, target: SceneImage, source: SceneImage, rng: np.random.Generator, config: SamplingConfig,
    target_layer: Image.Image | None = None,
) -> Layer:
    """The subject cut from `source`, over T's subject: same centre and height, then jittered.
    `target_layer` is T's layer of the subject when the caller has it decoded already."""
    src = source.layer(name)
    box = alpha_box(src)
    cut = src.crop(box)
    t_box = alpha_box(target_layer if target_layer is not None else target.layer(name))
    tw, th = t_box[2] - t_box[0], t_box[3] - t_box[1]
    scale = th / cut.height * math.exp(rng.uniform(-config.scale_jitter, config.scale_jitter))
    cx = (t_box[0] + t_box[2]) / 2 + rng.uniform(-config.shift_jitter, config.shift_jitter) * tw
    cy = (t_box[1] + t_box[3]) / 2 + rng.uniform(-config.shift_jitter, config.shift_jitter) * th
    rotation = rng.uniform(-config.rotation_jitter, config.rotation_jitter) if config.rotation_jitter else 0.0
    cut = jitter_colours(cut, rng, config)
    return Layer(name=name, image=LayerImage.from_pil(cut, source_name=f"{name}.png"),
                 x=round(cx - cut.width * scale / 2, 2), y=round(cy - cut.height * scale / 2, 2),
                 scale=round(scale, 4), rotation=round(rotation, 2))


def place_aligned(name: str, own: Image.Image, rng: np.random.Generator, config: SamplingConfig) -> Layer:
    """T's own subject layer `own`, unlocked: over its own pixels (its alpha box, scale 1), colours jittered."""
    box = alpha_box(own)
    cut = jitter_colours(own.crop(box), rng, config)
    return Layer(name=name, image=LayerImage.from_pil(cut, source_name=f"{name}.png"), x=box[0], y=box[1])


def alpha_box(image: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the pixels with alpha > 0; the whole image if none."""
    box = image.getchannel("A").getbbox()
    return box if box else (0, 0, image.width, image.height)


def jitter_colours(image: Image.Image, rng: np.random.Generator, config: SamplingConfig) -> Image.Image:
    """Random brightness, contrast, saturation and hue on the RGB of an RGBA image (alpha untouched)."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    rgb, alpha = arr[..., :3], arr[..., 3:]
    weight = alpha if alpha.sum() > 0 else np.ones_like(alpha)
    b = 1 + rng.uniform(-config.brightness, config.brightness)
    c = 1 + rng.uniform(-config.contrast, config.contrast)
    s = 1 + rng.uniform(-config.saturation, config.saturation)
    h = math.radians(rng.uniform(-config.hue_degrees, config.hue_degrees))
    rgb = rgb * b
    mean = (rgb * weight).sum(axis=(0, 1)) / weight.sum()
    rgb = (rgb - mean) * c + mean
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    rgb = grey[..., None] + (rgb - grey[..., None]) * s
    rgb = rgb @ _hue_rotation(h).T
    out = np.concatenate([np.clip(rgb, 0, 1), alpha], axis=-1)
    return Image.fromarray((out * 255 + 0.5).astype(np.uint8), "RGBA")


def _hue_rotation(theta: float) -> np.ndarray:
    """Rotate chroma by theta in YIQ space (luma kept)."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
    cos, sin = math.cos(theta), math.sin(theta)
    rot = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], np.float32)
    return np.linalg.inv(to_yiq) @ rot @ to_yiq
