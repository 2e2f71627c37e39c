"""Benchmark canvases in bulk and priors from a text-to-image model (issue 6, part 3).

The placement itself is checked in test_photo.py; here: the prior model path (a tiny random FLUX.1 [dev]
layout pipeline saved to disk, so it makes noise, not faces), the batch spec, its outputs and its errors.
Real photos from scikit-image; no downloads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_models import save_tiny_flux_text_to_image

skdata = pytest.importorskip("skimage.data")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layercomposer", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cwd or ".")}, timeout=300)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.astronaut()).save(root / "astronaut.png")
    Image.fromarray(skdata.camera()).convert("RGB").save(root / "cameraman.png")
    Image.new("RGB", (256, 256), (90, 140, 200)).save(root / "sky.png")  # a prior without any face
    return root


@pytest.fixture(scope="module")
def t2i(tmp_path_factory) -> Path:
    return save_tiny_flux_text_to_image(tmp_path_factory.mktemp("models") / "FLUX.1-dev-tiny")


def test_prior_model_makes_a_seeded_picture_of_the_asked_size(t2i):
    from layercomposer.photo.prior import PriorModel, PriorSettings

    model = PriorModel(str(t2i), device="cpu")
    assert model.kind == "FluxPipeline"
    settings = PriorSettings(steps=2, width=100, height=70, seed=1)
    a = model("two friends on a beach", settings, progress=False)
    assert a.size == (96, 64) and a.mode == "RGB"  # rounded down to 16 px
    b = model("two friends on a beach", settings, progress=False)
    c = model("two friends on a beach", PriorSettings(steps=2, width=100, height=70, seed=2), progress=False)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))


def test_prior_model_errors(tmp_path):
    from layercomposer.errors import LayerComposerError
    from layercomposer.photo.prior import PriorModel, prior_size

    with pytest.raises(LayerComposerError, match="canvas models, not a text-to-image model"):
        PriorModel("demo")
    with pytest.raises(LayerComposerError, match=r"hf download black-forest-labs/FLUX\.1-dev"):
        PriorModel("black-forest-labs/FLUX.1-dev")
    with pytest.raises(LayerComposerError, match=r"64\.\.4096"):
        prior_size(40, 512)


def test_cli_canvas_from_a_generated_prior_is_placed_on_the_saved_priors_faces(tmp_path, photos, t2i):
    from layercomposer.canvas import load_canvas
    from layercomposer.photo.cutout import detect_faces

    out = run("photos", "canvases", "--prior-model", str(t2i), "--identity", str(photos / "astronaut.png"),
              "--prompt", "an astronaut", "--prior-steps", "2", "--prior-size", "128x96", "--save-prior", "prior.png",
              "-o", "canvas.json", cwd=tmp_path)
    prior = Image.open(tmp_path / "prior.png")
    assert prior.size == (128, 96)
    faces = detect_faces(np.asarray(prior.convert("RGB")), min_score=0.6)
    # Random weights draw noise, in which the detector may or may not see a face; either way the canvas
    # follows the prior that was saved: placed on its face, or refused in one line with nothing written.
    if faces:
        assert out.returncode == 0, out.stderr
        canvas = load_canvas(tmp_path / "canvas.json")
        assert (canvas.width, canvas.height) == (128, 96)
        assert canvas.meta["prior_faces"][0]["box"] == pytest.approx(list(max(faces, key=lambda f: f.width).box))
    else:
        assert out.returncode == 2 and "the prior has 0 faces for 1 identities" in out.stderr
        assert not (tmp_path / "canvas.json").exists()
    out = run("photos", "canvases", "--prior-model", str(t2i), "--identity", str(photos / "astronaut.png"),
              "-o", "other.json", cwd=tmp_path)
    assert out.returncode == 2 and "the prior is made from --prompt" in out.stderr
    out = run("photos", "canvases", "--prior-model", "nobody/no-such-model", "--prompt", "x", "--identity",
              str(photos / "astronaut.png"), "-o", "other.json", cwd=tmp_path)
    assert out.returncode == 2 and "hf download nobody/no-such-model" in out.stderr
    assert out.stderr.count("\n") == 2  # the "loading" note, then the error
    assert not (tmp_path / "other.json").exists()


def write_spec(folder: Path, photos: Path, items: list[dict], **extra) -> Path:
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"items": items, **extra}))
    for name in ("astronaut.png", "cameraman.png", "sky.png"):
        if not (folder / name).exists():
            (folder / name).write_bytes((photos / name).read_bytes())
    return spec


def test_batch_writes_canvases_collages_and_skips_what_exists(tmp_path, photos):
    from layercomposer.canvas import load_canvas
    from layercomposer.eval.photos import find_canvases

    spec = write_spec(tmp_path, photos, [
        {"name": "her", "prompt": "an astronaut", "identities": ["astronaut.png"], "prior": "astronaut.png"},
        {"name": "him-on-her", "prompt": "a photographer", "identities": ["cameraman.png"], "prior": "astronaut.png",
         "with_prior": True},
        {"name": "nobody", "prompt": "the sky", "identities": ["astronaut.png"], "prior": "sky.png"},
    ])
    out = run("photos", "batch", str(spec), "-o", "bench", cwd=tmp_path)
    # One item fails (its prior has no face): reported by name, the others written, exit code 2.
    assert out.returncode == 2, out.stderr
    assert "nobody: failed: the prior has 0 faces" in out.stderr
    assert "wrote 2 canvases to bench (0 already there, 1 failed)" in out.stderr
    bench = tmp_path / "bench"
    assert sorted(p.name for p in bench.iterdir()) == ["collages", "her.lcz", "him-on-her.lcz"]
    assert sorted(find_canvases(bench)) == [bench / "her.lcz", bench / "him-on-her.lcz"]
    her = load_canvas(bench / "her.lcz")
    assert [layer.name for layer in her.layers] == ["astronaut"] and her.prompt == "an astronaut"
    assert her.layers[0].meta["aligned_by"] == "eyes" and her.meta["prior"] == {"image": "astronaut.png"}
    him = load_canvas(bench / "him-on-her.lcz")
    assert [layer.name for layer in him.layers] == ["prior", "cameraman"]
    # The collage is the canvas flattened: with the prior as background it is opaque and shows the prior
    # where the cut-out is not.
    collage = np.asarray(Image.open(bench / "collages" / "him-on-her.png").convert("RGB"), int)
    assert collage.shape == (512, 512, 3)
    assert np.abs(collage - np.asarray(him.flatten().convert("RGB"), int)).max() == 0
    assert np.abs(collage[5, 5] - np.asarray(Image.open(photos / "astronaut.png").convert("RGB"))[5, 5]).max() <= 1
    # Again: written items are skipped, the failing one is tried again.
    before = (bench / "her.lcz").stat().st_mtime_ns
    out = run("photos", "batch", str(spec), "-o", "bench", cwd=tmp_path)
    assert "wrote 0 canvases to bench (2 already there, 1 failed)" in out.stderr
    assert (bench / "her.lcz").stat().st_mtime_ns == before


def test_batch_generates_missing_priors_with_the_prior_model(tmp_path, photos, t2i):
    spec = write_spec(tmp_path, photos, [
        {"name": "gen", "prompt": "an astronaut on the moon", "identities": ["astronaut.png"], "seed": 4},
        {"name": "given", "prompt": "an astronaut", "identities": ["astronaut.png"], "prior": "astronaut.png"},
    ], width=128, height=128)
    out = run("photos", "batch", str(spec), "-o", "bench", cwd=tmp_path)
    assert out.returncode == 2 and "item(s) without a prior (gen, ...)" in out.stderr  # before any work
    assert not (tmp_path / "bench").exists()
    out = run("photos", "batch", str(spec), "-o", "bench", "--prior-model", str(t2i), "--prior-steps", "2",
              cwd=tmp_path)
    # The generated prior (noise from random weights: a face or not) is kept, and made again from the same
    # seed it is the same picture.
    prior = tmp_path / "bench" / "priors" / "gen.png"
    assert Image.open(prior).size == (128, 128) and (tmp_path / "bench" / "given.lcz").is_file()
    assert (out.returncode == 0) == (tmp_path / "bench" / "gen.lcz").is_file()
    from layercomposer.photo.prior import PriorModel, PriorSettings

    again = PriorModel(str(t2i), device="cpu")("an astronaut on the moon", PriorSettings(steps=2, width=128, height=128,
                                                                                          seed=4), progress=False)
    assert np.array_equal(np.asarray(again), np.asarray(Image.open(prior).convert("RGB")))


@pytest.mark.parametrize(("items", "message"), [
    ([{"name": "a", "prompt": "p", "identities": ["astronaut.png"], "lockd": True}], "items[0]: unknown field 'lockd'"),
    ([{"name": "a b", "prompt": "p", "identities": ["astronaut.png"]}], "items[0].name: letters, digits"),
    ([{"name": "a", "prompt": "p", "identities": ["astronaut.png"], "prior": "astronaut.png"}] * 2,
     "items[1].name: 'a' is used twice"),
    ([{"name": "a", "prompt": "", "identities": ["astronaut.png"]}], "items[0].prompt: must be a non-empty string"),
    ([{"name": "a", "prompt": "p", "identities": []}], "items[0].identities: must be a non-empty list"),
    ([{"name": "a", "prompt": "p", "identities": ["nobody.png"]}], "items[0].identities[0]:"),
    ([{"name": "a", "prompt": "p", "identities": ["astronaut.png"], "seed": -1}], "items[0].seed"),
    ([], "items: must be a non-empty list"),
])
def test_batch_spec_errors_name_the_field(tmp_path, photos, items, message):
    from layercomposer.errors import LayerComposerError
    from layercomposer.photo.batch import load_batch_spec

    spec = write_spec(tmp_path, photos, items)
    with pytest.raises(LayerComposerError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_batch_spec(spec)
