"""The demo models ship inside the installed package and are what `generate` uses by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import layercomposer
from layercomposer.canvas import load_canvas
from layercomposer.cli import default_model, main
from layercomposer.conditioning import TokenRules
from layercomposer.models.registry import WEIGHTS_DIR, shipped_models
from layercomposer.pipeline import LayerComposerPipeline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_weights_live_in_the_imported_package_and_fit_the_budget():
    assert WEIGHTS_DIR.parent == Path(layercomposer.__file__).resolve().parent
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert files and all(p.suffix in {".json", ".safetensors", ".txt", ".md"} for p in files)  # nothing pickled
    assert all((p / "README.md").is_file() for p in WEIGHTS_DIR.iterdir() if p.is_dir())  # a model card each
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20


@pytest.mark.parametrize("name", ["demo", "demo-collage"])
def test_shipped_model_loads_and_renders(name):
    if name not in shipped_models():
        pytest.fail(f"{name} is not in the installed package ({WEIGHTS_DIR})")
    pipe = LayerComposerPipeline.from_pretrained(name)
    assert pipe.name == name and pipe.text_encoder.kind == "clip"
    # The layered demo was trained with merged locked layers and cover pruning; the collage model prunes nothing.
    assert pipe.rules == (TokenRules(True, "cover") if name == "demo" else TokenRules())
    canvas = load_canvas(EXAMPLES / "two-overlapping.json")
    mode = "collage" if name == "demo-collage" else "layered"
    image = pipe(canvas, num_inference_steps=3, seed=0, mode=mode)
    assert image.size == (canvas.width, canvas.height)
    assert np.asarray(image).std() > 5  # a picture, not a constant


def test_demo_is_the_default_model(tmp_path, capsys):
    assert default_model() == "demo"
    out = tmp_path / "out.png"
    assert main(["generate", str(EXAMPLES / "one-sprite.json"), "-o", str(out), "--steps", "2"]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert '"model": "demo"' in im.text["layercomposer"]


def test_small_text_encoder_loads_directly_and_matches_transformers_loader(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextModel

    from layercomposer.models.text import load_small_clip

    folder = WEIGHTS_DIR / "demo" / "text_encoder"
    torch.manual_seed(123)
    ours = load_small_clip(folder)
    after_load = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_load, torch.rand(3))  # loading drew nothing from the global RNG
    theirs = CLIPTextModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32).eval()
    assert ours is not None and not ours.training and ours.dtype == torch.float32
    assert ours.config._attn_implementation == theirs.config._attn_implementation
    ids = torch.tensor([[2, 10, 20, 30, 3, 0, 0, 0], [2, 40, 3, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        a, b = ours(input_ids=ids), theirs(input_ids=ids)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output, b.pooler_output)
    # Keys that do not match the model exactly (another layout) are left to transformers' loader.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "config.json").write_text((folder / "config.json").read_text())
    save_file({"prefix." + k: v for k, v in load_file(folder / "model.safetensors").items()},
              renamed / "model.safetensors")
    assert load_small_clip(renamed) is None
    assert load_small_clip(tmp_path / "missing") is None
