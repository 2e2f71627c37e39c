"""The example canvases in `examples/`: held-out identities, built from held-out scenes with known targets.

Each example takes a held-out scene, its first picture as the target and its second as the source of the
unlocked characters (another pose and lighting), exactly as training canvases are made but without
random jitter. Locked characters are the target's own cut-outs at their exact place. The target picture
is written beside the canvas (`targets/<name>.png`) so a result can be compared with what was meant.
Examples that need scenes the world does not draw by default (six characters, a wide picture) take them from
their own held-out pool made with `generate_scene`'s `characters=` / `width=`; the others from the default pool.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..canvas import Canvas, Layer, LayerImage
from ..data.canvas_sampling import SamplingConfig, alpha_box, place_unlocked
from .generator import generate_dataset

EXAMPLE_SEED = 7
"""Seed of the held-out scenes the examples come from (the evaluation uses other seeds)."""


@dataclass(frozen=True)
class ExampleSpec:
    name: str
    characters: int
    locked: tuple[int, ...]
    """Which characters (in the target's back-to-front order) are locked."""
    background: str
    """"locked" (the target's), "unlocked" (the source picture's) or "none"."""
    overlapping: bool | None = False
    """Whether the target's characters must overlap (None: either)."""
    lightings: tuple[str, ...] = ("day", "sunset", "overcast", "night")
    """Lightings the target may have (the README's example reads best in daylight)."""
    description: str = ""
    scene_characters: int | None = None
    """Make the candidate scenes with this many characters (`generate_scene(characters=)`; None: the world's
    usual 1-4, of which `characters` are picked)."""
    aspect: float = 1.0
    """Picture width / height of the candidate scenes (`generate_scene(width=)`); 1: square."""
    backgrounds: tuple[str, ...] | None = None
    """Places the target may show (None: any)."""


EXAMPLES = (
    ExampleSpec("one-sprite", 1, (), "locked", description="one unlocked character on a locked background"),
    ExampleSpec("two-overlapping", 2, (1,), "unlocked", overlapping=True,
                description="two overlapping characters, the front one locked; background unlocked"),
    ExampleSpec("two-locked-no-background", 2, (0, 1), "none",
                description="two locked characters, no background: the prompt sets the scene"),
    ExampleSpec("four-sprites", 4, (0, 2), "locked", overlapping=True, lightings=("day",),
                description="four characters, two locked and two unlocked, on a locked background"),
    ExampleSpec("four-no-background", 4, (), "none", overlapping=None,
                description="four unlocked characters and no background"),
    ExampleSpec("six-sprites", 6, (0, 2, 4), "locked", overlapping=None, lightings=("day",), scene_characters=6,
                description="six characters, three locked and three unlocked, on a locked background"),
    ExampleSpec("wide-street", 4, (1,), "locked", overlapping=None, lightings=("day",), aspect=1.5,
                backgrounds=("city",),
                description="a wide 384x256 street: four characters, one locked, on a locked background"),
)

_NO_JITTER = SamplingConfig(scale_jitter=0.0, shift_jitter=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                            hue_degrees=0.0)


def make_examples(out_dir: str | Path, size: int = 256, candidates: int = 120) -> list[Path]:
    """Write every example canvas (JSON + images) and its target picture to `out_dir`."""
    from ..data.scenes import SceneSet

    out = Path(out_dir)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        pools: dict[tuple[int | None, int | None], list] = {}
        used: set[str] = set()
        for spec in EXAMPLES:
            width = None if spec.aspect == 1.0 else round(size * spec.aspect / 16) * 16
            key = (spec.scene_characters, width)
            if key not in pools:  # the default pool is the one the first examples always came from
                folder = Path(tmp) / f"pool{len(pools)}"
                generate_dataset(folder, candidates, seed=EXAMPLE_SEED, size=size, split="heldout",
                                 characters=spec.scene_characters, width=width)
                pools[key] = SceneSet.load(folder).scenes
            scene = _pick(pools[key], spec, used)
            used.add(scene.id)
            canvas = build_example(scene, spec)
            path = canvas.save(out / f"{spec.name}.json")
            (out / "targets").mkdir(parents=True, exist_ok=True)
            scene.images[0].picture().save(out / "targets" / f"{spec.name}.png")
            written.append(path)
    return written


def _pick(scenes: list, spec: ExampleSpec, used: set[str]):
    # Scene ids repeat across pools (same seed and index); an example never reuses an id, so no two examples
    # come from the same (seed, index), whatever their pool.
    for scene in scenes:
        if scene.id in used or len(scene.images) < 2 or len(scene.images[0].subjects) != spec.characters:
            continue
        if spec.backgrounds is not None and scene.extra.get("background") not in spec.backgrounds:
            continue
        if not all(name in scene.images[1].layers for name in scene.images[0].subjects):
            continue
        if scene.images[0].extra.get("lighting") not in spec.lightings:
            continue
        if spec.overlapping is not None and spec.overlapping != _overlaps(scene.images[0]):
            continue
        return scene
    raise RuntimeError(f"no held-out scene fits example {spec.name!r}; raise `candidates`")


def _overlaps(image) -> bool:
    masks = [np.asarray(image.layer(name).getchannel("A")) > 127 for name in image.subjects]
    return any((a & b).sum() > 40 for i, a in enumerate(masks) for b in masks[i + 1:])


def build_example(scene, spec: ExampleSpec) -> Canvas:
    """The canvas of one example (target = first picture, unlocked characters from the second)."""
    target, source = scene.images[0], scene.images[1]
    rng = np.random.default_rng(0)  # unused by the jitter-free placement, required by its signature
    picture = target.picture()
    canvas = Canvas(picture.width, picture.height, prompt=target.prompt)
    if spec.background != "none":
        bg_from = target if spec.background == "locked" else source
        canvas.layers.append(Layer(name="background", image=LayerImage.from_pil(bg_from.layer("background")),
                                   kind="background", locked=spec.background == "locked"))
    for i, name in enumerate(target.subjects):
        if i in spec.locked:
            full = target.layer(name)
            box = alpha_box(full)
            image = LayerImage.from_pil(full.crop(box), source_name=f"{name}.png")
            canvas.layers.append(Layer(name=name, image=image, x=box[0], y=box[1], locked=True))
        else:
            canvas.layers.append(place_unlocked(name, target, source, rng, _NO_JITTER))
    return canvas.validate()
