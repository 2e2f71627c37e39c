"""FLUX.2 [klein] as a base, on a tiny random Flux2KleinPipeline folder built in code (Qwen3 text encoder and
tokenizer included; nothing downloaded): detection, the id mapping, equality with diffusers' own klein edit,
padded training batches, generate / refine / train through the CLI, and the trained LoRA in diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, console, pixels
from tiny_models import save_tiny_klein


@pytest.fixture(scope="module")
def klein_dir(tmp_path_factory):
    return save_tiny_klein(tmp_path_factory.mktemp("models") / "FLUX.2-klein-tiny")


@pytest.fixture(scope="module")
def pipe(klein_dir):
    from layercomposer.pipeline import LayerComposerPipeline

    return LayerComposerPipeline.from_pretrained(klein_dir)


@pytest.fixture(scope="module")
def canvas_file(tmp_path_factory):
    """80x64: a locked background, a locked red square, two unlocked sprites (one over the other) and a third."""
    root = tmp_path_factory.mktemp("canvas")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(root / "bg.png")
    Image.new("RGBA", (16, 16), (200, 30, 30, 255)).save(root / "red.png")
    Image.new("RGBA", (32, 16), (30, 30, 200, 255)).save(root / "blue.png")
    Image.new("RGBA", (16, 32), (30, 200, 30, 255)).save(root / "green.png")
    Image.new("RGBA", (16, 16), (200, 200, 30, 255)).save(root / "yellow.png")
    doc = {"version": 1, "width": 80, "height": 64, "prompt": "four sprites on a field",
           "layers": [{"name": "bg", "image": "bg.png", "kind": "background", "locked": True},
                      {"name": "red", "image": "red.png", "x": 0, "y": 0, "locked": True},
                      {"name": "blue", "image": "blue.png", "x": 32, "y": 16},
                      {"name": "green", "image": "green.png", "x": 48, "y": 16},
                      {"name": "yellow", "image": "yellow.png", "x": 64, "y": 48}]}
    (root / "c.json").write_text(json.dumps(doc))
    return root / "c.json"


def test_klein_folder_is_detected(pipe, klein_dir):
    from diffusers import Flux2Transformer2DModel

    from layercomposer.models.klein import KleinSchedule, KleinTextEncoder
    from layercomposer.pipeline import KleinComposerPipeline

    assert json.loads((klein_dir / "model_index.json").read_text())["_class_name"] == "Flux2KleinPipeline"
    assert isinstance(pipe, KleinComposerPipeline) and isinstance(pipe.transformer, Flux2Transformer2DModel)
    assert isinstance(pipe.text_encoder, KleinTextEncoder) and isinstance(pipe.schedule, KleinSchedule)
    assert pipe.guidance_scale == 1.0 and pipe.default_steps == 4  # the distilled klein: no CFG, 4 steps


def test_layered_ids_on_flux2(pipe, canvas_file):
    """The 4-axis ids the FLUX.2 transformer sees for a layered canvas, checked against the canvas itself."""
    from layercomposer.canvas import load_canvas

    canvas = load_canvas(canvas_file)
    cond = pipe.condition(canvas, "layered")
    seen = []
    hook = pipe.transformer.pos_embed.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    try:
        pipe.generate(canvas, num_inference_steps=1)
    finally:
        hook.remove()
    text_ids, image_ids = seen[1], seen[0]  # the transformer embeds the image ids first, then the text's
    length = pipe.text_encoder.max_sequence_length
    assert text_ids.shape == (length, 4) and torch.equal(text_ids[:, 3], torch.arange(length).float())
    assert not text_ids[:, :3].any()
    rows, cols = canvas.grid
    n = rows * cols
    assert image_ids.shape == (n + cond.plan.total, 4) and not image_ids[:, 3].any()
    noisy = image_ids[:n]
    assert not noisy[:, 0].any()
    assert torch.equal(noisy[:, 1:3], torch.tensor([[r, c] for r in range(rows) for c in range(cols)]).float())
    # Condition tokens: locked ones at T = 0, each unlocked layer at 10 j (back to front), at its canvas cells.
    cells = image_ids[n:]
    offset = 0
    unlocked = 0
    for group in [g for g in cond.plan.groups if g.tokens]:
        block = cells[offset:offset + group.tokens]
        offset += group.tokens
        if not group.locked:
            unlocked += 1
        expected_t = 0 if group.locked else 10 * unlocked
        assert torch.all(block[:, 0] == expected_t), (group.name, block[:, 0])
    assert unlocked == 3 and offset == cond.plan.total
    blue = next(g for g in cond.plan.groups if g.name == "blue")
    start = sum(g.tokens for g in cond.plan.groups[:cond.plan.groups.index(blue)])
    # blue (32x16 px at x=32, y=16): the cells (1, 2) and (1, 3) of the 16 px grid, pruned to exactly those.
    assert blue.tokens == 2 and cells[start:start + 2, 1:3].tolist() == [[1.0, 2.0], [1.0, 3.0]]


def test_collage_mode_is_diffusers_klein_edit(pipe, klein_dir):
    """`generate --mode collage` on klein is klein's own single-reference edit: same pixels as Flux2KleinPipeline
    given the flattened canvas and the same noise (ids, text, VAE normalisation and schedule all agree)."""
    from diffusers import Flux2KleinPipeline

    from layercomposer.canvas import Canvas, Layer, LayerImage

    rng = np.random.default_rng(1)
    background = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    canvas = Canvas(80, 64, [Layer("bg", LayerImage.from_pil(background), kind="background", locked=True)],
                    prompt="a red sprite")
    ours = np.asarray(pipe.generate(canvas, num_inference_steps=3, mode="collage", seed=3).image, int)
    theirs = Flux2KleinPipeline.from_pretrained(klein_dir)
    theirs.set_progress_bar_config(disable=True)
    rows, cols = canvas.grid
    noise = torch.randn((1, rows * cols, 16), generator=torch.Generator("cpu").manual_seed(3))  # generate()'s draw
    out = theirs(image=canvas.flatten(canvas.generation_size).convert("RGB"), prompt="a red sprite", height=64,
                 width=80, num_inference_steps=3, latents=noise.transpose(1, 2).reshape(1, 16, rows, cols),
                 output_type="np").images[0]
    assert ours.std() > 10
    assert np.abs(ours - np.round(out * 255).astype(int)).max() <= 1


def test_padded_klein_batch_equals_each_sample_alone(pipe):
    """Training's padded batch (per-sample ids, key mask) gives each sample the velocity it gets alone."""
    from layercomposer.models.attention import use_padded_batch_attention, use_stock_attention
    from layercomposer.models.denoiser import denoise
    from layercomposer.models.text import TextEmbeddings

    gen = torch.Generator().manual_seed(0)
    rows, cols, n = 2, 3, 6
    noisy_ids = torch.tensor([[0, r, c] for r in range(rows) for c in range(cols)], dtype=torch.float32)
    cond_ids = [torch.tensor([[0, 0, 1], [1, 1, 2], [1, 0, 0], [2, 1, 1]], dtype=torch.float32),
                torch.tensor([[1, 0, 2], [0, 1, 0]], dtype=torch.float32)]
    x = torch.randn(2, n, 16, generator=gen)
    conds = [torch.randn(1, len(c), 16, generator=gen) for c in cond_ids]
    text = pipe.encode_prompt("two sprites")
    t = torch.tensor([0.3, 0.7])
    alone = []
    for i in range(2):
        emb = TextEmbeddings(text.sequence, text.pooled)
        with torch.no_grad():
            alone.append(denoise(pipe.transformer, x[i:i + 1], conds[i], torch.cat([noisy_ids, cond_ids[i]]), emb,
                                 t[i:i + 1]))
    ids = torch.zeros(2, n + 4, 3)
    cond = torch.zeros(2, 4, 16)
    mask = torch.zeros(2, n + 4, dtype=torch.bool)
    for i in range(2):
        m = len(cond_ids[i])
        ids[i, :n], ids[i, n:n + m] = noisy_ids, cond_ids[i]
        cond[i, :m] = conds[i][0]
        mask[i, :n + m] = True
    emb = TextEmbeddings(text.sequence.expand(2, -1, -1), text.pooled.expand(2, -1))
    use_padded_batch_attention(pipe.transformer)
    try:
        with torch.no_grad():
            batched = denoise(pipe.transformer, x, cond, ids, emb, t, key_mask=mask)
    finally:
        use_stock_attention(pipe.transformer)
    for i in range(2):
        assert torch.allclose(batched[i:i + 1], alone[i], atol=2e-5), (batched[i:i + 1] - alone[i]).abs().max()
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)


def test_generate_and_refine_through_the_cli(klein_dir, canvas_file, tmp_path):
    out = tmp_path / "layered.png"
    r = console("generate", str(canvas_file), "--model", str(klein_dir), "--steps", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (80, 64) and "[layered]" in r.stderr and pixels(out).std() > 0

    plain, refs = tmp_path / "refined.png", tmp_path / "refs.png"
    r = cli("refine", str(canvas_file), "--model", str(klein_dir), "--steps", "2", "-o", str(plain))
    assert r.returncode == 0, r.stderr
    meta = json.loads(Image.open(plain).info["layercomposer"])
    assert meta["backend"] == "klein" and meta["instruction"].startswith("Turn this rough collage")
    r = cli("refine", str(canvas_file), "--model", str(klein_dir), "--steps", "2", "--layers-as-references",
            "-o", str(refs))
    assert r.returncode == 0, r.stderr
    assert Image.open(refs).size == (80, 64)
    assert json.loads(Image.open(refs).info["layercomposer"])["instruction"].endswith("for their details.")
    assert np.abs(pixels(plain) - pixels(refs)).max() > 0  # the references reach the model
    low = tmp_path / "int8.png"
    r = cli("refine", str(canvas_file), "--model", str(klein_dir), "--steps", "2", "--quantize", "int8",
            "--offload", "group", "-o", str(low))
    assert r.returncode == 0, r.stderr
    assert 0 < np.abs(pixels(low) - pixels(plain)).mean() < 8  # int8 weights: nearly the same picture


def test_refine_passes_layers_within_klein_limit(klein_dir, canvas_file):
    from layercomposer.canvas import load_canvas
    from layercomposer.refine import KLEIN_LAYOUT_NOTE, RefineEngine, RefineSettings

    engine = RefineEngine(str(klein_dir), "klein", "cpu")
    seen = {}

    def fake_pipe(**kwargs):
        seen.update(kwargs)
        return type("Out", (), {"images": [Image.new("RGB", (kwargs["width"], kwargs["height"]))]})()

    config = engine.pipe.config
    engine.pipe = fake_pipe
    engine.pipe.config = config
    canvas = load_canvas(canvas_file)
    engine(canvas, RefineSettings(steps=2, layers_as_references=True, instruction="Blend."))
    collage, blue, green, yellow = seen["image"]  # the unlocked layers only (red is locked)
    assert collage.size == (80, 64) and blue.getpixel((0, 0)) == (30, 30, 200)
    assert blue.size == (128, 64) and green.size == (64, 128)  # enlarged to klein's 64 px minimum side, aspect kept
    assert yellow.getpixel((0, 0)) == (200, 200, 30)
    canvas.layers[1].locked = False  # red unlocked too: 4 unlocked layers, but klein takes 4 images, collage + 3
    engine(canvas, RefineSettings(steps=2, layers_as_references=True, instruction="Blend."))
    assert [im.getpixel((0, 0)) for im in seen["image"][1:]] == [(200, 30, 30), (30, 30, 200), (30, 200, 30)]
    assert seen["prompt"] == f"Blend. {KLEIN_LAYOUT_NOTE}" and seen["guidance_scale"] == 1.0
    engine(canvas, RefineSettings(steps=2))
    assert isinstance(seen["image"], Image.Image)  # without the flag: the collage alone


def test_train_a_layered_lora_on_klein(klein_dir, canvas_file, tmp_path, fresh_accelerate):
    from diffusers import Flux2KleinPipeline
    from safetensors.torch import load_file

    from layercomposer.world import generate_dataset

    scenes = tmp_path / "scenes"
    generate_dataset(scenes, 3, seed=2, size=128)
    run = tmp_path / "run"
    r = cli("train", "--data", str(scenes), "--output", str(run), "--base", str(klein_dir), "--lora-rank", "4",
            "--steps", "3", "--batch-size", "2", "--resolution", "64", "--lr", "2e-2", "--save-every", "3")
    assert r.returncode == 0, r.stderr
    lora = run / "lora" / "pytorch_lora_weights.safetensors"
    keys = load_file(lora)
    assert any(".single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_A" in k for k in keys)
    assert any(".transformer_blocks.0.attn.add_k_proj.lora_B" in k for k in keys)
    assert all(k.startswith("transformer.") for k in keys)
    assert len(json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])) > 0

    def diffusers_output(with_lora):
        klein = Flux2KleinPipeline.from_pretrained(klein_dir)
        klein.set_progress_bar_config(disable=True)
        if with_lora:
            klein.load_lora_weights(str(run / "lora"))
        return klein(image=Image.new("RGB", (64, 64), (200, 30, 30)), prompt="a red sprite", height=64, width=64,
                     num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    assert np.abs(diffusers_output(False) - diffusers_output(True)).max() > 1e-3  # diffusers reads it; it acts

    base, tuned = tmp_path / "base.png", tmp_path / "tuned.png"
    r = cli("generate", str(canvas_file), "--model", str(klein_dir), "--steps", "2", "-o", str(base))
    assert r.returncode == 0, r.stderr
    r = cli("generate", str(canvas_file), "--model", str(klein_dir), "--steps", "2", "-o", str(tuned),
            "--lora", f"{lora}:1.5")
    assert r.returncode == 0, r.stderr
    assert np.abs(pixels(base) - pixels(tuned)).max() > 0


def test_klein_with_int8_gguf_and_group_offload(pipe, klein_dir, canvas_file, tmp_path):
    """The low-memory flags on the klein base: an int8 or GGUF (Q8_0, written here in BFL's key layout, which
    diffusers converts on load) transformer draws nearly the float picture, and group offloading draws exactly it
    (on a CPU)."""
    from safetensors.torch import load_file

    from layercomposer.canvas import load_canvas
    from layercomposer.models.lowmem import LoadOptions
    from layercomposer.pipeline import LayerComposerPipeline
    from tiny_models import flux2_to_bfl, write_gguf

    canvas = load_canvas(canvas_file)
    reference = np.asarray(pipe(canvas, num_inference_steps=2), int)
    gguf = tmp_path / "klein-tiny-Q8_0.gguf"
    state = load_file(klein_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    bfl = flux2_to_bfl(state)  # the original BFL key layout of released FLUX.2 GGUF files
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "transformer_blocks.0.attn.to_q.weight" not in bfl
    write_gguf(bfl, gguf)
    for load in (LoadOptions(quantize="int8"), LoadOptions(gguf=str(gguf))):
        low = LayerComposerPipeline.from_pretrained(klein_dir, load=load)
        assert low.transformer.is_quantized and getattr(low.transformer, "layered_klein", False)
        image = np.asarray(low(canvas, num_inference_steps=2), int)
        assert 0 < np.abs(image - reference).mean() < 8, load
    grouped = LayerComposerPipeline.from_pretrained(klein_dir).enable_group_offload("cpu")
    assert np.array_equal(np.asarray(grouped(canvas, num_inference_steps=2), int), reference)


def test_klein_full_training_is_refused(klein_dir, tmp_path, fresh_accelerate):
    from layercomposer.errors import LayerComposerError
    from layercomposer.training.config import TrainConfig
    from layercomposer.training.train import Trainer

    with pytest.raises(LayerComposerError, match="trains a LoRA"):
        Trainer(TrainConfig(data=str(tmp_path), output=str(tmp_path / "run"), model=str(klein_dir), lora_rank=0))
