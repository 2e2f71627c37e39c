"""Rows of docs/TRAINING.md's experiment table from proxy runs and their evaluations.

    python scripts/experiment_table.py NAME=RUN_DIR[@STEP]:EVAL_JSON ...

RUN_DIR is a `layercomposer train` output folder (its metrics.jsonl gives wall time and held-out loss up to
STEP, the checkpoint evaluated; '-' for an evaluation-only row); EVAL_JSON an `eval sprites --json` report
(identity of unlocked characters, locked PSNR).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(name: str, run: str, report: str) -> str:
    steps, minutes = "-", "-"
    if run != "-":
        run, _, at = run.partition("@")
        last = int(at) if at else 10**9
        lines = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
        lines = [m for m in lines if m.get("step", 0) <= last]
        steps_done = [m for m in lines if "seconds_per_step" in m]
        if steps_done:
            steps = str(min(last, steps_done[-1]["step"]))
            # each record covers the steps since the previous one
            prev, total = 0, 0.0
            for m in steps_done:
                total += m["seconds_per_step"] * (m["step"] - prev)
                prev = m["step"]
            minutes = f"{total / 60:.0f}"  # on a machine shared with other runs: an upper bound
        held = [m["eval_loss"] for m in lines if "eval_loss" in m]
        if held:
            steps += f" (held-out loss {held[-1]:.4f})"
    s = json.loads(Path(report).read_text())["summary"]
    ident = s["identity"]["engines"]
    lay = ident["layered"]
    return (f"| {name} | {steps} | {minutes} | {100 * lay['top1']:.0f}% ({100 * lay['se']:.0f}; {lay['n']}) | "
            f"{100 * ident['paste']['top1']:.0f}% | {s['locked']['psnr']:.2f} dB | "
            f"{s['unlocked']['layered']:.2f} dB | {s['image']['layered']['psnr']:.2f} dB |")


if __name__ == "__main__":
    print("| experiment | steps | CPU min | identity top-1 (s.e.; n) | pasting | locked PSNR | unlocked PSNR | "
          "whole PSNR |")
    print("|---|---|---|---|---|---|---|---|")
    for arg in sys.argv[1:]:
        name, rest = arg.split("=", 1)
        run, report = rest.split(":", 1)
        print(row(name, run, report))
