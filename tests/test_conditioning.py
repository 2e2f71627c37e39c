"""Conditioning (docs/DESIGN.md section 3): token counts, ids with locking, the three modes, the latent cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import layer, solid
from layercomposer.canvas import Canvas
from layercomposer.conditioning import (
    ConditioningBuilder,
    TokenRules,
    composite_on_fill,
    grid_ids,
    keep_mask,
    nearest_grid,
    token_stats,
)
from layercomposer.errors import LayerComposerError


def kept(canvas: Canvas, name: str, mode: str = "layered") -> int:
    plan = ConditioningBuilder().plan(canvas, mode)
    return next(g.tokens for g in plan.groups if g.name == name)


# A cell (r, c) is kept iff the alpha at its centre pixel (16r + 8, 16c + 8) is > 0.5, so a box
# [x0, x1) x [y0, y1) keeps #{c : x0 <= 16c + 8 < x1} x #{r : y0 <= 16r + 8 < y1} tokens.
@pytest.mark.parametrize(
    ("w", "h", "x", "y", "expected"),
    [
        (32, 48, 16, 32, 2 * 3),  # aligned: cols 1-2, rows 2-4
        (128, 128, 0, 0, 8 * 8),  # the whole 128x128 canvas
        (30, 30, 10, 10, 1 * 1),  # [10, 40): centres 24 only (8 < 10, 40 is not < 40)
        (40, 20, 5, 3, 3 * 1),  # [5, 45): 8, 24, 40; [3, 23): 8
        (16, 16, 0, 0, 1),  # exactly one cell
        (16, 16, 9, 9, 1),  # [9, 25) holds centre 24 only
        (15, 15, 9, 9, 0),  # [9, 24) covers parts of four cells, none of their centres
        (17, 17, 8, 8, 2 * 2),  # [8, 25): centres 8 and 24
        (40, 40, -20, -20, 1),  # partly off-canvas: [-20, 20) holds centre 8 only
        (64, 16, 100, 0, 2),  # partly off the right edge: [100, 164) holds centres 104, 120
    ],
)
def test_token_counts_for_rectangles(w, h, x, y, expected):
    c = Canvas(128, 128, [layer("a", solid(w, h), x=x, y=y)])
    assert kept(c, "a") == expected


def test_alpha_threshold_is_strictly_above_half():
    assert kept(Canvas(64, 64, [layer("a", solid(64, 64, (9, 9, 9, 128)))]), "a") == 16  # 128/255 > 0.5
    assert kept(Canvas(64, 64, [layer("a", solid(64, 64, (9, 9, 9, 127)))]), "a") == 0  # 127/255 < 0.5


def test_non_multiple_of_16_canvas_uses_rounded_down_grid():
    c = Canvas(100, 70, [layer("a", solid(100, 70))])
    plan = ConditioningBuilder().plan(c)
    assert plan.grid == (4, 6) and plan.groups[0].tokens == 24 and plan.noisy == 24


def test_nearest_grid_samples_cell_centres():
    a = np.zeros((32, 48), np.float32)
    a[8, 8] = a[24, 40] = 1.0
    a[0, 0] = a[15, 15] = 1.0  # not centres: ignored
    assert nearest_grid(a).tolist() == [[1, 0, 0], [0, 0, 1]]
    assert keep_mask(a).sum() == 2


# Under `cover` a cell is kept iff any of its pixels is > 0.5, so a box [x0, x1) x [y0, y1) keeps
# #{c : [16c, 16c + 16) meets [x0, x1)} x #{r : [16r, 16r + 16) meets [y0, y1)} tokens.
@pytest.mark.parametrize(
    ("w", "h", "x", "y", "expected"),
    [
        (32, 48, 16, 32, 2 * 3),  # aligned: the same cells as under centre
        (30, 30, 10, 10, 3 * 3),  # [10, 40) meets cells 0, 1, 2 (centre keeps 1)
        (15, 15, 9, 9, 2 * 2),  # [9, 24) meets cells 0 and 1 (centre keeps none)
        (1, 1, 127, 127, 1),  # one pixel in the last cell
        (40, 40, -20, -20, 2 * 2),  # partly off-canvas: [0, 20) meets cells 0 and 1
    ],
)
def test_cover_rule_keeps_every_cell_a_layer_touches(w, h, x, y, expected):
    c = Canvas(128, 128, [layer("a", solid(w, h), x=x, y=y)])
    plan = ConditioningBuilder(rules=TokenRules(prune="cover")).plan(c)
    assert plan.groups[0].tokens == expected
    assert plan.groups[0].coverage == expected / 64
    assert token_stats(c, rules=TokenRules(prune="cover"))["total"] == expected


def test_cover_rule_threshold_and_rule_changes():
    a = np.zeros((32, 48), np.float32)
    a[0, 0] = 0.51  # a corner pixel of cell (0, 0)
    a[31, 20] = 0.5  # cell (1, 1): not above one half
    assert keep_mask(a, "cover").tolist() == [[True, False, False], [False, False, False]]
    assert not keep_mask(a, "centre").any()
    with pytest.raises(LayerComposerError, match="prune rule: one of centre, cover, got 'edge'"):
        keep_mask(a, "edge")
    with pytest.raises(LayerComposerError, match="prune_rule: one of centre, cover"):
        TokenRules(prune="edge")
    with pytest.raises(LayerComposerError, match="prune_rule: one of centre, cover"):
        TokenRules.from_index({"prune_rule": 3})
    with pytest.raises(LayerComposerError, match="merge_locked_layers must be true or false"):
        TokenRules.from_index({"merge_locked_layers": "yes"})
    assert TokenRules.from_index({}) == TokenRules(False, "centre")
    # Changing a builder's rule drops what it cached under the old one.
    c = Canvas(64, 64, [layer("a", solid(15, 15), x=9, y=9)])
    builder = ConditioningBuilder()
    assert builder.plan(c).total == 0
    builder.rules = TokenRules(prune="cover")
    assert builder.plan(c).total == 4 and builder.rules == TokenRules(False, "cover")


def test_ids_for_a_mix_of_locked_and_unlocked_layers():
    # bg (locked) -> 0; A unlocked -> 1; B locked -> 0; C unlocked -> 2; D hidden -> none; E unlocked -> 3.
    c = Canvas(64, 64, [
        layer("bg", solid(64, 64, (0, 0, 0, 255)), kind="background", locked=True),
        layer("A", solid(16, 16), x=0, y=0),
        layer("B", solid(16, 32), x=16, y=0, locked=True),
        layer("C", solid(32, 16), x=32, y=48),
        layer("D", solid(16, 16), x=48, y=0, visible=False),
        layer("E", solid(16, 16), x=48, y=16),
    ])
    seen = []
    builder = ConditioningBuilder(encoder=_fake_free_encoder_counting(seen))
    cond = builder.build(c, "layered")
    plan = cond.plan
    assert [(g.name, g.locked, g.index, g.tokens) for g in plan.groups] == [
        ("bg", True, 0, 16), ("A", False, 1, 1), ("B", True, 0, 2), ("C", False, 2, 2), ("E", False, 3, 1)
    ]
    assert plan.hidden == ["D"]
    ids = cond.ids.tolist()
    assert len(ids) == 16 + 1 + 2 + 2 + 1 == cond.count
    assert ids[:16] == [[0, r, cc] for r in range(4) for cc in range(4)]
    assert ids[16:] == [[1, 0, 0], [0, 0, 1], [0, 1, 1], [2, 3, 2], [2, 3, 3], [3, 1, 3]]
    # Tokens are gathered from the right cells: the fake encoder writes (r, c) into the first two channels.
    tokens = cond.tokens[0]
    assert tokens[:, :2].round().long().tolist() == [row[1:] for row in ids]


def _fake_free_encoder_counting(seen):
    """An encoder that is exact by construction: token (r, c) carries (r, c, mean colour) so gathering is checkable.

    Not a stand-in for the VAE (the pipeline tests use the real one); it makes token *positions* visible.
    """

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(pixels)
        _, _, h, w = pixels.shape
        rows, cols = h // 16, w // 16
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        out = []
        for picture in pixels:
            mean = picture.reshape(3, rows, 16, cols, 16).mean(dim=(2, 4))  # (3, rows, cols)
            out.append(torch.stack([r.float(), c.float(), *mean], dim=-1).reshape(rows * cols, 5))
        return torch.stack(out)  # (b, rows*cols, 5)

    return encode


def test_three_modes_share_one_path():
    c = Canvas(64, 64, [
        layer("A", solid(16, 16), x=0, y=0),
        layer("B", solid(32, 32, (0, 0, 255, 255)), x=16, y=16, locked=True),
        layer("H", solid(8, 8), visible=False),
    ])
    seen: list = []
    builder = ConditioningBuilder(encoder=_fake_free_encoder_counting(seen))
    layered = builder.build(c, "layered")
    unpruned = builder.build(c, "unpruned")
    collage = builder.build(c, "collage")
    assert layered.count == 1 + 4
    assert unpruned.count == 2 * 16  # every cell of both visible layers
    assert unpruned.ids[:16, 0].tolist() == [1] * 16 and unpruned.ids[16:, 0].tolist() == [0] * 16
    assert collage.count == 16 and collage.ids.tolist() == grid_ids(4, 4, 1).tolist()
    # The collage is the flattened canvas on the fill colour: cell (1, 1) is B's blue, cell (0, 0) A's red,
    # cell (3, 3) is empty (fill = 0 in [-1, 1]).
    colour = collage.tokens[0, :, 2:].reshape(4, 4, 3)
    assert colour[1, 1].tolist() == [-1, -1, 1] and colour[0, 0].tolist() == [1, -1, -1]
    assert colour[3, 3].tolist() == [0, 0, 0]
    stats = layered.plan.as_dict()
    assert (stats["total"], stats["unpruned_total"], stats["collage_total"]) == (5, 32, 16)
    assert len(seen) == 3 and builder.encode_calls == 3  # A, B once each (shared by layered and unpruned), collage


def test_merged_locked_layers_are_one_group_of_their_flattened_picture():
    # The mixed canvas above, merged: bg + B (locked) -> one group, index 0, every cell (bg covers it);
    # A, C, E unlocked keep their own groups and indices; D stays hidden.
    c = Canvas(64, 64, [
        layer("bg", solid(64, 64, (0, 0, 0, 255)), kind="background", locked=True),
        layer("A", solid(16, 16), x=0, y=0),
        layer("B", solid(16, 32, (0, 0, 255, 255)), x=16, y=0, locked=True),
        layer("C", solid(32, 16), x=32, y=48),
        layer("D", solid(16, 16), x=48, y=0, visible=False),
        layer("E", solid(16, 16), x=48, y=16),
    ])
    seen: list = []
    builder = ConditioningBuilder(encoder=_fake_free_encoder_counting(seen), rules=TokenRules(merge_locked=True))
    cond = builder.build(c, "layered")
    assert [(g.name, g.locked, g.index, g.tokens) for g in cond.plan.groups] == [
        ("bg + B", True, 0, 16), ("A", False, 1, 1), ("C", False, 2, 2), ("E", False, 3, 1)
    ]
    assert cond.count == 16 + 1 + 2 + 1  # B's two cells are no longer a second token at ids [0, r, 1]
    assert cond.ids[:16].tolist() == grid_ids(4, 4, 0).tolist()
    # The locked group's picture is B over bg: blue at cells (0, 1) and (1, 1), black elsewhere (-1 in [-1, 1]).
    colour = cond.tokens[0, :16, 2:].reshape(4, 4, 3)
    assert colour[0, 1].tolist() == [-1, -1, 1] and colour[1, 1].tolist() == [-1, -1, 1]
    assert colour[2, 1].tolist() == [-1, -1, -1] and colour[0, 0].tolist() == [-1, -1, -1]
    stats = cond.plan.as_dict()
    assert (stats["total"], stats["unpruned_total"], stats["collage_total"]) == (20, 4 * 16, 16)
    assert builder.build(c, "unpruned").count == 4 * 16 and len(seen) == 4  # locked picture, A, C, E
    # Moving a locked layer re-encodes the locked picture only; an unlocked one, that layer only.
    moved = c.copy()
    moved.layers[2].y = 16
    builder.build(moved)
    assert len(seen) == 5
    assert token_stats(c, rules=TokenRules(merge_locked=True))["layers"][0]["name"] == "bg + B"
    # Without locked layers nothing changes; the collage mode ignores the flag.
    free = Canvas(64, 64, [layer("A", solid(16, 16))])
    assert builder.plan(free).as_dict() == ConditioningBuilder().plan(free).as_dict()
    merged_collage, collage = builder.plan(c, "collage").as_dict(), ConditioningBuilder().plan(c, "collage").as_dict()
    assert merged_collage["layers"] == collage["layers"] and merged_collage["total"] == collage["total"] == 16
    assert (merged_collage["unpruned_total"], collage["unpruned_total"]) == (4 * 16, 5 * 16)  # what unpruned would be


def test_empty_canvas_has_no_condition_tokens():
    builder = ConditioningBuilder(encoder=_fake_free_encoder_counting([]))
    for mode in ("layered", "unpruned", "collage"):
        cond = builder.build(Canvas(64, 96), mode)
        assert cond.tokens is None and cond.count == 0
    assert token_stats(Canvas(64, 96)) == {
        "mode": "layered", "grid": [6, 4], "noisy": 24, "layers": [], "hidden": [], "total": 0,
        "unpruned_total": 0, "collage_total": 0,
    }


def test_unknown_mode():
    with pytest.raises(LayerComposerError, match="mode: must be one of"):
        ConditioningBuilder().plan(Canvas(64, 64), "pasted")


def test_cache_encodes_an_unchanged_layer_once():
    layers = [layer(f"L{i}", solid(16, 16, (40 * i, 0, 0, 255)), x=16 * i, y=0) for i in range(6)]
    c = Canvas(128, 64, layers)
    seen: list = []
    builder = ConditioningBuilder(encoder=_fake_free_encoder_counting(seen))
    builder.build(c)
    assert builder.encode_calls == 6
    moved = c.copy()
    moved.layers[2].x += 16  # move one layer of six
    builder.build(moved)
    assert builder.encode_calls == 7
    relocked = moved.copy()
    relocked.layers[0].locked = True  # lock, hide, reorder: ids change, latents do not
    relocked.layers[1].visible = False
    relocked.layers.reverse()
    builder.build(relocked)
    builder.build(relocked, "unpruned")
    assert builder.encode_calls == 7
    dup = moved.copy()
    dup.layers.append(layer("copy-of-L0", solid(16, 16, (0, 0, 0, 255)), x=0, y=0))  # same content + place as L0
    builder.build(dup)
    assert builder.encode_calls == 7


def test_missing_layers_are_encoded_in_batches_of_encode_batch():
    layers = [layer(f"L{i}", solid(16, 16, (40 * i, 0, 0, 255)), x=16 * i, y=0) for i in range(6)]
    seen: list = []
    builder = ConditioningBuilder(encoder=_fake_free_encoder_counting(seen), encode_batch=4)
    cond = builder.build(Canvas(128, 64, layers))
    assert [len(p) for p in seen] == [4, 2] and builder.encode_calls == 6
    # Each layer's tokens come from its own picture in the batch: its red channel at its own cell.
    reds = cond.tokens[0, :, 2]
    assert reds.tolist() == pytest.approx([2 * 40 * i / 255 - 1 for i in range(6)], abs=1e-6)


def test_fill_colour_is_zero_and_alpha_premultiplies():
    from PIL import Image

    px = np.array([[[255, 255, 255, 0], [255, 0, 0, 255], [255, 255, 255, 51]]], np.uint8)
    out = composite_on_fill(Image.fromarray(px, "RGBA"))
    assert out.shape == (3, 1, 3)
    assert out[:, 0, 0].tolist() == [0, 0, 0]
    assert out[:, 0, 1].tolist() == [1, -1, -1]
    assert np.allclose(out[:, 0, 2], 0.2)  # white at alpha 0.2 over grey: (2 * 1 - 1) * 0.2


# ----------------------------------------------------------------------------------------------------------
# Hard locking: which latent pixels (8x8 px) show locked layers only (by hand on a 64x64 canvas: 8x8 of them)


def test_hard_lock_cells_by_hand(make_canvas):
    from conftest import layer, solid
    from layercomposer.conditioning import hard_lock_target

    base = layer("base", solid(32, 32), locked=True)  # covers latent pixels (0..3, 0..3) exactly
    cells, picture = hard_lock_target(make_canvas(64, 64, [base]))
    expected = np.zeros((8, 8), bool)
    expected[:4, :4] = True
    assert (cells == expected).all()
    assert picture.size == (64, 64) and picture.getpixel((5, 5)) == (255, 0, 0, 255)
    assert picture.getpixel((40, 40))[3] == 0

    # An unlocked layer in front at x 20..27, y 4..11 touches latent pixels (0..1, 2..3) and takes them
    # from the lock; a locked 20x20 square at (40..59, 40..59) fills latent pixels (5..6, 5..6) only; an
    # opaque unlocked layer at (0..15, 16..31) hides the locked one below it at (2..3, 0..1).
    front = layer("front", solid(8, 8, (0, 0, 255, 255)), x=20, y=4)
    corner = layer("corner", solid(20, 20), x=40, y=40, locked=True)
    cover = layer("cover", solid(16, 16, (0, 255, 0, 255)), x=0, y=16)
    cells, _ = hard_lock_target(make_canvas(64, 64, [base, cover, front, corner]))
    expected[0:2, 2:4] = expected[2:4, 0:2] = False
    expected[5:7, 5:7] = True
    assert (cells == expected).all()

    # A half-transparent locked layer is not "locked only"; hidden layers do not count; nothing locked
    # means no picture at all.
    ghost = layer("ghost", solid(64, 64, (9, 9, 9, 128)), locked=True)
    assert not hard_lock_target(make_canvas(64, 64, [ghost]))[0].any()
    unlocked = layer("u", solid(64, 64))
    assert hard_lock_target(make_canvas(64, 64, [unlocked]))[1] is None
    hidden = layer("h", solid(64, 64, (0, 0, 255, 255)), visible=False)
    assert hard_lock_target(make_canvas(64, 64, [base, hidden]))[0].sum() == 16
