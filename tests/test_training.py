"""Training: scene loading, locking-aware sampling, padded batches, optimisation, resume and LoRA files."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from layercomposer.canvas import Layer, LayerImage
from layercomposer.conditioning import TokenRules, subject_cells
from layercomposer.data.canvas_sampling import (
    SamplingConfig,
    alpha_box,
    choose_locks,
    jitter_colours,
    sample_training_canvas,
)
from layercomposer.data.scenes import SceneError, SceneSet, load_scene
from layercomposer.errors import LayerComposerError
from layercomposer.models.attention import use_stock_attention
from layercomposer.training.batch import SampleEncoder, collate, flow_loss, guidance_vector
from layercomposer.world import generate_dataset


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_dataset(root, 6, seed=3, size=128, split="train")
    return root


@pytest.fixture(scope="module")
def scenes(scenes_dir):
    return SceneSet.load(scenes_dir)


def multi(scenes, min_subjects=2):
    return next(s for s in scenes.scenes if len(s.subjects) >= min_subjects and len(s.images) >= 2)


# ----------------------------------------------------------------------------------------------------------
# Scene format


def test_scene_loader_reads_the_world(scenes):
    assert len(scenes) == 6
    scene = scenes.scenes[0]
    im = scene.images[0]
    assert im.order[0] == "background" and set(im.subjects) <= set(scene.subjects)
    assert im.picture().size == (128, 128) and im.layer(im.subjects[0]).mode == "RGBA"


def test_scene_loader_errors(tmp_path, scenes_dir):
    with pytest.raises(SceneError, match=r"no <scene>/scene.json found"):
        SceneSet.load(tmp_path)
    src = sorted(scenes_dir.iterdir())[0]
    doc = json.loads((src / "scene.json").read_text())
    doc["images"][0]["layers"]["stranger"] = "layers/img0/background.png"
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    (bad / "scene.json").write_text(json.dumps(doc))
    with pytest.raises(SceneError, match="'stranger' is not one of the scene's subjects"):
        load_scene(bad)
    doc["images"][0]["layers"] = {"background": "../../etc/passwd"}
    (bad / "scene.json").write_text(json.dumps(doc))
    with pytest.raises(SceneError, match="leaves the scene folder"):
        load_scene(bad)


# ----------------------------------------------------------------------------------------------------------
# Locking-aware sampling


def test_lock_choices_none_all_and_each():
    names = ["background", "a", "b", "c"]
    rng = np.random.default_rng(0)
    assert choose_locks(names, rng, SamplingConfig(p_lock_none=1.0)) == set()
    assert choose_locks(names, rng, SamplingConfig(p_lock_none=0.0, p_lock_all=1.0)) == set(names)
    cfg = SamplingConfig(p_lock_none=0.0, p_lock_all=0.0, p_lock_each=0.5)
    counts = {n: 0 for n in names}
    for _ in range(2000):
        for n in choose_locks(names, rng, cfg):
            counts[n] += 1
    assert all(900 < c < 1100 for c in counts.values())


def test_all_locked_canvas_flattens_to_the_target_exactly(scenes):
    scene = multi(scenes)
    cfg = SamplingConfig(p_lock_none=0.0, p_lock_all=1.0)
    sample = sample_training_canvas(scene, np.random.default_rng(1), cfg, target_index=0)
    assert sorted(sample.locked) == sorted(scene.images[0].order) and not sample.unlocked
    assert all(layer.locked for layer in sample.canvas.layers)
    flat = np.asarray(sample.canvas.flatten().convert("RGB"))
    assert np.array_equal(flat, np.asarray(sample.target))


def test_unlocked_subjects_come_from_another_picture_over_the_targets_subject(scenes):
    scene = multi(scenes)
    cfg = SamplingConfig(p_lock_none=1.0, p_drop_background=0.0, shift_jitter=0.0, scale_jitter=0.0,
                         brightness=0, contrast=0, saturation=0, hue_degrees=0)
    sample = sample_training_canvas(scene, np.random.default_rng(2), cfg, target_index=0)
    target = scene.images[0]
    assert not sample.locked and sorted(sample.unlocked) == sorted(target.order)
    for layer in sample.canvas.layers:
        assert not layer.locked
        assert sample.sources[layer.name] != 0  # taken from a different picture of the scene
        if layer.kind == "background":
            continue
        # Placed with the target subject's centre and height (no jitter here), to within a pixel.
        t_box = alpha_box(target.layer(layer.name))
        rendered = sample.canvas.render_layer(layer)
        r_box = alpha_box(rendered)
        assert abs((r_box[1] + r_box[3]) - (t_box[1] + t_box[3])) / 2 <= 1.5
        assert abs((r_box[0] + r_box[2]) - (t_box[0] + t_box[2])) / 2 <= 1.5
        assert abs((r_box[3] - r_box[1]) - (t_box[3] - t_box[1])) <= 2
        # and its pixels are the source picture's, not the target's (another pose and lighting).
        src_layer = scene.images[sample.sources[layer.name]].layer(layer.name)
        cut = src_layer.crop(alpha_box(src_layer))
        assert np.array_equal(np.asarray(layer.image.rgba), np.asarray(cut))


def test_aligned_unlocked_subjects_are_the_targets_own_in_place(scenes):
    scene = multi(scenes)
    still = {"brightness": 0, "contrast": 0, "saturation": 0, "hue_degrees": 0}
    cfg = SamplingConfig(p_lock_none=1.0, p_drop_background=0.0, p_aligned_unlocked=1.0, **still)
    sample = sample_training_canvas(scene, np.random.default_rng(2), cfg, target_index=0)
    target = scene.images[0]
    subjects = [layer for layer in sample.canvas.layers if layer.kind == "subject"]
    assert subjects and not sample.locked
    for layer in subjects:
        assert not layer.locked and sample.sources[layer.name] == 0
        # With no colour jitter the rendered layer is the target's layer, pixel for pixel.
        assert np.array_equal(np.asarray(sample.canvas.render_layer(layer)), np.asarray(target.layer(layer.name)))
    # The background is never the target's own while unlocked: it still comes from another picture.
    assert sample.sources["background"] != 0
    # So, over the target's own background, the canvas flattens to the target exactly (order kept too).
    assert sample.canvas.layers[0].name == "background"
    sample.canvas.layers[0] = Layer(name="background", image=LayerImage.from_pil(target.layer("background")),
                                    kind="background")
    assert np.array_equal(np.asarray(sample.canvas.flatten().convert("RGB")), np.asarray(sample.target))
    # Colour jitter still applies (alpha untouched): the model must relight what it copies.
    jittered = sample_training_canvas(scene, np.random.default_rng(3), replace(cfg, brightness=0.3),
                                      target_index=0)
    layer = jittered.canvas.layers[1]
    got, want = np.asarray(jittered.canvas.render_layer(layer)), np.asarray(target.layer(layer.name))
    assert np.array_equal(got[..., 3], want[..., 3]) and not np.array_equal(got[..., :3], want[..., :3])


def test_aligned_unlocked_share_follows_its_chance(scenes):
    scene = multi(scenes)
    counts = [0, 0]
    cfg = SamplingConfig(p_lock_none=1.0, p_aligned_unlocked=0.3)
    for seed in range(300):
        sample = sample_training_canvas(scene, np.random.default_rng(seed), cfg)
        for name in sample.unlocked:
            if name != "background":
                counts[sample.sources[name] == sample.image] += 1
    share = counts[1] / sum(counts)
    assert 0.24 < share < 0.36, share


def test_subject_in_one_picture_only_stays_locked(scenes, tmp_path):
    scene = multi(scenes)
    only = scene.images[0].subjects[0]
    # Remove `only` from every other picture of the scene.
    copy = tmp_path / scene.id
    shutil.copytree(scene.root, copy)
    doc = json.loads((copy / "scene.json").read_text())
    for entry in doc["images"][1:]:
        entry["layers"].pop(only, None)
        if "order" in entry:
            entry["order"] = [n for n in entry["order"] if n != only]
    (copy / "scene.json").write_text(json.dumps(doc))
    sample = sample_training_canvas(load_scene(copy), np.random.default_rng(0), SamplingConfig(p_lock_none=1.0),
                                    target_index=0)
    assert only in sample.locked


def test_unlocked_background_is_dropped_or_taken_from_another_picture(scenes):
    scene = multi(scenes)
    dropped = sample_training_canvas(scene, np.random.default_rng(0),
                                     SamplingConfig(p_lock_none=1.0, p_drop_background=1.0), target_index=0)
    assert dropped.dropped == ["background"] and all(layer.kind == "subject" for layer in dropped.canvas.layers)
    kept = sample_training_canvas(scene, np.random.default_rng(0),
                                  SamplingConfig(p_lock_none=1.0, p_drop_background=0.0), target_index=0)
    bg = kept.canvas.layers[0]
    assert bg.kind == "background" and not bg.locked and kept.sources["background"] != 0


def test_colour_jitter_keeps_alpha_and_zero_jitter_is_identity():
    rng = np.random.default_rng(0)
    from PIL import Image

    px = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    im = Image.fromarray(px, "RGBA")
    same = jitter_colours(im, rng, SamplingConfig(brightness=0, contrast=0, saturation=0, hue_degrees=0))
    assert np.abs(np.asarray(same).astype(int) - px).max() <= 1
    moved = jitter_colours(im, rng, SamplingConfig(brightness=0.3, contrast=0.3, saturation=0.3, hue_degrees=20))
    assert np.array_equal(np.asarray(moved)[..., 3], px[..., 3])
    assert np.abs(np.asarray(moved)[..., :3].astype(int) - px[..., :3]).mean() > 3


# ----------------------------------------------------------------------------------------------------------
# Batches, loss and optimisation on the tiny model


@pytest.fixture(scope="module")
def encoded(scenes):
    from layercomposer.pipeline import LayerComposerPipeline

    pipe = LayerComposerPipeline.from_pretrained("tiny-random")
    enc = SampleEncoder(pipe._encode_pixels)
    samples = [enc.encode(sample_training_canvas(scenes.scenes[i % len(scenes)], np.random.default_rng(i)))
               for i in range(4)]
    return pipe, samples


def test_padded_batch_gives_the_same_loss_as_samples_one_at_a_time(encoded):
    from layercomposer.models.attention import use_padded_batch_attention

    pipe, samples = encoded
    use_padded_batch_attention(pipe.transformer)
    counts = [s.cond.shape[0] for s in samples]
    assert len(set(counts)) > 1  # the batch really mixes token counts
    batch = collate(samples)
    assert batch.key_mask is not None and batch.cond.shape[1] == max(counts)
    gen = torch.Generator().manual_seed(0)
    t = torch.rand(4, generator=gen)
    noise = torch.randn(batch.x0.shape, generator=gen)
    text = pipe.text_encoder.encode(batch.prompts)
    with torch.no_grad():
        g = guidance_vector(pipe.transformer, 4)
        _, together = flow_loss(pipe.transformer, batch, text, t, noise, g)
        alone = []
        for i, s in enumerate(samples):
            one = collate([s])
            assert one.key_mask is None
            t1 = pipe.text_encoder.encode([s.prompt])
            alone.append(flow_loss(pipe.transformer, one, t1, t[i:i + 1], noise[i:i + 1], g[:1])[1])
    assert torch.allclose(together, torch.cat(alone), rtol=1e-4, atol=1e-6)
    # Per-sample positions matter: giving every sample the first sample's ids changes the loss.
    batch.ids[:] = batch.ids[0]
    with torch.no_grad():
        _, shared = flow_loss(pipe.transformer, batch, text, t, noise, g)
    assert not torch.allclose(together, shared, rtol=1e-4, atol=1e-6)
    use_stock_attention(pipe.transformer)


def test_subject_mask_is_the_targets_subjects_whatever_the_canvas_holds(scenes):
    scene = multi(scenes)
    target = scene.images[0]
    for cfg in (SamplingConfig(p_lock_none=1.0), SamplingConfig(p_lock_none=0.0, p_lock_all=1.0)):
        sample = sample_training_canvas(scene, np.random.default_rng(2), cfg, target_index=0)
        want = np.zeros(sample.target.size[::-1], np.uint8)
        for name in target.subjects:
            want = np.maximum(want, np.asarray(target.layer(name))[..., 3])
        assert sample.subjects is not None and np.array_equal(sample.subjects, want)
        assert 0 < (want > 0).mean() < 1


def test_subject_cells_by_hand():
    alpha = np.zeros((40, 50), np.uint8)  # a 2 x 3 grid of 16 px cells (the rest is cropped away)
    alpha[0, 0] = 128         # one pixel at the threshold: cell (0, 0)
    alpha[20, 20] = 127       # below it: not a subject cell
    alpha[31, 47] = 255       # the last pixel of cell (1, 2)
    alpha[35:, :] = 255       # below the grid: cropped
    alpha[:, 48:] = 255       # right of the grid: cropped
    cells = subject_cells(alpha, (2, 3))
    assert cells.dtype == torch.bool
    assert cells.tolist() == [True, False, False, False, False, True]


def test_subject_weighted_loss_by_hand(encoded):
    pipe, samples = encoded
    batch = collate(samples)
    assert batch.subject is not None and batch.subject.shape == batch.x0.shape[:2]
    assert batch.subject.any() and not batch.subject.all()
    assert batch.token_weights(1.0) is None
    w = batch.token_weights(4.0)
    assert set(w.unique().tolist()) == {1.0, 4.0} and torch.equal(w == 4.0, batch.subject)
    gen = torch.Generator().manual_seed(0)
    t, noise = torch.rand(4, generator=gen), torch.randn(batch.x0.shape, generator=gen)
    text = pipe.text_encoder.encode(batch.prompts)
    g = guidance_vector(pipe.transformer, 4)
    from layercomposer.flow import add_noise, velocity_target
    from layercomposer.models.attention import use_padded_batch_attention
    from layercomposer.training.batch import predict_velocity

    use_padded_batch_attention(pipe.transformer)
    with torch.no_grad():
        pred = predict_velocity(pipe.transformer, add_noise(batch.x0, noise, t), batch, text, t, g)
        err = ((pred - velocity_target(batch.x0, noise)) ** 2).mean(dim=2)  # (B, N)
        _, plain = flow_loss(pipe.transformer, batch, text, t, noise, g)
        _, ones = flow_loss(pipe.transformer, batch, text, t, noise, g, torch.ones_like(w))
        _, weighted = flow_loss(pipe.transformer, batch, text, t, noise, g, w)
    use_stock_attention(pipe.transformer)
    assert torch.allclose(plain, err.mean(dim=1), rtol=1e-5) and torch.allclose(ones, plain, rtol=1e-6)
    for i in range(4):
        m = batch.subject[i]
        k = int(m.sum())
        by_hand = (4 * err[i][m].sum() + err[i][~m].sum()) / (4 * k + (len(m) - k))
        assert torch.allclose(weighted[i], by_hand, rtol=1e-5)
    # Samples without subject cells (pool files from before) cannot be weighted, only averaged.
    old = collate([replace(s, subject=None) for s in samples])
    assert old.subject is None and old.token_weights(1.0) is None
    with pytest.raises(ValueError, match="subject cells"):
        old.token_weights(4.0)


def test_a_few_steps_lower_the_loss(encoded):
    from layercomposer.models.attention import use_padded_batch_attention
    from layercomposer.models.registry import TINY_RANDOM, build_random

    pipe, samples = encoded
    transformer, _, _ = build_random(TINY_RANDOM, seed=1)
    use_padded_batch_attention(transformer)
    transformer.requires_grad_(True).train()
    batch = collate(samples)
    gen = torch.Generator().manual_seed(0)
    t, noise = torch.rand(4, generator=gen), torch.randn(batch.x0.shape, generator=gen)
    text = pipe.text_encoder.encode(batch.prompts)
    opt = torch.optim.AdamW(transformer.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss, _ = flow_loss(transformer, batch, text, t, noise, guidance_vector(transformer, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ----------------------------------------------------------------------------------------------------------
# The trainer end to end: outputs, exact resume, LoRA files


def _cfg(scenes_dir, out, **kw):
    from layercomposer.training.train import TrainConfig

    base = dict(data=str(scenes_dir), output=str(out), model="tiny-random", steps=6, batch_size=2, lr=1e-3,
                warmup=2, save_every=3, log_every=1, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_writes_metrics_curve_checkpoints_and_model(scenes_dir, tmp_path):
    from layercomposer.pipeline import LayerComposerPipeline
    from layercomposer.training.train import train

    cfg = _cfg(scenes_dir, tmp_path / "run", eval_data=str(scenes_dir), eval_every=3, eval_samples=2,
               train_text_encoder=True)
    train(cfg, progress=False)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in records) and "eval_loss" in records[2]
    assert (run / "loss.png").stat().st_size > 1000
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-0000003", "step-0000006"]
    pipe = LayerComposerPipeline.from_pretrained(run / "model")
    from conftest import layer, solid
    from layercomposer.canvas import Canvas

    image = pipe(Canvas(64, 64, [layer("a", solid(20, 20))]), num_inference_steps=2)
    assert image.size == (64, 64)

    # Any checkpoint exports as a model folder; the last one equals the model the run exported itself.
    from safetensors.torch import load_file

    from layercomposer.cli import main

    assert main(["train-export", str(run), "-o", str(tmp_path / "at6"), "--dtype", cfg.export_dtype]) == 0
    assert main(["train-export", str(run), "--step", "3", "-o", str(tmp_path / "at3"), "--guidance", "2.5"]) == 0
    weights = "transformer/diffusion_pytorch_model.safetensors"
    final, at6, at3 = (load_file(d / weights) for d in (run / "model", tmp_path / "at6", tmp_path / "at3"))
    assert all(torch.equal(final[k], at6[k]) for k in final)
    assert any(not torch.equal(final[k].float(), at3[k].float()) for k in final)
    assert next(iter(at3.values())).dtype == torch.float16
    te = "text_encoder/model.safetensors"
    assert all(torch.equal(a, b) for a, b in zip(load_file(run / "model" / te).values(),
                                                   load_file(tmp_path / "at6" / te).values(), strict=True))
    at3_pipe = LayerComposerPipeline.from_pretrained(tmp_path / "at3")
    assert at3_pipe.name == "at3" and at3_pipe.guidance_scale == 2.5
    # Both exports record the canvas size the run trained at (the scenes are 128 px), for the editor's warning.
    assert pipe.trained_sizes == at3_pipe.trained_sizes == [(128, 128)]
    assert main(["train-export", str(run), "--step", "4", "-o", str(tmp_path / "at4")]) == 2
    assert not (tmp_path / "at4").exists()
    # --vae swaps in another VAE (a fine-tuned decoder): its weights, not the run's.
    other = LayerComposerPipeline.from_pretrained("tiny-random")
    with torch.no_grad():
        for p in other.vae.decoder.parameters():
            p.add_(0.01)
    other.vae.save_pretrained(tmp_path / "other-vae")
    assert main(["train-export", str(run), "--vae", str(tmp_path / "other-vae"), "-o", str(tmp_path / "vae6"),
                 "--dtype", "float32"]) == 0
    swapped = load_file(tmp_path / "vae6" / "vae" / "diffusion_pytorch_model.safetensors")
    mine = other.vae.state_dict()
    assert all(torch.equal(swapped[k], mine[k]) for k in swapped)
    assert main(["train-export", str(run), "--vae", str(tmp_path), "-o", str(tmp_path / "vae7")]) == 2


def test_resume_gives_the_same_next_loss(scenes_dir, tmp_path):
    from layercomposer.training.metrics import read_metrics
    from layercomposer.training.train import train

    train(_cfg(scenes_dir, tmp_path / "straight", steps=5, save_every=5), progress=False)
    train(_cfg(scenes_dir, tmp_path / "split", steps=3, save_every=3), progress=False)
    train(_cfg(scenes_dir, tmp_path / "split", steps=5, save_every=5), progress=False)  # resumes at 3
    a = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    b = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)


def test_lr_factor_warm_up_then_constant_linear_or_cosine():
    from layercomposer.training.config import lr_factor

    # 2 warm-up steps (0.5, 1.0), then 4 steps decaying over steps - warmup = 4.
    assert [lr_factor(s, warmup=2, steps=6) for s in range(6)] == [0.5, 1, 1, 1, 1, 1]
    assert [lr_factor(s, warmup=2, steps=6, schedule="linear") for s in range(6)] == [0.5, 1, 1, 0.75, 0.5, 0.25]
    cosine = [lr_factor(s, warmup=2, steps=6, schedule="cosine") for s in range(6)]
    assert cosine == pytest.approx([0.5, 1, 1, (1 + 2 ** -0.5) / 2, 0.5, (1 - 2 ** -0.5) / 2])
    assert lr_factor(0, warmup=0, steps=4, schedule="linear") == 1.0


def test_resume_of_a_decaying_schedule_gives_the_same_losses_and_rates(scenes_dir, tmp_path):
    from layercomposer.cli import main
    from layercomposer.training.metrics import read_metrics
    from layercomposer.training.train import train

    cfg = _cfg(scenes_dir, tmp_path / "straight", steps=5, save_every=3, warmup=1, lr_schedule="linear")
    train(cfg, progress=False)
    # A run killed after step 4: its last checkpoint is step 3, the log runs on to 4.
    shutil.copytree(tmp_path / "straight", tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "step-0000005")
    shutil.rmtree(tmp_path / "killed" / "model")
    train(replace(cfg, output=str(tmp_path / "killed")), progress=False)
    a = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    b = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    # The rate after each step: warm-up of 1 step, then 1 - (step - 1) / 4 for the next.
    assert [r["lr"] / cfg.lr for r in b] == pytest.approx([1, 0.75, 0.5, 0.25, 0.0])
    with pytest.raises(SystemExit):
        main(["train", "--data", "x", "--output", "y", "--lr-schedule", "step"])
    assert main(["train", "--data", "x", "--output", "y", "--warmup", "-1"]) == 2


def test_resume_with_a_sample_pool_and_ema_gives_the_same_losses_and_weights(scenes_dir, tmp_path):
    from safetensors.torch import load_file

    from layercomposer.training.metrics import read_metrics
    from layercomposer.training.train import train

    kw = dict(sample_pool=5, ema_decay=0.9, batch_size=3)
    straight = train(_cfg(scenes_dir, tmp_path / "straight", steps=5, save_every=5, **kw), progress=False)
    train(_cfg(scenes_dir, tmp_path / "split", steps=3, save_every=3, **kw), progress=False)
    split = train(_cfg(scenes_dir, tmp_path / "split", steps=5, save_every=5, **kw), progress=False)
    a = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    b = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    # 15 draws from a pool of 5: samples come back, encoded once (the resumed run re-encodes what it meets).
    assert len(straight._pool) <= 5 and split.ema.updates == straight.ema.updates == 5
    for key, value in straight.ema.shadow.items():
        torch.testing.assert_close(split.ema.shadow[key], value, rtol=1e-4, atol=1e-6)
    # The exported model holds the averaged weights, not the last iterate.
    ema = load_file(tmp_path / "straight" / "checkpoints" / "step-0000005" / "ema.safetensors")
    exported = load_file(tmp_path / "straight" / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
    raw = straight.accelerator.unwrap_model(straight.transformer).state_dict()
    name = "proj_out.weight"
    torch.testing.assert_close(exported[name], ema[f"transformer.{name}"].to(exported[name].dtype))
    assert not torch.allclose(raw[name].float(), ema[f"transformer.{name}"], atol=1e-6)


def test_pool_draws_are_seeded_by_sample_not_by_step(scenes_dir, tmp_path):
    from layercomposer.training.train import Trainer

    trainer = Trainer(_cfg(scenes_dir, tmp_path / "pool", sample_pool=2, batch_size=4, prompt_dropout=0.0))
    first = trainer.make_batch(0, 0)
    assert len(trainer._pool) == 2  # four draws, two distinct samples
    again = Trainer(_cfg(scenes_dir, tmp_path / "pool2", sample_pool=2, batch_size=4, prompt_dropout=0.0))
    fresh_order = again.make_batch(7, 0)  # another step: other draws, same two samples
    by_prompt = {p: first.x0[i] for i, p in enumerate(first.prompts)}
    for i, p in enumerate(fresh_order.prompts):
        assert torch.equal(fresh_order.x0[i], by_prompt[p])
    assert torch.equal(trainer._pool[0].cond, again._pool[0].cond)


def test_pool_cache_is_read_back_by_a_later_run_and_keyed_by_what_the_latents_depend_on(scenes_dir, tmp_path):
    from layercomposer.training.metrics import read_metrics
    from layercomposer.training.train import train

    cache = tmp_path / "cache"
    kw = dict(sample_pool=4, batch_size=3, steps=3, save_every=3, pool_cache=str(cache))
    first = train(_cfg(scenes_dir, tmp_path / "a", **kw), progress=False)
    assert first.pool_counts == {"encoded": len(first._pool), "loaded": 0}
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    assert files == [f"{u:07d}.safetensors" for u in sorted(first._pool)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["fingerprint.json", *files])  # nothing half-written
    # Another run over the same data, seed, mode and VAE (another output folder, a larger pool): what is on
    # disk is read, not encoded, and it is bit for bit what the first run trained on.
    second = train(_cfg(scenes_dir, tmp_path / "b", **{**kw, "sample_pool": 6}), progress=False)
    assert second.pool_counts["loaded"] == len(set(second._pool) & set(first._pool)) > 0
    assert second.pool_counts["encoded"] == len(set(second._pool) - set(first._pool))
    for u in set(first._pool) & set(second._pool):
        for name in ("x0", "cond", "cond_ids", "subject"):
            assert torch.equal(getattr(first._pool[u], name), getattr(second._pool[u], name))
        assert (first._pool[u].grid, first._pool[u].prompt) == (second._pool[u].grid, second._pool[u].prompt)
    rows = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert rows[-1]["pool_loaded"] == second.pool_counts["loaded"]
    # A run with the same pool size and cache gives the losses of the first exactly (every draw read back).
    third = train(_cfg(scenes_dir, tmp_path / "c", **kw), progress=False)
    assert third.pool_counts == {"encoded": 0, "loaded": len(first._pool)}
    assert [r["loss"] for r in read_metrics(tmp_path / "c" / "metrics.jsonl")] == \
        [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    # Another seed (or mode, data, VAE) is another fingerprint: its own folder, nothing shared.
    other = train(_cfg(scenes_dir, tmp_path / "d", **{**kw, "seed": 6}), progress=False)
    assert other.pool_counts["loaded"] == 0 and len([p for p in cache.iterdir() if p.is_dir()]) == 2
    # A damaged file is encoded again and rewritten.
    u = sorted(first._pool)[0]
    store = first.pool_cache
    assert store is not None and store.dir == folder
    store.path(u).write_bytes(b"not a safetensors file")
    assert store.load(u) is None
    fourth = train(_cfg(scenes_dir, tmp_path / "e", **kw), progress=False)
    assert fourth.pool_counts == {"encoded": 1, "loaded": len(first._pool) - 1}
    assert store.load(u) is not None


def test_merged_locked_layers_train_export_and_are_inherited(scenes_dir, tmp_path):
    from layercomposer.cli import main
    from layercomposer.pipeline import LayerComposerPipeline
    from layercomposer.training.pool import pool_fingerprint
    from layercomposer.training.train import train

    trainer = train(_cfg(scenes_dir, tmp_path / "m", steps=2, save_every=2, merge_locked=True), progress=False)
    assert trainer.merge_locked and trainer.encoder.builder.merge_locked
    pipe = LayerComposerPipeline.from_pretrained(tmp_path / "m" / "model")
    assert pipe.merge_locked
    assert json.loads((tmp_path / "m" / "model" / "model_index.json").read_text())["merge_locked_layers"] is True
    assert main(["train-export", str(tmp_path / "m"), "-o", str(tmp_path / "m2")]) == 0
    assert LayerComposerPipeline.from_pretrained(tmp_path / "m2").merge_locked
    # A run continuing that model without the flag trains it as it was trained; --no-merge-locked switches off.
    kw = dict(model=str(tmp_path / "m" / "model"), steps=1, save_every=1)
    assert train(_cfg(scenes_dir, tmp_path / "n", **kw), progress=False).merge_locked
    assert not train(_cfg(scenes_dir, tmp_path / "o", merge_locked=False, **kw), progress=False).merge_locked
    assert not LayerComposerPipeline.from_pretrained(tmp_path / "o" / "model").merge_locked
    # The pool cache keeps merged and separate canvases apart; old fingerprints are unchanged.
    args = dict(seed=0, mode="layered", resolution=None, sampling=SamplingConfig())
    plain = pool_fingerprint(trainer.scenes, pipe.vae, **args)
    assert "merge_locked" not in plain
    assert pool_fingerprint(trainer.scenes, pipe.vae, rules=TokenRules(merge_locked=True), **args) != plain
    assert main(["train", "--data", "x", "--output", "y", "--mode", "collage", "--merge-locked"]) == 2


def test_aligned_unlocked_option_trains_on_its_own_pool_and_holds_out_the_papers_task(scenes_dir, tmp_path):
    from layercomposer.cli import build_parser, main
    from layercomposer.training.config import train_config_from_args
    from layercomposer.training.pool import pool_fingerprint
    from layercomposer.training.train import Trainer

    args = build_parser().parse_args(["train", "--data", "d", "--output", "o", "--aligned-unlocked", "0.4"])
    assert train_config_from_args(args).sampling == SamplingConfig(p_aligned_unlocked=0.4)
    assert main(["train", "--data", "d", "--output", "o", "--aligned-unlocked", "1.5"]) == 2
    cfg = _cfg(scenes_dir, tmp_path / "a", eval_data=str(scenes_dir), eval_samples=12, sample_pool=12,
               sampling=SamplingConfig(p_lock_none=1.0, p_aligned_unlocked=1.0))
    trainer = Trainer(cfg)
    pool = [trainer.pool_sample(u) for u in range(12)]
    aligned = [s for s in pool if any(s.sources[n] == s.image for n in s.unlocked if n != "background")]
    assert aligned, "with chance 1 every unlocked subject is the target's own"
    assert all(s.sources[n] == s.image for s in pool for n in s.unlocked if n != "background")
    held = trainer.held_out_samples()
    assert any(s.unlocked for s in held)
    assert all(s.sources[n] != s.image for s in held for n in s.unlocked)
    # Its pool cache has its own fingerprint; runs without the option keep theirs.
    fp = dict(seed=0, mode="layered", resolution=None)
    plain = pool_fingerprint(trainer.scenes, trainer.pipe.vae, sampling=SamplingConfig(), **fp)
    assert sorted(plain["sampling"]) == sorted(
        ["p_lock_none", "p_lock_all", "p_lock_each", "p_drop_background", "scale_jitter", "shift_jitter",
         "rotation_jitter", "brightness", "contrast", "saturation", "hue_degrees"])
    on = pool_fingerprint(trainer.scenes, trainer.pipe.vae, sampling=SamplingConfig(p_aligned_unlocked=0.3), **fp)
    assert on["sampling"]["p_aligned_unlocked"] == 0.3


def test_subject_loss_weight_weights_training_not_the_held_out_loss(scenes_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from layercomposer.cli import build_parser, main
    from layercomposer.training.config import train_config_from_args
    from layercomposer.training.train import Trainer, train

    args = build_parser().parse_args(["train", "--data", "d", "--output", "o", "--subject-loss-weight", "3"])
    assert train_config_from_args(args).subject_loss_weight == 3.0
    for bad in ("0", "-1", "nan", "inf"):
        assert main(["train", "--data", "d", "--output", "o", "--subject-loss-weight", bad]) == 2
    kw = dict(eval_data=str(scenes_dir), eval_samples=4, sample_pool=4, batch_size=2)
    plain, heavy = Trainer(_cfg(scenes_dir, tmp_path / "p", **kw)), \
        Trainer(_cfg(scenes_dir, tmp_path / "h", subject_loss_weight=4.0, **kw))
    batch = heavy.make_batch(0, 0)
    assert batch.subject is not None and batch.subject.any()
    with torch.no_grad():
        assert heavy.loss_of(batch, 0, 0, weighted=False).item() == pytest.approx(plain.loss_of(batch, 0, 0).item())
        assert heavy.loss_of(batch, 0, 0).item() != pytest.approx(plain.loss_of(batch, 0, 0).item(), rel=1e-3)
    assert heavy.eval_loss() == pytest.approx(plain.eval_loss())
    # A pool file written without subject cells is encoded again by a weighted run, and not by a plain one.
    cache = tmp_path / "cache"
    first = train(_cfg(scenes_dir, tmp_path / "a", sample_pool=3, steps=2, save_every=2, pool_cache=str(cache)),
                  progress=False)
    u = sorted(first._pool)[0]
    path = first.pool_cache.path(u)
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    del tensors["subject"]
    save_file(tensors, str(path), metadata=meta)
    assert first.pool_cache.load(u).subject is None
    again = train(_cfg(scenes_dir, tmp_path / "b", sample_pool=3, steps=2, save_every=2, pool_cache=str(cache)),
                  progress=False)
    assert again.pool_counts == {"encoded": 0, "loaded": len(first._pool)}
    weighted = train(_cfg(scenes_dir, tmp_path / "c", sample_pool=3, steps=2, save_every=2, pool_cache=str(cache),
                          subject_loss_weight=4.0), progress=False)
    assert weighted.pool_counts == {"encoded": 1, "loaded": len(first._pool) - 1}
    assert first.pool_cache.load(u).subject is not None


def test_cover_pruning_trains_exports_and_is_inherited(scenes_dir, tmp_path):
    from layercomposer.cli import main
    from layercomposer.pipeline import LayerComposerPipeline
    from layercomposer.training.pool import pool_fingerprint
    from layercomposer.training.train import train

    trainer = train(_cfg(scenes_dir, tmp_path / "c", steps=1, save_every=1, prune="cover"), progress=False)
    assert trainer.encoder.builder.prune == "cover" and trainer.rules == TokenRules(False, "cover")
    assert LayerComposerPipeline.from_pretrained(tmp_path / "c" / "model").rules.prune == "cover"
    assert main(["train-export", str(tmp_path / "c"), "-o", str(tmp_path / "c2")]) == 0
    assert LayerComposerPipeline.from_pretrained(tmp_path / "c2").rules.prune == "cover"
    kw = dict(model=str(tmp_path / "c" / "model"), steps=1, save_every=1)
    assert train(_cfg(scenes_dir, tmp_path / "d", **kw), progress=False).rules.prune == "cover"
    assert train(_cfg(scenes_dir, tmp_path / "e", prune="centre", **kw), progress=False).rules.prune == "centre"
    args = dict(seed=0, mode="layered", resolution=None, sampling=SamplingConfig())
    plain = pool_fingerprint(trainer.scenes, trainer.pipe.vae, **args)
    assert "prune" not in plain and plain == pool_fingerprint(trainer.scenes, trainer.pipe.vae,
                                                               rules=TokenRules(), **args)
    assert pool_fingerprint(trainer.scenes, trainer.pipe.vae, rules=TokenRules(prune="cover"), **args)["prune"] \
        == "cover"
    assert main(["train", "--data", "x", "--output", "y", "--mode", "collage", "--prune", "cover"]) == 2


def test_pool_cache_needs_a_pool():
    from layercomposer.cli import main

    assert main(["train", "--data", "x", "--output", "y", "--pool-cache", "z"]) == 2


def test_lora_save_and_load_round_trip(scenes_dir, tmp_path):
    from diffusers import FluxKontextPipeline

    from layercomposer.models.registry import TINY_RANDOM, build_random
    from layercomposer.training.train import Trainer, train

    cfg = _cfg(scenes_dir, tmp_path / "lora", steps=2, lora_rank=4, lr=5e-3, save_every=2)
    trainer: Trainer = train(cfg, progress=False)
    files = list((tmp_path / "lora" / "lora").glob("*.safetensors"))
    assert [f.name for f in files] == ["pytorch_lora_weights.safetensors"]
    state = FluxKontextPipeline.lora_state_dict(str(tmp_path / "lora" / "lora"))
    state = state[0] if isinstance(state, tuple) else state
    assert all(k.startswith("transformer.") for k in state) and any("lora_A" in k for k in state)
    # A fresh base plus the file computes what the trained model computes, and differs from the bare base.
    trained = trainer.accelerator.unwrap_model(trainer.transformer)
    use_stock_attention(trained)
    fresh, _, _ = build_random(TINY_RANDOM, seed=cfg.seed)
    bare, _, _ = build_random(TINY_RANDOM, seed=cfg.seed)
    fresh.load_lora_adapter(str(tmp_path / "lora" / "lora" / "pytorch_lora_weights.safetensors"),
                            prefix="transformer")
    gen = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 20, 16, generator=gen),
                  encoder_hidden_states=torch.randn(1, 5, 32, generator=gen),
                  pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(20, 3), txt_ids=torch.zeros(5, 3), guidance=torch.tensor([1.0]),
                  return_dict=False)
    with torch.no_grad():
        out_trained, out_fresh, out_bare = (m(**inputs)[0] for m in (trained, fresh, bare))
    assert torch.allclose(out_trained, out_fresh, atol=1e-5)
    assert not torch.allclose(out_fresh, out_bare, atol=1e-4)


def test_accelerate_launch_with_two_processes(scenes_dir, tmp_path):
    """The real launcher, two CPU processes (gloo DDP): the run completes, checkpoints and exports once, and
    the learning rate follows optimizer steps as with one process (accelerate steps a scheduler per process).
    The config file says how (`--cpu` alone would start one process)."""
    import os
    import subprocess
    import sys

    from layercomposer.training.train import train

    out = tmp_path / "ddp"
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu_2proc.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "layercomposer.training.train", "--data", str(scenes_dir), "--output", str(out),
           "--model", "tiny-random", "--steps", "3", "--batch-size", "1", "--grad-accum", "2",
           "--save-every", "2", "--log-every", "1", "--warmup", "4", "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # written once, by the main process
    # warm-up over 4 optimizer steps: 2/4, 3/4, 4/4 of the rate after steps 1-3 (not 3/4, 1, 1: twice as fast)
    assert [r["lr"] for r in records] == pytest.approx([5e-4, 7.5e-4, 1e-3])
    assert (out / "model" / "model_index.json").is_file()
    state = json.loads((out / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state == {"step": 3, "processes": 2}
    # One process cannot resume it: its samples and learning rate were counted over two.
    with pytest.raises(LayerComposerError, match="written by 2 processes, this run has 1"):
        train(_cfg(scenes_dir, out, steps=4), progress=False)


def test_kontext_preset_and_resolution(scenes_dir, tmp_path):
    import argparse

    from layercomposer.training.config import KONTEXT_PRESET, add_train_arguments, train_config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    cfg = train_config_from_args(parser.parse_args(["--data", "d", "--output", "o", "--base", "/models/kontext"]))
    assert cfg.model == "/models/kontext" and cfg.lora_rank == 512 and cfg.lr == 1e-4
    assert cfg.resolution == 512 and cfg.mixed_precision == "bf16" and cfg.gradient_checkpointing
    explicit = train_config_from_args(parser.parse_args(["--data", "d", "--output", "o", "--base", "/m",
                                                         "--lora-rank", "64"]))
    assert explicit.lora_rank == 64 and explicit.lr == KONTEXT_PRESET["lr"]
    # --resolution: pictures and layers of a 128 px scene become 64 px squares on the same grid.
    scenes = SceneSet.load(scenes_dir, size=64)
    sample = sample_training_canvas(scenes.scenes[0], np.random.default_rng(0),
                                    SamplingConfig(p_lock_none=0.0, p_lock_all=1.0), target_index=0)
    assert sample.target.size == (64, 64) and (sample.canvas.width, sample.canvas.height) == (64, 64)
    flat = np.asarray(sample.canvas.flatten().convert("RGB"), int)
    assert np.abs(flat - np.asarray(sample.target, int)).mean() < 2.0  # resized alike: still recomposes


def test_vae_stage_and_decoder_only_fine_tuning(scenes_dir, tmp_path):
    from diffusers import AutoencoderKL

    from layercomposer.training.config import VaeTrainConfig
    from layercomposer.training.vae import train_vae

    out = train_vae(VaeTrainConfig(data=str(scenes_dir), output=str(tmp_path / "vae"), model="tiny-random",
                                   steps=3, batch_size=2, crop=64, log_every=1, save_every=2), progress=False)
    first = AutoencoderKL.from_pretrained(out)
    # The latent normalisation is measured, not left at the config's value.
    assert first.config.scaling_factor != 0.3611 and first.config.shift_factor != 0.1159
    assert (tmp_path / "vae" / "loss.png").is_file()
    tuned = train_vae(VaeTrainConfig(data=str(scenes_dir), output=str(tmp_path / "dec"), init=str(out),
                                     decoder_only=True, steps=3, batch_size=2, crop=64, lr=1e-2, log_every=1),
                      progress=False)
    second = AutoencoderKL.from_pretrained(tuned)
    enc_a, enc_b = first.encoder.state_dict(), second.encoder.state_dict()
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)  # the latent space is kept
    dec_a, dec_b = first.decoder.state_dict(), second.decoder.state_dict()
    assert any(not torch.equal(dec_a[k], dec_b[k]) for k in dec_a)
    assert second.config.scaling_factor == first.config.scaling_factor


def test_vae_anchored_encoder_training(scenes_dir, tmp_path):
    from diffusers import AutoencoderKL

    from layercomposer.training.config import VaeTrainConfig
    from layercomposer.training.vae import train_vae

    out = train_vae(VaeTrainConfig(data=str(scenes_dir), output=str(tmp_path / "vae"), model="tiny-random",
                                   steps=2, batch_size=2, crop=64, log_every=1), progress=False)
    first = AutoencoderKL.from_pretrained(out)
    tuned = train_vae(VaeTrainConfig(data=str(scenes_dir), output=str(tmp_path / "anchored"), init=str(out),
                                     anchor_weight=0.5, steps=3, batch_size=2, crop=64, lr=1e-2, log_every=1),
                      progress=False)
    second = AutoencoderKL.from_pretrained(tuned)
    enc_a, enc_b = first.encoder.state_dict(), second.encoder.state_dict()
    assert any(not torch.equal(enc_a[k], enc_b[k]) for k in enc_a)  # the encoder trains ...
    # ... in the --init latent space: its normalisation is kept, not re-measured.
    assert (second.config.scaling_factor, second.config.shift_factor) == \
        (first.config.scaling_factor, first.config.shift_factor)
    rows = [json.loads(line) for line in (tmp_path / "anchored" / "metrics.jsonl").read_text().splitlines()]
    # Step 1 is measured before any update: the encoder is still the anchor's, so the distance is exactly 0.
    assert rows[0]["latent_drift_mse"] == 0.0 and rows[-1]["latent_drift_mse"] > 0.0
    for bad in ({"anchor_weight": 1.0, "init": None}, {"anchor_weight": 1.0, "init": str(out), "decoder_only": True},
                {"anchor_weight": -1.0, "init": str(out)}, {"anchor_weight": float("nan"), "init": str(out)}):
        with pytest.raises(LayerComposerError, match="--anchor-weight"):
            train_vae(VaeTrainConfig(data=str(scenes_dir), output=str(tmp_path / "bad"), steps=1, batch_size=2,
                                     crop=64, model="tiny-random", **bad), progress=False)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_compile_flag_wraps_the_transformer_and_keeps_the_weights_shared(scenes_dir, tmp_path):
    """`--compile` hands the step a torch.compile'd transformer (compiled lazily, on the first step: minutes on
    a CPU, so not run here); what is trained, averaged and exported is the same module underneath."""
    from layercomposer.cli import build_parser
    from layercomposer.models.denoiser import unwrap
    from layercomposer.training.config import train_config_from_args
    from layercomposer.training.train import Trainer

    args = build_parser().parse_args(["train", "--data", str(scenes_dir), "--output", str(tmp_path / "r"), "--compile"])
    assert train_config_from_args(args).compile
    trainer = Trainer(_cfg(scenes_dir, tmp_path / "run", compile=True))
    assert isinstance(trainer.transformer, torch._dynamo.eval_frame.OptimizedModule)
    inner = unwrap(trainer.transformer)
    assert inner is trainer._trained_modules()["transformer"]
    assert {id(p) for p in trainer.optimizer.param_groups[0]["params"]} <= {id(p) for p in inner.parameters()}
    plain = Trainer(_cfg(scenes_dir, tmp_path / "run2"))
    assert not isinstance(plain.transformer, torch._dynamo.eval_frame.OptimizedModule)
