"""Trainer step-time benchmark: eager against `torch.compile` and bf16 autocast, on the real trainer.

    python benchmarks/train_step.py --data data/train                       # the demo model, batch 8, 1 thread
    python benchmarks/train_step.py --data data/train --settings eager compile --steps 40 --report out.md

Each setting is one fresh `layercomposer train` process (fine-tuning the shipped demo model, `--sample-pool`
so that no step waits for the VAE) that logs every `--log-every` steps. The step time of a setting is the
median of its logged intervals after the first `--skip` steps (those hold the compile); the compile cost is
what the first interval took beyond that median. Ratios are against `eager`. Run it on a quiet machine: the
numbers are wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "src" / "layercomposer" / "weights" / "demo"
SETTINGS = {
    "eager": [],
    "bf16": ["--mixed-precision", "bf16"],
    "compile": ["--compile"],
    "compile+bf16": ["--compile", "--mixed-precision", "bf16"],
}


def run_setting(name: str, data: str, model: str, steps: int, batch: int, log_every: int, threads: int,
                pool: int, pool_cache: str | None, workdir: Path) -> dict:
    out = workdir / name
    cmd = [sys.executable, "-m", "layercomposer.cli", "train", "--data", data, "--output", str(out), "--model", model,
           "--steps", str(steps), "--batch-size", str(batch), "--lr", "1e-5", "--log-every", str(log_every),
           "--save-every", str(10 * steps), "--sample-pool", str(pool), *(["--pool-cache", pool_cache] if pool_cache
                                                                          else []), *SETTINGS[name]]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name}: train failed\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = [(r["step"], r["seconds_per_step"]) for r in rows if "seconds_per_step" in r]
    return {"name": name, "wall_s": wall, "logged": logged, "losses": [r.get("loss") for r in rows if "loss" in r]}


def summarise(result: dict, skip: int, log_every: int) -> dict:
    steady = [s for step, s in result["logged"] if step > skip]
    per_step = statistics.median(steady)
    first = result["logged"][0][1]
    return {**result, "s_per_step": per_step, "compile_s": max(0.0, (first - per_step) * log_every)}


def table(results: list[dict], args: argparse.Namespace) -> str:
    base = next((r["s_per_step"] for r in results if r["name"] == "eager"), None)
    lines = ["| setting | s/step | speed-up vs eager | first-interval overhead (s) |", "|---|---|---|---|"]
    for r in results:
        ratio = f"{base / r['s_per_step']:.2f}x" if base else "-"
        lines.append(f"| {r['name']} | {r['s_per_step']:.2f} | {ratio} | {r['compile_s']:.0f} |")
    head = (f"Trainer step time, batch {args.batch_size}, {args.threads} torch thread(s), model `{args.model}`, "
            f"median of the intervals after step {args.skip} of {args.steps} steps. Machine: {platform.machine()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}.\n\n"
            f"Command: `python benchmarks/train_step.py {' '.join(sys.argv[1:])}`\n")
    return head + "\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a folder of world scenes (`layercomposer world generate`)")
    p.add_argument("--model", default=str(DEMO))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=10, help="logged steps up to this one hold warm-up and compile")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sample-pool", type=int, default=64)
    p.add_argument("--pool-cache", default=None)
    p.add_argument("--report", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    if args.steps <= args.skip:
        p.error("--steps must exceed --skip")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            r = summarise(run_setting(name, args.data, args.model, args.steps, args.batch_size, args.log_every,
                                      args.threads, args.sample_pool, args.pool_cache, Path(tmp)),
                          args.skip, args.log_every)
            intervals = " ".join(f"{sec:.2f}" for _, sec in r["logged"])
            print(f"{name}: {r['s_per_step']:.2f} s/step, first interval +{r['compile_s']:.0f} s, "
                  f"wall {r['wall_s']:.0f} s; s/step per logged interval: {intervals}", flush=True)
            results.append(r)
    text = table(results, args)
    print(text)
    if args.report:
        args.report.write_text(text)


if __name__ == "__main__":
    main()
