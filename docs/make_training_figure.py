"""Make docs/figures/demo-training.png: held-out loss of the shipped demo models over both training stages.

    python docs/make_training_figure.py

Stage 1 (steps 0-2000, no EMA) is the run of 2026-11-23, whose metrics were not kept: its held-out losses are
the ones recorded in docs/TRAINING.md. Stage 2 (steps 2000-4250, EMA 0.999, sample pool) reads
docs/results/training/*-continued.jsonl, the runs' own metrics files.
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


def main() -> None:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name, colour in (("demo", "#1f4e79"), ("demo-collage", "#c0504d")):
        first = sorted(STAGE1[name].items())
        rows = [json.loads(line) for line in (HERE / "results" / "training" / f"{name}-continued.jsonl").open()]
        second = [(STAGE1_STEPS + r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        xs, ys = zip(*(first + second), strict=True)
        label = "layered (demo)" if name == "demo" else "collage (demo-collage)"
        ax.plot(xs, ys, "o-", color=colour, markersize=3, label=label)
    ax.axvline(STAGE1_STEPS, color="#999", linestyle="--", linewidth=0.8)
    ax.text(STAGE1_STEPS + 40, 0.7, "stage 2: EMA 0.999,\nsample pool 8000", fontsize=8, color="#555")
    ax.set_xlabel("optimizer step (batch 8)")
    ax.set_ylabel("held-out flow-matching loss (16 fixed samples)")
    ax.set_yscale("log")
    ax.set_title("demo models: held-out loss, 2-core CPU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = HERE / "figures" / "demo-training.png"
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
