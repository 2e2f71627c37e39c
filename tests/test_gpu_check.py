"""benchmarks/gpu_check.py end to end at toy sizes on the CPU: every configuration measured or skipped with a
reason, the training step run, and the GPU section of the report written between its markers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_at_toy_sizes(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\nthe CPU tables\n\n<!-- gpu-check:start -->\nold numbers\n"
                      "<!-- gpu-check:end -->\n\n## after\n")
    out = tmp_path / "gpu-check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--toy", "--device", "cpu",
                        "--json", str(out), "--report", str(report)], capture_output=True, text=True, timeout=300,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    inference = [x for x in rows if x["kind"] == "inference"]
    for model in ("kontext", "klein"):
        for weights in ("bf16", "int8"):
            got = {(x["subjects"], x["mode"]) for x in inference
                   if x["model"] == model and x["weights"] == weights and "seconds" in x}
            assert got == {(1, "none"), (1, "collage"), (1, "layered"), (1, "unpruned"), (2, "collage"),
                           (2, "layered"), (2, "unpruned")}, (model, weights, got)
        nf4 = [x for x in inference if x["model"] == model and x["weights"] == "nf4"]
        assert nf4 and all(("seconds" in x) == torch.cuda.is_available() for x in nf4)
        if not torch.cuda.is_available():
            assert all("needs CUDA" in x["skipped"] for x in nf4)
        train = next(x for x in rows if x["kind"] == "train" and x["model"] == model)
        assert train["seconds"] > 0 and train["lora_parameters"] > 0 and train["rank"] == 4
    # The token counts are the planner's: unpruned grows with the subjects, the floor has none, layered is pruned.
    counts = {(x["subjects"], x["mode"]): x["tokens"] for x in inference
              if x["model"] == "kontext" and x["weights"] == "bf16"}
    assert counts[(1, "none")] == 0 and counts[(1, "collage")] == counts[(1, "unpruned")] == (128 // 16) ** 2
    assert counts[(2, "unpruned")] == 2 * counts[(1, "unpruned")]
    assert 0 < counts[(2, "layered")] < counts[(2, "collage")]
    assert all(abs(x["x_floor"] - x["seconds"] / next(
        f["seconds"] for f in inference if f["model"] == x["model"] and f["weights"] == x["weights"]
        and f["mode"] == "none")) < 1e-9 for x in inference if "seconds" in x)
    text = report.read_text()
    assert text.startswith("# Benchmarks\n\nthe CPU tables\n") and text.rstrip().endswith("## after")
    assert "old numbers" not in text and text.count("<!-- gpu-check:start -->") == 1
    assert "| kontext | int8 | layered | 2 |" in text and "(toy sizes)" in text


def test_gpu_check_without_cuda_says_so(tmp_path):
    if torch.cuda.is_available():
        return
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--json", str(tmp_path / "x"),
                        "--report", str(tmp_path / "B.md")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "no CUDA device here" in r.stderr and not (tmp_path / "B.md").exists()


def test_scaling_report_keeps_the_gpu_section(tmp_path):
    """benchmarks/scaling.py rewrites BENCHMARKS.md from its JSON files but keeps gpu_check's section."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from scaling import write_report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rows = [{"subjects": k, "mode": mode, "tokens": 1, "noisy": 16, "seconds": 0.01, "peak_bytes": 0.0,
             "time_ratio": 1.0} for k in (1, 2, 4, 8, 16) for mode in ("none", "collage", "layered", "unpruned")]
    (tmp_path / "scaling-cpu.json").write_text(json.dumps(
        {"device": "cpu", "model": "demo-base", "size": 64, "share": 0.05, "steps": 1, "warmup": 1, "rows": rows,
         "machine": "test"}))
    report = tmp_path / "docs" / "BENCHMARKS.md"
    report.parent.mkdir()
    report.write_text("# old\n\n<!-- gpu-check:start -->\nGPU numbers\n<!-- gpu-check:end -->\n")
    write_report(tmp_path, report)
    text = report.read_text()
    assert "## demo-base at 64 px on cpu" in text and "# old" not in text
    assert "<!-- gpu-check:start -->\nGPU numbers\n<!-- gpu-check:end -->" in text
