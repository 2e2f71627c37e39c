"""A large picture's VAE decode runs tile by tile with a cancel check before each tile, and gives exactly what
diffusers' own tiled decoding gives with the same tiles; a small one decodes in one call, as before."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from layercomposer.models import vae_tiles
from layercomposer.models.vae_tiles import OVERLAP, decode_latents


@pytest.fixture(scope="module")
def vae():
    from layercomposer.pipeline import LayerComposerPipeline

    return LayerComposerPipeline.from_pretrained("tiny-random").vae.float()


def _latents(vae, h: int, w: int) -> torch.Tensor:
    return torch.randn(1, vae.config.latent_channels, h, w, generator=torch.Generator().manual_seed(0))


def test_small_latents_decode_in_one_call(vae):
    z = _latents(vae, 6, 5)
    calls = []
    with torch.no_grad():
        out = decode_latents(vae, z, check=lambda: calls.append(1), tile=8)
        assert torch.equal(out, vae.decode(z).sample)
    assert calls == []  # the stage's own check (before decoding) is the pipeline's


def test_tiles_equal_diffusers_tiled_decode_and_check_runs_before_each(vae):
    tile, h, w = 8, 24, 20
    z = _latents(vae, h, w)
    calls = []
    with torch.no_grad():
        ours = decode_latents(vae, z, check=lambda: calls.append(1), tile=tile)
        ref = copy.deepcopy(vae)
        scale = 2 ** (len(ref.config.block_out_channels) - 1)
        ref.tile_latent_min_size, ref.tile_sample_min_size, ref.tile_overlap_factor = tile, tile * scale, OVERLAP
        theirs = ref.tiled_decode(z).sample
    assert ours.shape == (1, 3, h * scale, w * scale)
    assert torch.equal(ours, theirs)
    step = int(tile * (1 - OVERLAP))  # 6: tiles start at 0, 6, 12, 18 down and across
    assert len(calls) == math.ceil(h / step) * math.ceil(w / step) == 16


def test_a_raising_check_stops_the_decode_at_the_next_tile(vae):
    z = _latents(vae, 24, 20)
    decoded = []
    hook = vae.decoder.register_forward_hook(lambda *args: decoded.append(1))

    class Stop(Exception):
        pass

    def check():
        if len(decoded) == 2:
            raise Stop

    try:
        with torch.no_grad(), pytest.raises(Stop):
            decode_latents(vae, z, check=check, tile=8)
    finally:
        hook.remove()
    assert len(decoded) == 2


def test_generate_decodes_a_large_picture_in_tiles_and_a_cancel_stops_it(monkeypatch):
    from conftest import layer, solid
    from layercomposer.canvas import Canvas
    from layercomposer.pipeline import LayerComposerPipeline

    pipe = LayerComposerPipeline.from_pretrained("tiny-random")
    canvas = Canvas(128, 96, [layer("a", solid(20, 20))])
    whole = pipe.generate(canvas, num_inference_steps=1, check=lambda: None).image
    monkeypatch.setattr(vae_tiles, "TILE_LATENTS", 4)  # 16 x 12 latents: tiles of 4, starting every 3
    decoded = []
    hook = pipe.vae.decoder.register_forward_hook(lambda *args: decoded.append(1))
    try:
        tiled = pipe.generate(canvas, num_inference_steps=1, check=lambda: None).image
        assert len(decoded) == math.ceil(12 / 3) * math.ceil(16 / 3) == 24
        assert tiled.size == whole.size == (128, 96)

        class Stop(Exception):
            pass

        def check():
            if decoded:  # after the first tile: the job was cancelled
                raise Stop

        decoded.clear()
        with pytest.raises(Stop):
            pipe.generate(canvas, num_inference_steps=1, check=check)
        assert len(decoded) == 1
    finally:
        hook.remove()
