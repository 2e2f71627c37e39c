"""The reproduction script, the benchmarks and the scripts that draw docs/figures run end to end with tiny
settings (writing to temporary paths, never over the committed figures and reports), so they cannot rot."""

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
    eager, bf16 = (row.split("|") for row in rows)
    assert float(eager[2]) > 0 and eager[3].strip() == "1.00x"
    # the speed-up column is eager's s/step over the setting's, recomputed here from the table's own figures
    # (the table rounds s/step to 0.01, so the ratio is checked against the range the rounding allows)
    e, b, ratio = float(eager[2]), float(bf16[2]), float(bf16[3].strip().rstrip("x"))
    assert (e - 0.005) / (b + 0.005) - 0.005 <= ratio <= (e + 0.005) / (b - 0.005) + 0.005
    # each setting's line lists its logged intervals; the steady median is taken after --skip
    intervals = [line for line in run.stdout.splitlines() if "per logged interval" in line]
    assert len(intervals) == 2 and all(len(line.split(":")[-1].split()) == 3 for line in intervals)


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


COMMITTED = ("docs/figures", "docs/benchmarks", "docs/BENCHMARKS.md", "docs/STARTUP.md")


@pytest.fixture
def committed_docs_untouched():
    """The committed figures and benchmark reports are byte for byte the same after the test."""
    def snapshot() -> dict[str, bytes]:
        files = [p for name in COMMITTED for p in ([ROOT / name] if (ROOT / name).is_file() else
                                                   sorted((ROOT / name).rglob("*")))]
        return {str(p.relative_to(ROOT)): p.read_bytes() for p in files if p.is_file()}

    before = snapshot()
    yield
    assert snapshot() == before


def _script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, *args], env=_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run


def test_training_figure_script(tmp_path, committed_docs_untouched):
    from PIL import Image

    out = tmp_path / "training.png"
    _script(str(ROOT / "docs/make_training_figure.py"), "--out", str(out))
    assert Image.open(out).size == (1080, 528)  # 9 x 4.4 inches at 120 dpi


def test_photo_figure_script(tmp_path, committed_docs_untouched):
    pytest.importorskip("skimage")
    pytest.importorskip("mediapipe")
    from PIL import Image

    out = tmp_path / "photo.png"
    run = _script(str(ROOT / "docs/make_photo_figure.py"), "--out", str(out), "--steps", "1")
    assert Image.open(out).size == (5 * (224 + 6) + 6, 224 + 24 + 6)  # five panels
    assert "$ layercomposer refine" in run.stderr


def test_editor_screenshot_script(tmp_path, committed_docs_untouched):
    import socket

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.skip("Debian chromium is not installed (apt-get install chromium): make_screenshot.py needs it")
    pytest.importorskip("playwright")
    from PIL import Image

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "editor.png"
    run = _script(str(ROOT / "docs/make_screenshot.py"), "--model", "tiny-random", "--port", str(port),
                  "--out", str(out))
    assert Image.open(out).size == (1440, 900) and "generated in" in run.stdout


def test_scaling_benchmark(tmp_path, committed_docs_untouched):
    report = tmp_path / "BENCHMARKS.md"
    _script(str(ROOT / "benchmarks/scaling.py"), "--model", "tiny-random", "--size", "64", "--steps", "1",
            "--warmup", "0", "--subjects", "1,2", "--json", str(tmp_path / "scaling-{device}.json"),
            "--report", str(report))
    doc = json.loads((tmp_path / "scaling-cpu.json").read_text())
    rows = {(r["subjects"], r["mode"]): r for r in doc["rows"]}
    assert sorted(rows) == sorted((k, m) for k in (1, 2) for m in ("none", "collage", "layered", "unpruned"))
    # 64 px: a 4 x 4 grid; two subjects of 14 px squares: pruned below the unpruned two full grids
    assert rows[(2, "collage")]["tokens"] == 16 and rows[(2, "unpruned")]["tokens"] == 32
    assert 0 < rows[(2, "layered")]["tokens"] < 32 and rows[(1, "none")]["time_ratio"] == 1.0
    text = report.read_text()
    assert "--subjects 1,2" in text and "| 2 | layered |" in text
    assert (tmp_path / "figures" / "scaling.png").is_file()


def test_startup_benchmark(tmp_path, committed_docs_untouched):
    report = tmp_path / "STARTUP.md"
    _script(str(ROOT / "benchmarks/startup.py"), "--runs", "1", "--model", "tiny-random", "--report", str(report))
    text = report.read_text()
    assert text.startswith("# Start-up") and "--model tiny-random" in text and "Wall time of the whole command" in text
