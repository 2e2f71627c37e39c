"""Absurd model configs are refused in one line before any weights are allocated (issue 31, item 19)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    from layercomposer.pipeline import LayerComposerPipeline

    root = tmp_path_factory.mktemp("model") / "tiny"
    LayerComposerPipeline.from_pretrained("tiny-random").save_pretrained(root)
    return root


def damaged(saved: Path, tmp_path: Path, part: str, key: str, value: object) -> Path:
    import shutil

    root = tmp_path / "m"
    shutil.copytree(saved, root)
    path = root / part
    doc = json.loads(path.read_text())
    doc[key] = value
    path.write_text(json.dumps(doc))  # NaN is written as the JSON extension NaN, as Python reads it back
    return root


CASES = [
    ("transformer/config.json", "num_layers", 10**6, "num_layers: 1000000 is outside 0..1000"),
    ("text_encoder/config.json", "vocab_size", 10**7, "vocab_size: 10000000 is outside"),
    ("text_encoder/config.json", "vocab_size", 10**12, "vocab_size: 1000000000000 is outside"),
    ("scheduler/scheduler_config.json", "shift", float("nan"), "shift: must be a finite number"),
    ("transformer/config.json", "attention_head_dim", 10**9, "attention_head_dim"),
]


@pytest.mark.parametrize(("part", "key", "value", "message"), CASES, ids=[c[1] + str(c[2])[:6] for c in CASES])
def test_absurd_configs_are_refused_in_one_line(saved_model, tmp_path, capsys, part, key, value, message):
    from layercomposer.cli import main

    root = damaged(saved_model, tmp_path, part, key, value)
    canvas = tmp_path / "c.json"
    canvas.write_text(json.dumps({"version": 1, "width": 64, "height": 64, "layers": []}))
    args = ["generate", str(canvas), "-o", str(tmp_path / "o.png"), "--model", str(root), "--steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.png").exists()
    if key == "vocab_size" and value == 10**12:  # and the real command, in its own process
        r = subprocess.run([sys.executable, "-m", "layercomposer", *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_sane_configs_pass(saved_model):
    from layercomposer.modelcheck import check_model, check_model_dir
    from layercomposer.models.registry import shipped_models

    check_model_dir(saved_model)
    for name in shipped_models():
        check_model(name)
