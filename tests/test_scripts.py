"""The reproduction script and the trainer benchmark run end to end with tiny settings, so they cannot rot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    # The console script of the environment running the tests, first on PATH.
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_make_demo_models_smoke_makes_two_loadable_models_and_resumes(tmp_path):
    from layercomposer.pipeline import LayerComposerPipeline

    env = {**_env(), "SMOKE": "1"}
    run = subprocess.run(["bash", str(ROOT / "scripts/make_demo_models.sh"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    index = {n: json.loads((tmp_path / n / "model_index.json").read_text()) for n in ("demo", "demo-collage")}
    assert index["demo"]["merge_locked_layers"] is True and index["demo"]["prune_rule"] == "cover"
    assert index["demo-collage"]["name"] == "demo-collage"
    # The layered model's transformer is the demo's architecture, its VAE the anchored one.
    cfg = json.loads((tmp_path / "demo/transformer/config.json").read_text())
    assert (cfg["num_layers"], cfg["num_single_layers"], cfg["num_attention_heads"]) == (2, 4, 6)
    pipe = LayerComposerPipeline.from_pretrained(tmp_path / "demo")
    assert pipe.transformer.config.num_layers == 2
    # A second call finds every stage done and trains nothing.
    again = subprocess.run(["bash", str(ROOT / "scripts/make_demo_models.sh"), str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    stages = [line for line in again.stdout.splitlines() if line.startswith("== ")]
    assert len(stages) == 1 and "done" in stages[0], again.stdout


def test_train_step_benchmark_prints_a_table(tmp_path):
    from layercomposer.world.generator import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, 3, seed=0, size=256, split="train")
    report = tmp_path / "steps.md"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_step.py"), "--data", str(data),
                          "--settings", "eager", "bf16", "--steps", "3", "--skip", "1", "--log-every", "1",
                          "--batch-size", "1", "--sample-pool", "2", "--report", str(report)],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line for line in report.read_text().splitlines() if line.startswith("| eager") or
            line.startswith("| bf16")]
    assert len(rows) == 2
    eager = rows[0].split("|")
    assert float(eager[2]) > 0 and eager[3].strip() == "1.00x"


def _report(top1: list[bool], engine: str = "layered") -> dict:
    n = len(top1)
    return {"cases": [{"case": k, "identity": [{"name": f"c{k}", "top1": {engine: v, "paste": True}}]}
                      for k, v in enumerate(top1)],
            "summary": {"identity": {"engines": {engine: {"top1": sum(top1) / n, "se": 0.1, "n": n},
                                                 "paste": {"top1": 1.0, "se": 0.0, "n": n}}},
                        "locked": {"psnr": 23.0, f"psnr_{engine}": 22.0},
                        "unlocked": {engine: 13.0}, "image": {engine: {"psnr": 21.0}}}}


def test_experiment_table_pairs_each_character_with_the_control(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import experiment_table
    finally:
        sys.path.pop(0)
    control = tmp_path / "control.json"
    control.write_text(json.dumps(_report([True, False, False, False])))
    run = tmp_path / "run.json"
    run.write_text(json.dumps(_report([True, True, True, False], "strength")))
    experiment_table.main(["--control", str(control), "--engine", "strength", f"s=-:{run}"])
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")
    # differences 0, +1, +1, 0: mean +50 points, s.e. = sd (0.577) / 2 = 29 points
    assert row[4].strip() == "75% (10; 4)" and row[5].strip() == "+50 (29)"
    assert row[7].strip() == "22.00 dB"  # the strength picture's locked PSNR, not the layered one's
