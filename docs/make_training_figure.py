"""Make docs/figures/demo-training.png: held-out loss of the shipped demo models over the training stages.

    python docs/make_training_figure.py [--out docs/figures/demo-training.png]

Stage 1 (steps 0-2000, no EMA) is the run of 2026-11-23, whose metrics were not kept: its held-out losses are
the ones recorded in docs/TRAINING.md. Stage 2 (steps 2000-4250, EMA 0.999, sample pool) reads
docs/results/training/*-continued.jsonl, the runs' own metrics files; stage 3 (4250-5250) *-stage3.jsonl
(the layered model with merged locked layers), stage 4 (5250-6000) *-stage4.jsonl (aligned unlocked
subjects and cover pruning), stage 5 (6000-7000) *-stage5.jsonl (the learning rate decayed linearly to
zero: a cool-down), stage 6 (7000-7500) *-stage6.jsonl (70% aligned unlocked subjects, warmed up again and
decayed to zero), stage 7 (7500-9000) 1500 more steps of stage 6's recipe: the collage model in one run
(*-stage7.jsonl), the layered one in two (demo-stage7.jsonl, the 500-step control of the subject-weighted
loss, then demo-stage7-more.jsonl, 1000 steps from it). Stage 8 trained the VAE's encoder only; stage 9
(9000-10250, *-stage9.jsonl) trained both transformers on its latents (its first held-out loss is measured
on latents the models had not seen), then the encoder once more, held near them; stage 10 (10250-11500,
*-stage10.jsonl) the same again: the encoder first, then both transformers on its latents; stage 11
(11500-14500) three rounds of 1000 transformer steps at a higher rate, each warmed up and decayed to zero
(*-stage11.jsonl, *-stage11-b.jsonl, *-stage11-c.jsonl). The layered runs that were
tried beside a shipped one and not shipped (the controls) are drawn dashed from where they started.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "training"
STAGE1 = {  # step -> held-out loss (16 fixed samples), docs/TRAINING.md
    "demo": {250: 0.77, 1000: 0.458, 1500: 0.388, 2000: 0.338},
    "demo-collage": {250: 0.778, 1000: 0.454, 1500: 0.376, 2000: 0.345},
}
STAGES = (("continued", 2000, "stage 2: EMA 0.999,\nsample pool 8000"), ("stage3", 4250, "stage 3"),
          ("stage4", 5250, "stage 4"), ("stage5", 6000, "stage 5:\nLR to 0"), ("stage6", 7000, "stage 6:\naligned 0.7"),
          ("stage7", 7500, "stage 7:\n1500 more"), ("stage7-more", 8000, None),
          ("stage9", 9000, "stage 9:\nnew latents"), ("stage10", 10250, "stage 10:\nVAE, then\nnew latents"),
          ("stage11", 11500, "stage 11:\n3 x 1000,\nLR 4e-4"), ("stage11-b", 12500, None), ("stage11-c", 13500, None),
          ("stage12", 14500, "stage 12:\n1000 more"), ("stage13", 15500, "stage 13:\n1000 more"))
CONTROLS = (  # file, the stage it belongs to, label
    ("demo-stage3-separate", "stage3", "stage 3 control: locked layers separate"),
    ("demo-stage4-control", "stage4", "stage 4 control: as stage 3"),
    ("demo-stage4-aligned", "stage4", "stage 4: aligned unlocked only (centre pruning)"),
    ("demo-stage6-control", "stage6", "stage 6 control: aligned 0.3"),
    ("demo-stage7-subject-weight", "stage7", "stage 7 tried: subject loss weight 4"),
    ("demo-stage11-lr1.5e-4", "stage11", "stage 11 tried: LR 1.5e-4"),
)


def held_out(path: Path, offset: int) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in path.open()]
    return [(offset + r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "figures" / "demo-training.png"))
    args = parser.parse_args(argv)
    fig, ax = plt.subplots(figsize=(9, 4.4), dpi=120)
    starts: dict[str, tuple[int, float]] = {}  # the shipped layered model's point where each stage starts
    for name, colour in (("demo", "#1f4e79"), ("demo-collage", "#c0504d")):
        points = sorted(STAGE1[name].items())
        for stage, offset, _ in STAGES:
            path = RESULTS / f"{name}-{stage}.jsonl"
            if path.is_file():
                if name == "demo":
                    starts[stage] = points[-1]
                points += held_out(path, offset)
        xs, ys = zip(*points, strict=True)
        label = ("layered (demo): merged locked layers from 4250, aligned unlocked + cover pruning from 5250,\n"
                 "aligned share 0.7 from 7000"
                 if name == "demo" else "collage (demo-collage)")
        ax.plot(xs, ys, "o-", color=colour, markersize=3, label=label)
    offsets = {stage: offset for stage, offset, _ in STAGES}
    colours = ("#7f9fbf", "#9bbb59", "#f79646", "#8064a2", "#4bacc6", "#b5a642")
    for (file, stage, label), colour in zip(CONTROLS, colours, strict=True):
        path = RESULTS / f"{file}.jsonl"
        if path.is_file() and stage in starts:
            xs, ys = zip(*[starts[stage], *held_out(path, offsets[stage])], strict=True)
            ax.plot(xs, ys, "o--", color=colour, markersize=3, label=label)
    for _, step, text in STAGES:
        if text is None:  # a stage's second run: no new boundary
            continue
        ax.axvline(step, color="#999", linestyle="--", linewidth=0.8)
        # from stage 7: below the legend, staggered
        y = 0.7 if step < 7500 else 0.265 if 10000 <= step < 11000 or step >= 15500 else 0.29
        ax.text(step + 40, y, text, fontsize=8, color="#555")
    ax.set_xlabel("optimizer step (batch 8)")
    ax.set_ylabel("held-out flow-matching loss (16 fixed samples)")
    ax.set_yscale("log")
    ax.set_title("demo models: held-out loss, 2-core CPU")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 0.86), fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
