"""Real-weight paths on tiny random models saved in the real on-disk formats (nothing downloaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from layercomposer.errors import ModelError
from tiny_models import save_tiny_kontext, save_tiny_qwen_edit


@pytest.fixture(scope="module")
def kontext_dir(tmp_path_factory):
    return save_tiny_kontext(tmp_path_factory.mktemp("models") / "FLUX.1-Kontext-tiny")


@pytest.fixture(scope="module")
def canvas_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvas")
    Image.new("RGBA", (32, 32), (200, 30, 30, 255)).save(root / "a.png")
    doc = {"version": 1, "width": 64, "height": 64, "prompt": "a red sprite",
           "layers": [{"name": "a", "image": "a.png", "x": 16, "y": 16, "locked": True}]}
    (root / "c.json").write_text(json.dumps(doc))
    return root / "c.json"


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "layercomposer", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_generate_on_a_diffusers_kontext_folder(kontext_dir, canvas_file, tmp_path):
    out = tmp_path / "out.png"
    r = cli("generate", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (64, 64)
    assert "4 condition tokens [layered]" in r.stderr


def test_flux_text_encoder_matches_diffusers_prompt_encoding(kontext_dir):
    from diffusers import FluxKontextPipeline

    from layercomposer.pipeline import LayerComposerPipeline

    ours = LayerComposerPipeline.from_pretrained(kontext_dir).text_encoder.encode(["a red sprite"])
    theirs = FluxKontextPipeline.from_pretrained(kontext_dir)
    seq, pooled, _ = theirs.encode_prompt("a red sprite", prompt_2=None, max_sequence_length=512)
    assert torch.allclose(ours.sequence, seq, atol=1e-4) and torch.allclose(ours.pooled, pooled, atol=1e-5)


def _diffusers_kontext_output(folder, lora_dir=None):
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(folder)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    out = pipe(image=image, prompt="a red sprite", num_inference_steps=2, height=64, width=64, max_area=64 * 64,
               guidance_scale=2.5, max_sequence_length=32, generator=torch.Generator().manual_seed(0),
               output_type="np").images[0]
    return out


def test_lora_trained_by_our_trainer_loads_in_diffusers_and_in_ours(kontext_dir, canvas_file, tmp_path):
    from layercomposer.training.config import TrainConfig
    from layercomposer.training.train import train
    from layercomposer.world import generate_dataset

    scenes = tmp_path / "scenes"
    generate_dataset(scenes, 3, seed=2, size=128)
    cfg = TrainConfig(data=str(scenes), output=str(tmp_path / "run"), model=str(kontext_dir), steps=3,
                      batch_size=1, lr=2e-2, warmup=1, lora_rank=4, save_every=3, log_every=1)
    train(cfg, progress=False)
    lora_dir = tmp_path / "run" / "lora"
    assert (lora_dir / "pytorch_lora_weights.safetensors").is_file()
    base = _diffusers_kontext_output(kontext_dir)
    with_lora = _diffusers_kontext_output(kontext_dir, lora_dir)
    assert np.abs(base - with_lora).max() > 1e-3  # diffusers' own pipeline reads it, and it changes the output
    out_a, out_b = tmp_path / "a.png", tmp_path / "b.png"
    plain = cli("generate", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "-o", str(out_a))
    assert plain.returncode == 0, plain.stderr
    r = cli("generate", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "-o", str(out_b),
            "--lora", f"{lora_dir / 'pytorch_lora_weights.safetensors'}:1.5")
    assert r.returncode == 0, r.stderr
    assert np.abs(np.asarray(Image.open(out_a), int) - np.asarray(Image.open(out_b), int)).max() > 0


def test_kohya_format_lora_loads(kontext_dir, tmp_path):
    """A LoRA in the community (kohya / sd-scripts) FLUX format: BFL block names, fused qkv, alpha keys."""
    from layercomposer.pipeline import LayerComposerPipeline

    gen = torch.Generator().manual_seed(0)
    rank, dim, mlp = 4, 32, 128
    state = {}

    def add(name, out_features, in_features):
        state[f"lora_unet_{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=gen) * 0.5
        state[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=gen) * 0.5
        state[f"lora_unet_{name}.alpha"] = torch.tensor(float(rank))

    for stream in ("img", "txt"):
        add(f"double_blocks_0_{stream}_attn_qkv", 3 * dim, dim)
        add(f"double_blocks_0_{stream}_attn_proj", dim, dim)
    # (single_blocks_*_linear1 is left out: diffusers' converter splits it at FLUX.1's real widths, 3072 / 12288)
    add("single_blocks_0_linear2", dim, dim + mlp)
    path = tmp_path / "kohya_lora.safetensors"
    save_file(state, str(path))

    pipe = LayerComposerPipeline.from_pretrained(kontext_dir)
    from layercomposer.canvas import Canvas, Layer, LayerImage

    canvas = Canvas(64, 64, [Layer("a", LayerImage.from_pil(Image.new("RGBA", (32, 32), (200, 30, 30, 255))),
                                   x=16, y=16)], prompt="a red sprite")
    before = np.asarray(pipe(canvas, num_inference_steps=2), int)
    names = pipe.load_loras([f"{path}:0.8"])
    assert names == ["lora0"]
    after = np.asarray(pipe(canvas, num_inference_steps=2), int)
    assert np.abs(before - after).max() > 0


def test_missing_models_and_loras_are_one_line_errors(canvas_file, tmp_path):
    r = cli("generate", str(canvas_file), "--model", "black-forest-labs/FLUX.1-Kontext-dev",
            "-o", str(tmp_path / "x.png"))
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "not in the local Hugging Face cache" in line
    assert "hf download black-forest-labs/FLUX.1-Kontext-dev" in line
    r = cli("generate", str(canvas_file), "--model", "tiny-random", "--lora", str(tmp_path / "none.safetensors"),
            "-o", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "none.safetensors not found" in r.stderr
    from layercomposer.models.flux import parse_lora_spec

    f = tmp_path / "l.safetensors"
    f.write_bytes(b"")
    assert parse_lora_spec(f"{f}:0.5") == (f, 0.5)
    assert parse_lora_spec(str(f)) == (f, 1.0)
    with pytest.raises(ModelError, match="not found"):
        parse_lora_spec(str(tmp_path / "gone.safetensors:2"))


def test_hub_id_resolves_from_the_local_cache(kontext_dir, tmp_path, monkeypatch):
    """A hub id already in HF_HOME's cache loads without any network (HF_HUB_OFFLINE)."""
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    snap = cache / "models--acme--tiny-kontext" / "snapshots" / ("0" * 40)
    shutil.copytree(kontext_dir, snap)
    (cache / "models--acme--tiny-kontext" / "refs").mkdir(parents=True)
    (cache / "models--acme--tiny-kontext" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    from layercomposer.models.registry import resolve_model

    assert resolve_model("acme/tiny-kontext") == snap


def test_refine_a_canvas_with_kontext(kontext_dir, canvas_file, tmp_path):
    out = tmp_path / "refined.png"
    r = cli("refine", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (64, 64)
    meta = json.loads(Image.open(out).info["layercomposer"])
    assert meta["backend"] == "kontext" and meta["instruction"].startswith("Turn this rough collage")


def test_refine_trigger_phrases():
    from layercomposer.refine import RefineSettings, instruction_text, trigger_for

    assert trigger_for(["/loras/Place-it_kontext_v2.safetensors:0.9"], None) == "Place it"
    assert trigger_for(["/loras/style.safetensors"], None) is None
    assert trigger_for(["/loras/style.safetensors"], "Collage") == "Collage"
    text = instruction_text(RefineSettings(loras=["placeit.safetensors"], instruction="Blend it."))
    assert text == "Place it, blend it."


def test_refine_an_image_and_a_missing_file(kontext_dir, tmp_path):
    """The collage can be any image (its size is kept, rounded to 16 px); a missing file is a one-line error."""
    from layercomposer.refine import RefineEngine, RefineSettings

    collage = Image.new("RGB", (64, 48), (30, 120, 200))
    base = RefineEngine(str(kontext_dir), "kontext")(collage, RefineSettings(steps=2))
    assert base.size == (64, 48)
    bad = cli("refine", str(tmp_path / "missing.png"), "--model", str(kontext_dir))
    assert bad.returncode == 2 and "missing.png: file not found" in bad.stderr


# ----------------------------------------------------------------------------------------------------------
# refine --backend qwen: Qwen-Image-Edit(-Plus) through diffusers, on tiny random folders in the real layout


@pytest.fixture(scope="module")
def qwen_edit_dir(tmp_path_factory):
    return save_tiny_qwen_edit(tmp_path_factory.mktemp("models") / "Qwen-Image-Edit-tiny")


@pytest.fixture(scope="module")
def qwen_plus_dir(tmp_path_factory):
    return save_tiny_qwen_edit(tmp_path_factory.mktemp("models") / "Qwen-Image-Edit-2509-tiny", plus=True)


@pytest.fixture(scope="module")
def two_layer_canvas(tmp_path_factory):
    """88x72 (generation size 80x64): a red square, and a blue bar inside a transparent margin, over it."""
    root = tmp_path_factory.mktemp("canvas2")
    Image.new("RGBA", (24, 24), (200, 30, 30, 255)).save(root / "red.png")
    blue = Image.new("RGBA", (30, 40), (0, 0, 0, 0))
    blue.paste((20, 40, 220, 255), (5, 10, 25, 30))  # content 20x20 in a 30x40 image
    blue.save(root / "blue.png")
    doc = {"version": 1, "width": 88, "height": 72, "prompt": "two sprites",
           "layers": [{"name": "red", "image": "red.png", "x": 4, "y": 4},
                      {"name": "blue", "image": "blue.png", "x": 40, "y": 12}]}
    (root / "c.json").write_text(json.dumps(doc))
    return root / "c.json"


@pytest.fixture(scope="module")
def qwen_plain(qwen_edit_dir, two_layer_canvas, tmp_path_factory):
    """`refine --backend qwen` on the tiny Qwen-Image-Edit folder: (result, its path)."""
    out = tmp_path_factory.mktemp("qwen_out") / "plain.png"
    r = cli("refine", str(two_layer_canvas), "--model", str(qwen_edit_dir), "--backend", "qwen", "--steps", "2",
            "-o", str(out))
    assert r.returncode == 0, r.stderr
    return r, out


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), int)


def test_refine_with_qwen_image_edit(qwen_plain, qwen_edit_dir, two_layer_canvas, tmp_path):
    r, out = qwen_plain
    image = Image.open(out)
    assert image.size == (80, 64)  # the collage size (the canvas rounded down to 16 px), not the pipeline's 1 MP
    meta = json.loads(image.info["layercomposer"])
    assert meta["backend"] == "qwen" and meta["model"] == str(qwen_edit_dir)
    assert meta["instruction"].startswith("Turn this rough collage") and "Picture 1" not in meta["instruction"]
    assert "refine/qwen" in r.stderr
    # No --backend: the folder's model_index.json (QwenImageEditPipeline) picks qwen; same seed, same pixels.
    auto = tmp_path / "auto.png"
    r = cli("refine", str(two_layer_canvas), "--model", str(qwen_edit_dir), "--steps", "2", "-o", str(auto))
    assert r.returncode == 0, r.stderr
    assert json.loads(Image.open(auto).info["layercomposer"])["backend"] == "qwen"
    assert np.array_equal(_pixels(auto), _pixels(out))
    assert _pixels(out).std() > 0  # a real (random) picture, not a blank


def test_qwen_backend_detection_and_the_server_detection(qwen_edit_dir, qwen_plus_dir, kontext_dir):
    from layercomposer.models.registry import resolve_model
    from layercomposer.refine import auto_backend
    from layercomposer.server.app import _refine_backend

    assert auto_backend(resolve_model(str(qwen_plus_dir))) == "qwen"
    assert _refine_backend(str(qwen_edit_dir)) == "qwen"
    assert _refine_backend(str(kontext_dir)) == "kontext"
    assert _refine_backend("tiny-random") == "demo"
    # The saved folder names transformers' processor class, as Qwen/Qwen-Image-Edit's model_index.json does.
    index = json.loads((qwen_plus_dir / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline"
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]


def test_qwen_plus_with_layers_as_references(qwen_plus_dir, two_layer_canvas, tmp_path):
    from diffusers import QwenImageEditPlusPipeline

    from layercomposer.canvas import load_canvas
    from layercomposer.refine import LAYOUT_NOTE, RefineEngine, RefineSettings

    out = tmp_path / "plus.png"
    r = cli("refine", str(two_layer_canvas), "--model", str(qwen_plus_dir), "--layers-as-references",
            "--steps", "1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    image = Image.open(out)
    meta = json.loads(image.info["layercomposer"])
    assert image.size == (80, 64) and meta["backend"] == "qwen"
    assert meta["instruction"].endswith(LAYOUT_NOTE) and meta["instruction"].startswith("Turn this rough collage")

    # What the pipeline is given: the collage, then each layer cropped to its content over white, in z-order.
    engine = RefineEngine(str(qwen_plus_dir), "qwen")
    assert isinstance(engine.pipe, QwenImageEditPlusPipeline)
    seen = {}

    def fake_pipe(**kwargs):
        seen.update(kwargs)
        return type("Out", (), {"images": [Image.new("RGB", (kwargs["width"], kwargs["height"]))]})()

    engine.pipe = fake_pipe
    canvas = load_canvas(two_layer_canvas)
    engine(canvas, RefineSettings(steps=3, seed=5, layers_as_references=True, instruction="Blend."))
    collage, red, blue = seen["image"]
    assert collage.size == (80, 64) and collage.getpixel((10, 10)) == (200, 30, 30)
    assert collage.getpixel((78, 62)) == (255, 255, 255)  # white where nothing is drawn
    assert red.size == (24, 24) and red.getpixel((0, 0)) == (200, 30, 30)
    assert blue.size == (20, 20) and blue.getpixel((0, 0)) == (20, 40, 220)  # the transparent margin cropped off
    assert seen["prompt"] == f"Blend. {LAYOUT_NOTE}"
    assert (seen["width"], seen["height"], seen["num_inference_steps"]) == (80, 64, 3)
    assert seen["true_cfg_scale"] == 4.0 and seen["negative_prompt"] == " "
    engine(canvas, RefineSettings(guidance=1.0))
    assert seen["image"].size == (80, 64) and seen["negative_prompt"] is None  # no CFG: no negative prompt


def test_layers_as_references_needs_a_plus_model(qwen_edit_dir, two_layer_canvas):
    from layercomposer.canvas import load_canvas
    from layercomposer.errors import LayerComposerError
    from layercomposer.refine import RefineEngine, RefineSettings

    engine = RefineEngine(str(qwen_edit_dir), "qwen")
    with pytest.raises(LayerComposerError, match="needs --backend qwen with a Qwen-Image-Edit Plus"):
        engine(load_canvas(two_layer_canvas), RefineSettings(layers_as_references=True))


def test_qwen_lora_loads_and_changes_the_output(qwen_plain, qwen_edit_dir, two_layer_canvas, tmp_path):
    from diffusers import QwenImageEditPipeline, QwenImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(3)
    transformer = QwenImageTransformer2DModel.from_pretrained(qwen_edit_dir / "transformer")
    # init_lora_weights=False: random A and B, so the adapter is not the identity a fresh LoRA starts as; proj_out
    # too, as the tiny random transformer's attention barely moves its (small) velocity.
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_out"]))
    QwenImageEditPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=get_peft_model_state_dict(
        transformer))
    lora = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    assert lora.is_file()
    out = tmp_path / "lora.png"
    r = cli("refine", str(two_layer_canvas), "--model", str(qwen_edit_dir), "--backend", "qwen", "--steps", "2",
            "--lora", f"{lora}:1.5", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert np.abs(_pixels(out) - _pixels(qwen_plain[1])).max() > 8


def test_qwen_backend_on_a_wrong_folder_is_a_one_line_error(kontext_dir, two_layer_canvas, tmp_path):
    r = cli("refine", str(two_layer_canvas), "--model", str(kontext_dir), "--backend", "qwen",
            "-o", str(tmp_path / "x.png"))
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "--backend qwen needs a Qwen-Image-Edit" in line and "FluxKontextPipeline" in line
    assert not (tmp_path / "x.png").exists()
