"""The identity metric for unlocked characters: the gallery, the crop, the summary by hand, and the shipped
identifier validated on held-out targets (right on the character, near chance on the background alone)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from layercomposer.eval.identity import (
    GALLERY,
    IDENTIFIER_DIR,
    MIN_VISIBLE_PIXELS,
    Identifier,
    candidates,
    region_crop,
    summarise_identity,
)


def test_gallery_holds_the_truth_and_the_scene_mates_and_is_seeded():
    pool = [f"c{k:05d}" for k in range(100)]
    rng = np.random.default_rng(3)
    cands = candidates("c00007", ["c00011", "c00042"], pool, rng)
    assert len(cands) == GALLERY == len(set(cands))
    assert {"c00007", "c00011", "c00042"} <= set(cands)
    assert cands == candidates("c00007", ["c00011", "c00042"], pool, np.random.default_rng(3))
    # the truth is not always first (an argmax tie cannot favour it)
    firsts = {candidates("c00007", [], pool, np.random.default_rng(s))[0] for s in range(10)}
    assert len(firsts) > 1


def test_region_crop_keeps_only_the_region_and_centres_it():
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[10:20, 30:50] = (255, 0, 0)  # a red bar 20 wide, 10 high
    arr[40:50, 5:15] = (0, 255, 0)  # green elsewhere: outside the mask
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:50] = True
    crop = region_crop(Image.fromarray(arr), mask, 22)  # box 20 + 2 -> 22: no resampling
    rgb = (crop.transpose(1, 2, 0) + 1) * 127.5
    assert crop.shape == (3, 22, 22)
    assert np.allclose(rgb[11, 11], (255, 0, 0), atol=1)  # the centre is the region
    assert np.allclose(rgb[1, 11], (128, 128, 128), atol=1)  # above the bar: fill grey, not the picture
    assert not (np.abs(rgb - (0, 255, 0)).sum(-1) < 30).any()  # nothing outside the mask comes in
    assert abs(float((np.abs(rgb - (255, 0, 0)).sum(-1) < 3).sum()) - 200) <= 24  # about the 200 red pixels


def test_summary_by_hand():
    def region(layered, collage, paste, height, overlap, background, index):
        return {"top1": {"layered": layered, "collage": collage, "paste": paste, "target": True},
                "height": height, "overlap": overlap, "background": background, "index": index}

    regions = [region(True, False, True, 0.1, False, "locked", 1), region(False, False, True, 0.25, True, "none", 2),
               region(True, True, False, 0.5, False, "locked", 1), region(False, True, True, 0.35, True, "none", 1)]
    s = summarise_identity(regions)
    assert s["engines"]["layered"]["top1"] == 0.5 and s["engines"]["paste"]["top1"] == 0.75
    assert math.isclose(s["engines"]["paste"]["se"], math.sqrt(0.75 * 0.25 / 4))
    # paired differences layered - collage: +1, 0, 0, -1 -> mean 0, sample sd sqrt(2/3), s.e. sqrt(2/3)/2
    assert s["layered_minus_collage"]["difference"] == 0.0
    assert math.isclose(s["layered_minus_collage"]["se"], math.sqrt(2 / 3) / 2)
    assert s["by_size"]["0.00-0.20"]["layered"]["top1"] == 1.0
    assert s["by_size"]["0.45-1.00"]["layered"]["n"] == 1
    assert s["by_overlap"]["overlapping"]["paste"]["top1"] == 1.0
    assert s["by_background"]["none"]["layered"]["top1"] == 0.0
    assert s["by_index"]["j=1"]["layered"]["n"] == 3 and s["by_index"]["j=2"]["layered"]["top1"] == 0.0


@pytest.fixture(scope="module")
def identifier():
    return Identifier.load(IDENTIFIER_DIR)


def test_shipped_identifier_knows_the_targets_and_not_the_background(identifier, tmp_path_factory):
    """The validation RESULTS.md prints, on 24 held-out scenes' characters (never seen by the identifier)."""
    from layercomposer.eval.sprites import visible_masks
    from layercomposer.world import generate_scene

    right, background_right, queries = 0, 0, 0
    for k in range(24):
        scene = generate_scene(k, seed=1, size=256, split="heldout")
        image = scene.images[0]
        masks = visible_masks(_GeneratedImageView(image))
        for name in scene.subjects:
            mask = masks[name]
            if mask.sum() < MIN_VISIBLE_PIXELS:
                continue
            cands = candidates(name, [n for n in scene.subjects if n != name], identifier.ids,
                               np.random.default_rng([k, queries]))
            right += identifier.identify(image.picture, mask, cands) == name
            background_right += identifier.identify(image.background.convert("RGB"), mask, cands) == name
            queries += 1
    assert queries >= 40
    assert right / queries >= 0.9
    assert background_right / queries <= 0.15  # chance is 1 in 40


class _GeneratedImageView:
    """A world `GeneratedImage` seen through the training format's interface (`order`, `layer`)."""

    def __init__(self, image) -> None:
        self.order = ["background", *image.order]
        self._image = image

    def layer(self, name: str) -> Image.Image:
        return self._image.background.convert("RGBA") if name == "background" else self._image.layers[name]
