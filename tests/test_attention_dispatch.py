"""The padded-batch attention processor goes through diffusers' attention dispatcher and equals the plain SDPA
path it replaced (per-sample rotary positions and a padding key mask included)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layercomposer.conditioning import grid_ids
from layercomposer.models.attention import PaddedBatchAttnProcessor
from layercomposer.models.denoiser import denoise
from layercomposer.models.text import TextEmbeddings


class SdpaProcessor(PaddedBatchAttnProcessor):
    """The processor as it was before the dispatcher: PyTorch's SDPA called directly."""

    def attend(self, query, key, value, mask):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


class ExplicitProcessor(PaddedBatchAttnProcessor):
    """Softmax attention written out in float64: an independent reference."""

    def attend(self, query, key, value, mask):
        scores = (query.double() @ key.double().transpose(-1, -2)) / query.shape[-1] ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return (scores.softmax(-1) @ value.double()).to(value.dtype)


@pytest.fixture(scope="module")
def padded_call():
    """A tiny FLUX transformer and a padded batch of two samples with their own ids; the second is padded."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    ).eval()
    rows, cols, m = 3, 4, 5
    n = rows * cols
    ids = torch.zeros((2, n + m, 3))
    ids[:, :n] = torch.from_numpy(grid_ids(rows, cols, 0)).float()
    ids[0, n:] = torch.tensor([[1, r, c] for r, c in [(0, 0), (0, 1), (1, 1), (2, 0), (2, 3)]], dtype=torch.float32)
    ids[1, n:n + 3] = torch.tensor([[0, 1, 2], [1, 0, 0], [2, 2, 2]], dtype=torch.float32)
    key_mask = torch.ones((2, n + m), dtype=torch.bool)
    key_mask[1, n + 3:] = False  # the second sample has 3 condition tokens, padded to 5
    inputs = {
        "x_t": torch.randn(2, n, 16), "cond": torch.randn(2, m, 16), "ids": ids,
        "text": TextEmbeddings(torch.randn(2, 6, 32), torch.randn(2, 32)), "t": torch.tensor([0.3, 0.8]),
        "guidance": torch.full((2,), 2.5), "key_mask": key_mask,
    }
    return transformer, inputs


def run(transformer, processor, inputs):
    transformer.set_attn_processor(processor)
    with torch.no_grad():
        return denoise(transformer, **inputs)


def test_dispatcher_path_equals_the_sdpa_path(padded_call, monkeypatch):
    import diffusers.models.attention_dispatch as dispatch

    transformer, inputs = padded_call
    calls = []
    original = dispatch.dispatch_attention_fn

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return original(*args, **kwargs)

    monkeypatch.setattr(dispatch, "dispatch_attention_fn", spy)
    ours = run(transformer, PaddedBatchAttnProcessor(), inputs)
    assert len(calls) == 2  # one double-stream and one single-stream block, both through the dispatcher
    sdpa = run(transformer, SdpaProcessor(), inputs)
    assert torch.equal(ours, sdpa)  # the native backend is the same SDPA call: bit for bit
    explicit = run(transformer, ExplicitProcessor(), inputs)
    assert torch.allclose(ours, explicit, atol=1e-5)
    # The mask matters: without it the padded sample's output changes (so the comparison above tests it).
    unmasked = run(transformer, PaddedBatchAttnProcessor(), {**inputs, "key_mask": None})
    assert torch.equal(unmasked[0], ours[0]) and not torch.allclose(unmasked[1], ours[1], atol=1e-4)


def test_set_attention_backend_reaches_the_processor(padded_call):
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    transformer, inputs = padded_call
    reference = run(transformer, SdpaProcessor(), inputs)
    active = _AttentionBackendRegistry.get_active_backend()[0]
    transformer.set_attn_processor(PaddedBatchAttnProcessor())
    transformer.set_attention_backend("_native_math")  # PyTorch's math kernel, chosen through diffusers
    try:
        backends = {p._attention_backend for p in transformer.attn_processors.values()}
        assert backends == {AttentionBackendName._NATIVE_MATH}
        with torch.no_grad():
            out = denoise(transformer, **inputs)
        assert torch.allclose(out, reference, atol=1e-5)
    finally:
        transformer.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(active)  # set_attention_backend also sets it globally
