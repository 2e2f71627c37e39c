"""Make docs/figures/demo-training.png: held-out loss of the shipped demo models over the three training stages.

    python docs/make_training_figure.py

Stage 1 (steps 0-2000, no EMA) is the run of 2026-11-23, whose metrics were not kept: its held-out losses are
the ones recorded in docs/TRAINING.md. Stage 2 (steps 2000-4250, EMA 0.999, sample pool) reads
docs/results/training/*-continued.jsonl, the runs' own metrics files. Stage 3 (steps 4250-5250) reads
*-stage3.jsonl: the layered model with merged locked layers (shipped), the same run without merging (the
control, not shipped) and the collage model.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
STAGE1 = {  # step -> held-out loss (16 fixed samples), docs/TRAINING.md
    "demo": {250: 0.77, 1000: 0.458, 1500: 0.388, 2000: 0.338},
    "demo-collage": {250: 0.778, 1000: 0.454, 1500: 0.376, 2000: 0.345},
}
STAGE1_STEPS = 2000
STAGE2_END = 4250


def main() -> None:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ends: dict[str, tuple[int, float]] = {}  # each model's last stage-2 point, where stage 3 starts
    for name, colour in (("demo", "#1f4e79"), ("demo-collage", "#c0504d")):
        first = sorted(STAGE1[name].items())
        rows = [json.loads(line) for line in (HERE / "results" / "training" / f"{name}-continued.jsonl").open()]
        second = [(STAGE1_STEPS + r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        ends[name] = second[-1]
        xs, ys = zip(*(first + second), strict=True)
        label = "layered (demo)" if name == "demo" else "collage (demo-collage)"
        stage3 = HERE / "results" / "training" / f"{name}-stage3.jsonl"
        if stage3.is_file():
            rows = [json.loads(line) for line in stage3.open()]
            third = [(STAGE2_END + r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
            xs, ys = zip(*(first + second + third), strict=True)
        if name == "demo":
            label += ", merged locked layers from step 4250"
        ax.plot(xs, ys, "o-", color=colour, markersize=3, label=label)
    control = HERE / "results" / "training" / "demo-stage3-separate.jsonl"
    if control.is_file():
        rows = [json.loads(line) for line in control.open()]
        pts = [ends["demo"]] + [(STAGE2_END + r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "o--", color="#7f9fbf", markersize=3, label="layered, locked layers separate (control)")
    for step, text in ((STAGE1_STEPS, "stage 2: EMA 0.999,\nsample pool 8000"), (STAGE2_END, "stage 3")):
        ax.axvline(step, color="#999", linestyle="--", linewidth=0.8)
        ax.text(step + 40, 0.7, text, fontsize=8, color="#555")
    ax.set_xlabel("optimizer step (batch 8)")
    ax.set_ylabel("held-out flow-matching loss (16 fixed samples)")
    ax.set_yscale("log")
    ax.set_title("demo models: held-out loss, 2-core CPU")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    out = HERE / "figures" / "demo-training.png"
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
