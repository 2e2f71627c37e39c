"""The sprites evaluation's test canvases: held-out scenes made into cases (a canvas, its target T, and the
masks the metrics need: visible, revealed, near unlocked), and the canvases derived from a case (lock flip, copy
probe, naive pasting)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ...canvas import Canvas, Layer, LayerImage
from ...data.canvas_sampling import SamplingConfig, TrainingSample, alpha_box, place_unlocked, sample_training_canvas
from ...data.scenes import BACKGROUND, Scene, SceneImage, SceneSet
from ...errors import LayerComposerError

EVAL_SEED = 1
"""Held-out scenes of the evaluation: `layercomposer world generate --split heldout --seed 1`."""

EVAL_SAMPLING = SamplingConfig(
    p_lock_none=0.2, p_lock_all=0.1, p_lock_each=0.5, p_drop_background=0.35,
    scale_jitter=0.0, shift_jitter=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue_degrees=0.0,
)
MIN_REVEALED_PIXELS = 30
"""A case enters an occlusion subset when T shows at least this many of its pixels that the collage hides."""


AWAY_PX = 12
"""Locked pixels count as away from the unlocked characters when none is within this many pixels (square)."""
OCCLUSION_SCENES_PER_CASE = {"unlocked": 5, "all": 2}
"""Held-out scenes generated per case asked for by an occlusion-only run without --data (about one canvas in
four shows hidden pixels of an unlocked character, seven in ten hidden pixels of any layer)."""
OCCLUSION_SUBSETS = ("unlocked", "all")
"""What an occlusion-only run selects by: unlocked characters' hidden pixels, or any layer's."""
SUBSET_KEY = {"unlocked": "revealed", "all": "revealed_all"}


@dataclass
class SpriteCase:
    """One test canvas, its target, and the masks the metrics need."""

    index: int
    scene: Scene
    sample: TrainingSample
    visible: dict[str, np.ndarray]
    """Layer name -> (H, W) bool: where that layer is what T shows (alpha > 0.5, nothing in front)."""
    revealed: dict[str, np.ndarray]
    """Canvas layer -> pixels of it that T shows but that later layers cover in the canvas's collage."""
    near_unlocked: np.ndarray
    """(H, W) bool: within AWAY_PX of a pixel where T or the canvas shows an unlocked character."""

    def _revealed(self, names: list[str] | None) -> np.ndarray:
        out = np.zeros(self.sample.target.size[::-1], bool)
        for name, mask in self.revealed.items():
            if names is None or name in names:
                out |= mask
        return out

    @property
    def revealed_mask(self) -> np.ndarray:
        """The pixels of unlocked characters that T shows and the collage hides (the occlusion subset's first
        part; the only one before 2026-12-05, and the one `--occlusion-only` selects by)."""
        return self._revealed([n for n in self.sample.unlocked if n != BACKGROUND])

    @property
    def revealed_locked_mask(self) -> np.ndarray:
        """The pixels of locked layers that T shows and the collage hides under an unlocked layer."""
        return self._revealed(self.sample.locked)

    @property
    def revealed_all_mask(self) -> np.ndarray:
        """Every pixel that T shows and the collage hides, whatever its layer (the occlusion subset)."""
        return self._revealed(None)

    @property
    def revealed_pixels(self) -> int:
        return int(self.revealed_mask.sum())

    @property
    def background(self) -> str:
        s = self.sample
        if BACKGROUND in s.locked:
            return "locked"
        return "unlocked" if BACKGROUND in s.unlocked else "none"


def _alpha(image: Image.Image) -> np.ndarray:
    return np.asarray(image.getchannel("A")) > 127


def visible_masks(scene_image: SceneImage) -> dict[str, np.ndarray]:
    """Per layer of a scene picture, the pixels where it is the front-most layer."""
    order = list(scene_image.order)
    alphas = {name: _alpha(scene_image.layer(name)) for name in order}
    out, covered = {}, np.zeros_like(next(iter(alphas.values())))
    for name in reversed(order):  # front to back
        out[name] = alphas[name] & ~covered
        covered |= alphas[name]
    return out


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of a True pixel of `mask`, counting diagonal steps as one (a square window)."""
    if radius <= 0:
        return mask.copy()
    out = mask
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        out = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis).any(axis=-1)
    return out


def canvas_alphas(canvas: Canvas) -> dict[str, np.ndarray]:
    """Each visible canvas layer's (H, W) bool alpha > 0.5, in z-order (back to front)."""
    return {layer.name: _alpha(canvas.render_layer(layer)) for layer in canvas.visible_layers()}


def near_unlocked_mask(renders: dict[str, np.ndarray], visible: dict[str, np.ndarray], unlocked: list[str],
                       radius: int = AWAY_PX) -> np.ndarray:
    """Pixels within `radius` of an unlocked character, where T shows it or where the canvas (`canvas_alphas`)
    places it."""
    shape = next(iter(visible.values())).shape
    where = np.zeros(shape, bool)
    for name, alpha in renders.items():
        if name in unlocked and name != BACKGROUND:
            where |= alpha
            where |= visible.get(name, np.zeros(shape, bool))
    return dilate(where, radius)


def revealed_masks(renders: dict[str, np.ndarray], visible: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each layer of the canvas (`canvas_alphas`): visible in T, inside its own canvas layer, but covered
    by a later layer.

    A locked layer is T's own, so a later layer that covers it in the canvas but not in T is an unlocked
    one, placed where T does not have that character (another pose)."""
    names = list(renders)
    out = {}
    for name in names:
        if name not in visible:
            continue
        later = names[names.index(name) + 1:]
        cover = np.zeros_like(renders[name])
        for other in later:
            cover |= renders[other]
        out[name] = visible[name] & renders[name] & cover
    return out


def build_cases(scenes: SceneSet, count: int, seed: int = EVAL_SEED, occlusion_only: bool = False,
                occlusion_subset: str = "unlocked") -> list[SpriteCase]:
    """`count` test canvases from scenes with at least two pictures, one per scene in order.

    `occlusion_only` keeps only the canvases that enter an occlusion subset (at least MIN_REVEALED_PIXELS that
    T shows and the collage hides): of unlocked characters (`occlusion_subset="unlocked"`) or of any layer
    (`"all"`). A case keeps the index (and so the canvas and the sampling seed) it has in the full run: the
    occlusion subset of a full run on the same scenes is the start of this one."""
    if occlusion_subset not in OCCLUSION_SUBSETS:
        raise LayerComposerError(f"occlusion subset: one of {', '.join(OCCLUSION_SUBSETS)}, got {occlusion_subset!r}")
    cases = []
    candidates = 0
    for scene in scenes.scenes:
        if len(cases) == count:
            break
        if len(scene.images) < 2:
            continue
        rng = np.random.default_rng([seed, candidates])
        sample = sample_training_canvas(scene, rng, EVAL_SAMPLING)
        visible = visible_masks(scene.images[sample.image])
        renders = canvas_alphas(sample.canvas)  # rendered once for both masks
        case = SpriteCase(candidates, scene, sample, visible, revealed_masks(renders, visible),
                    near_unlocked_mask(renders, visible, sample.unlocked))
        candidates += 1
        revealed = case.revealed_mask if occlusion_subset == "unlocked" else case.revealed_all_mask
        if not occlusion_only or revealed.sum() >= MIN_REVEALED_PIXELS:
            cases.append(case)
    return cases


def flip_lock(case: SpriteCase, name: str) -> Canvas:
    """The case's canvas with character `name` switched between locked (T's own) and unlocked (other picture)."""
    sample = case.sample
    target = case.scene.images[sample.image]
    canvas = sample.canvas.copy()
    i = next(k for k, layer in enumerate(canvas.layers) if layer.name == name)
    if canvas.layers[i].locked:
        others = [im for im in case.scene.images if name in im.layers and im.index != sample.image]
        layer = place_unlocked(name, target, others[0], np.random.default_rng(0), EVAL_SAMPLING)
    else:
        full = target.layer(name)
        box = alpha_box(full)
        layer = Layer(name=name, image=LayerImage.from_pil(full.crop(box)), x=box[0], y=box[1], locked=True)
    canvas.layers[i] = layer
    return canvas


def paste(canvas: Canvas) -> Image.Image:
    """Naive pasting: the flattened canvas over the conditioning fill grey (what no model gives)."""
    base = Image.new("RGBA", canvas.generation_size, (128, 128, 128, 255))
    return Image.alpha_composite(base, canvas.flatten(canvas.generation_size)).convert("RGB")


def copy_probe_canvas(case: SpriteCase, name: str) -> Canvas:
    """The case's canvas with character `name` as the target's own layer, in place (its alpha box, scale 1),
    unlocked, colours untouched: what a model that copies its unlocked layers keeps exactly."""
    target = case.scene.images[case.sample.image]
    canvas = case.sample.canvas.copy()
    i = next(k for k, layer in enumerate(canvas.layers) if layer.name == name)
    full = target.layer(name)
    box = alpha_box(full)
    canvas.layers[i] = Layer(name=name, image=LayerImage.from_pil(full.crop(box)), x=box[0], y=box[1], locked=False)
    return canvas
