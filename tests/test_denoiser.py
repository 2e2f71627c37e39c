"""Training and sampling make the same model call: a padded training batch gives each sample the velocity
that `LayerComposerPipeline.generate` computes for it alone, and the padded-batch attention processor is
diffusers' own Flux processor when nothing is padded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layercomposer.conditioning import TokenRules, grid_ids
from layercomposer.data.canvas_sampling import SamplingConfig, sample_training_canvas
from layercomposer.data.scenes import SceneSet
from layercomposer.models.attention import use_padded_batch_attention, use_stock_attention
from layercomposer.models.denoiser import denoise
from layercomposer.training.batch import SampleEncoder, collate, guidance_vector, predict_velocity
from layercomposer.world import generate_dataset


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_dataset(root, 8, seed=5, size=128, split="train")
    return SceneSet.load(root)


@pytest.fixture(scope="module")
def pipe():
    from layercomposer.pipeline import LayerComposerPipeline

    return LayerComposerPipeline.from_pretrained("tiny-random")


def mixed_samples(scenes, count=3):
    """Training canvases with locked and unlocked layers and different kept-token counts."""
    config = SamplingConfig(p_lock_none=0.0, p_lock_all=0.0, p_lock_each=0.5, p_drop_background=0.5,
                            p_aligned_unlocked=0.3)
    out = []
    for k in range(200):
        scene = scenes.scenes[k % len(scenes.scenes)]
        sample = sample_training_canvas(scene, np.random.default_rng([9, k]), config)
        if sample.locked and [n for n in sample.unlocked if n != "background"]:
            out.append(sample)
        if len(out) == count:
            return out
    raise AssertionError("no mixed canvases")


def record_calls(transformer):
    """Every transformer call's noisy input, time and output at the noisy tokens."""
    calls = []

    def hook(module, args, kwargs, output):
        calls.append({"hidden": kwargs["hidden_states"].clone(), "t": kwargs["timestep"].clone(),
                      "out": output[0].clone()})

    return calls, transformer.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("rules", [TokenRules(False, "centre"), TokenRules(True, "cover")], ids=["separate", "merged"])
def test_a_padded_training_batch_gives_each_sample_the_sampling_velocity(pipe, scenes, rules):
    pipe.conditioning.rules = rules
    samples = mixed_samples(scenes)
    rows, cols = samples[0].canvas.grid
    n = rows * cols
    inference = []
    for i, sample in enumerate(samples):
        calls, handle = record_calls(pipe.transformer)
        try:
            pipe.generate(sample.canvas, num_inference_steps=4, seed=i)
        finally:
            handle.remove()
        assert len(calls) == 4
        inference.append(calls[i + 1])  # steps 2, 3, 4 of 4: times strictly inside (0, 1), all different

    encoded = SampleEncoder(pipe._encode_pixels, rules=rules).encode_many(samples)
    batch = collate(encoded)
    counts = [e.cond.shape[0] for e in encoded]
    assert len(set(counts)) > 1 and batch.key_mask is not None  # really padded
    x_t = torch.cat([c["hidden"][:, :n] for c in inference])
    t = torch.cat([c["t"] for c in inference])
    assert 0.0 < float(t.min()) < float(t.max()) < 1.0 and len(set(t.tolist())) == len(samples)
    text = pipe.text_encoder.encode(batch.prompts)
    use_padded_batch_attention(pipe.transformer)
    try:
        with torch.no_grad():
            g = guidance_vector(pipe.transformer, len(samples), pipe.guidance_scale)
            trained = predict_velocity(pipe.transformer, x_t, batch, text, t, g)
    finally:
        use_stock_attention(pipe.transformer)
    for i, call in enumerate(inference):
        sampled = call["out"][:, :n]
        assert sampled.abs().mean() > 0.1
        torch.testing.assert_close(trained[i:i + 1], sampled, rtol=1e-4, atol=2e-5)
    # The check can fail: another sample's time gives another velocity.
    assert not torch.allclose(trained[:1], inference[1]["out"][:, :n], atol=1e-3)
    pipe.conditioning.rules = TokenRules()


def test_padded_processor_equals_diffusers_flux_processor_without_padding(pipe, scenes):
    sample = mixed_samples(scenes, 1)[0]
    cond = pipe.condition(sample.canvas)
    rows, cols = sample.canvas.grid
    ids = torch.cat([torch.from_numpy(grid_ids(rows, cols, 0)), cond.ids]).float()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, rows * cols, pipe.transformer.config.in_channels), generator=gen)
    tokens = cond.tokens.expand(2, -1, -1)
    text = pipe.text_encoder.encode(["a red sprite", "two sprites on a beach"])
    t = torch.tensor([0.3, 0.8])
    g = guidance_vector(pipe.transformer, 2, 2.5)
    with torch.no_grad():
        use_stock_attention(pipe.transformer)
        stock = denoise(pipe.transformer, x, tokens, ids, text, t, g)
        use_padded_batch_attention(pipe.transformer)
        try:
            shared = denoise(pipe.transformer, x, tokens, ids, text, t, g)
            per_sample = denoise(pipe.transformer, x, tokens, ids[None].expand(2, -1, -1), text, t, g)
            moved = ids.clone()
            moved[rows * cols:, 1] += 1  # the condition tokens one row down: the positions are used
            shifted = denoise(pipe.transformer, x, tokens, moved[None].expand(2, -1, -1), text, t, g)
        finally:
            use_stock_attention(pipe.transformer)
    torch.testing.assert_close(shared, stock, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_sample, stock, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(shifted, stock, atol=1e-4)


def test_attention_mass_processor_computes_the_same_attention_and_weights_that_sum_to_one(pipe, scenes):
    from layercomposer.conditioning import subject_cells
    from layercomposer.eval.attention import AttentionMassProcessor, attention_mass

    sample = mixed_samples(scenes, 1)[0]
    cond = pipe.condition(sample.canvas)
    rows, cols = sample.canvas.grid
    n = rows * cols
    ids = torch.cat([torch.from_numpy(grid_ids(rows, cols, 0)), cond.ids]).float()
    x = torch.randn((1, n, pipe.transformer.config.in_channels), generator=torch.Generator().manual_seed(1))
    text = pipe.text_encoder.encode([sample.prompt])
    t, g = torch.tensor([0.5]), guidance_vector(pipe.transformer, 1, 2.5)
    length = text.sequence.shape[1]
    groups = torch.cat([torch.zeros(length), torch.ones(n), torch.full((cond.count,), 2)]).long()
    with torch.no_grad():
        use_stock_attention(pipe.transformer)
        stock = denoise(pipe.transformer, x, cond.tokens, ids, text, t, g)
        processor = AttentionMassProcessor(groups, 3)
        pipe.transformer.set_attn_processor(processor)
        try:
            recorded = denoise(pipe.transformer, x, cond.tokens, ids, text, t, g)
        finally:
            use_stock_attention(pipe.transformer)
    torch.testing.assert_close(recorded, stock, rtol=1e-4, atol=1e-5)
    blocks = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    assert len(processor.mass) == blocks
    for mass in processor.mass:
        torch.testing.assert_close(mass.sum(-1), torch.ones(mass.shape[0]))
    # The probe itself: one entry per unlocked character asked about, shares between 0 and 1.
    names = [name for name in sample.unlocked if name != "background"]
    target_alpha = np.asarray(sample.subjects)
    cells = {name: subject_cells(target_alpha, sample.canvas.grid).numpy() for name in names}
    out = attention_mass(pipe, sample.canvas, sample.target, cells, times=(0.5,))
    assert set(out) == {name for name in names if cells[name].any()}
    for shares in out.values():
        total = shares["own"] + shares["other_unlocked"] + shares["locked"] + shares["noisy"] + shares["text"]
        assert abs(total - 1.0) < 1e-4 and 0 < shares["own"] < 1
