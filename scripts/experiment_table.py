"""Rows of docs/TRAINING.md's experiment table from proxy runs and their evaluations.

    python scripts/experiment_table.py [--control EVAL_JSON] [--engine ENGINE] NAME=RUN_DIR[@STEP]:EVAL_JSON ...

RUN_DIR is a `layercomposer train` output folder (its metrics.jsonl gives wall time and held-out loss up to
STEP, the checkpoint evaluated; '-' for an evaluation-only row); EVAL_JSON an `eval sprites --json` report
(identity of unlocked characters, locked PSNR). With --control, a column gives each row's paired difference
in top-1 against that report, character by character (points, standard error). --engine picks the picture
measured (default `layered`; `strength` for an `eval sprites --strength` run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _top1(report: dict, engine: str) -> dict[tuple[str, str], float]:
    return {(str(c["case"]), r["name"]): float(r["top1"][engine]) for c in report["cases"]
            for r in c.get("identity") or [] if engine in r["top1"]}


def paired(report: dict, control: dict, engine: str) -> str:
    from layercomposer.eval.sprites import paired_difference

    a, b = _top1(report, engine), _top1(control, "layered")
    keys = sorted(set(a) & set(b))
    d = paired_difference([a[k] for k in keys], [b[k] for k in keys])
    if d["difference"] is None or d["difference_se"] is None:
        return "-"
    return f"{100 * d['difference']:+.0f} ({100 * d['difference_se']:.0f})"


def row(name: str, run: str, report: str, control: dict | None = None, engine: str = "layered") -> str:
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
    full = json.loads(Path(report).read_text())
    s = full["summary"]
    ident = s["identity"]["engines"]
    lay = ident[engine]
    locked_key = "psnr" if engine == "layered" else f"psnr_{engine}"
    vs = f" {paired(full, control, engine)} |" if control is not None else ""
    return (f"| {name} | {steps} | {minutes} | {100 * lay['top1']:.0f}% ({100 * lay['se']:.0f}; {lay['n']}) |{vs} "
            f"{100 * ident['paste']['top1']:.0f}% | {s['locked'][locked_key]:.2f} dB | "
            f"{s['unlocked'][engine]:.2f} dB | {s['image'][engine]['psnr']:.2f} dB |")


def main(argv: list[str]) -> None:
    control, engine = None, "layered"
    while argv and argv[0] in ("--control", "--engine"):
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--control":
            control = json.loads(Path(value).read_text())
        else:
            engine = value
    vs = " paired vs control |" if control is not None else ""
    print(f"| experiment | steps | CPU min | identity top-1 (s.e.; n) |{vs} pasting | locked PSNR | unlocked PSNR | "
          "whole PSNR |")
    print("|---" * (8 + (control is not None)) + "|")
    for arg in argv:
        name, rest = arg.split("=", 1)
        run, report = rest.split(":", 1)
        print(row(name, run, report, control, engine))


if __name__ == "__main__":
    main(sys.argv[1:])
