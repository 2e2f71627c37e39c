"""Start-up benchmark: where the wall time of one `layercomposer generate` goes, from a cold process.

    python benchmarks/startup.py                                   # 3 rounds, the README's main command
    python benchmarks/startup.py --runs 5 --report docs/STARTUP.md

Each round starts fresh processes for five stages, one after another, so that a slow spell of the machine
touches every stage of a round alike:

1. `python -c pass` (the interpreter alone),
2. `import torch` and what `generate` imports before its load timer starts (numpy, Pillow, the CLI),
   then `os._exit` (no teardown),
3. the same + what its load imports: the pipeline and the model classes (transformers' CLIPTextModel,
   diffusers' AutoencoderKL and FluxTransformer2DModel), which is everything it imports, then `os._exit`,
4. the same imports with a normal exit: the difference to 3 is the interpreter's teardown of those modules,
5. the whole command, `layercomposer generate CANVAS -o OUT`, whose own report splits its time into
   load (the imports of 3 beyond those of 2, and the weights), condition, sample and decode.

Each part is a difference within one round (`the rest` is what the command's wall time leaves after stage 2
and its reported phases: the CLI, reading the canvas, saving the PNG, and whatever exit costs); the table
gives each part's median over the rounds, so its rows need not add up to the median wall time exactly.
One more run under `python -X importtime` splits the import time by package (each module's own time,
summed per top-level package).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What `generate` imports before its load timer starts (it reads the canvas and checks --lora files first),
# and then what its load imports.
BEFORE_LOAD = "import torch; import layercomposer.cli, layercomposer.canvas, layercomposer.models.flux"
CLASSES = (BEFORE_LOAD + "; import layercomposer.pipeline; from transformers import CLIPTextModel; "
           "from diffusers import AutoencoderKL, FluxTransformer2DModel")
QUIT = "; import os; os._exit(0)"
STAGES = {"python": "pass", "torch": BEFORE_LOAD + QUIT, "classes": CLASSES + QUIT, "teardown": CLASSES}
# Why the packages that take import time are imported at all (self times summed per top-level package).
WHY = {
    "torch": "PyTorch; of it, torch._dynamo is imported by diffusers' utilities at import time",
    "transformers": "the text encoder (CLIPTextModel): transformers' model base classes, and with them its "
                    "loading, quantisation, kernel-hub and distributed modules",
    "diffusers": "the VAE and transformer classes; one model class imports diffusers' whole packages of "
                 "models (every architecture it knows)",
    "peft": "imported by diffusers' hooks when installed; only LoRA needs it",
    "accelerate": "imported by diffusers and transformers (device placement, big-model loading)",
    "sympy": "imported by torch (symbolic shapes)",
    "kernels": "imported by transformers' kernel-hub integration when installed",
    "layercomposer": "this project",
}
NOTES = """\
## What was cut, and what remains

- Cut: the CLI imports nothing heavy until a command needs it (`layercomposer --help`, `tokens` and bad
  input answer without torch); the demo's 1 MB text encoder is built from its config and its state dict
  directly (transformers' `from_pretrained` first compiled about a thousand regular expressions for the
  checkpoint-conversion rules of every architecture, 0.3 s); `generate` and `refine` end the process
  without the interpreter's teardown of the 3,000-odd imported modules (0.4-0.8 s on a 2-core CPU, the
  row in brackets above; exit handlers still run). The weights are read once, straight into the models (safetensors).
- Remains: importing torch, and the model classes. `diffusers` imports `torch._dynamo` (with sympy) when
  it starts and, for any one model class, the whole package of transformer models (every architecture
  diffusers knows, with their own imports: peft through diffusers' hooks, scipy where installed);
  CLIPTextModel brings transformers' model base classes with their loading, quantisation and distributed
  modules. None of it can be skipped from outside diffusers and transformers short of loading their files
  by hand, which would tie this project to their internals. The one large piece the project could drop
  is transformers, by writing the demo's small CLIP text encoder in plain torch; it is kept because the
  trainer, the shipped weights and the FLUX path all use transformers' CLIP.
- Remains: the work itself, conditioning, the 28 steps of the transformer (with guidance, one batched
  pass of two) and the VAE decode. The `serve` editor pays the start-up once and then only the work.
"""
GENERATE_REPORT = re.compile(r"load ([\d.]+)s, condition ([\d.]+)s, sample ([\d.]+)s, decode ([\d.]+)s")


def parse_generate_report(stderr: str) -> dict[str, float]:
    """The seconds `generate` reports for its phases (load, condition, sample, decode)."""
    match = GENERATE_REPORT.search(stderr)
    if match is None:
        raise ValueError(f"no timing line in generate's output: {stderr[-300:]!r}")
    return dict(zip(("load", "condition", "sample", "decode"), map(float, match.groups()), strict=True))


def parse_importtime(stderr: str) -> dict[str, tuple[float, float]]:
    """(self, cumulative) seconds per module from `python -X importtime` (the first import of each)."""
    out: dict[str, tuple[float, float]] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue  # the header line
        out.setdefault(parts[2].strip(), (int(parts[0]) / 1e6, int(parts[1]) / 1e6))
    return out


def self_time_by_package(times: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Import self times summed per top-level package, largest first (they add up to the whole import)."""
    totals: dict[str, float] = {}
    for module, (self_s, _) in times.items():
        top = module.split(".")[0]
        totals[top] = totals.get(top, 0.0) + self_s
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def split_round(walls: dict[str, float], phases: dict[str, float]) -> dict[str, float]:
    """One round's wall times (per stage) and generate's reported phases -> seconds per part."""
    work = phases["condition"] + phases["sample"] + phases["decode"]
    return {
        "python": walls["python"],
        "torch": walls["torch"] - walls["python"],
        "classes": walls["classes"] - walls["torch"],
        "teardown": walls["teardown"] - walls["classes"],
        # generate's load is the imports of stage 3 beyond stage 2's plus reading the weights.
        "weights": phases["load"] - (walls["classes"] - walls["torch"]),
        **{k: phases[k] for k in ("condition", "sample", "decode")},
        "rest": walls["generate"] - walls["torch"] - phases["load"] - work,
    }


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-500:]}")
    return seconds, done.stderr


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{name}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for pkg in ("diffusers", "transformers", "accelerate", "peft", "scipy"):
        try:
            found.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            found.append(f"{pkg} not installed")
    return ", ".join(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--canvas", default="examples/four-sprites.json")
    parser.add_argument("--model", default=None, help="generate's --model (its default when not given)")
    parser.add_argument("--runs", type=int, default=3, help="rounds (each stage once per round)")
    parser.add_argument("--report", default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args()

    script = shutil.which("layercomposer", path=str(Path(sys.executable).parent))
    generate = [script] if script else [sys.executable, "-m", "layercomposer"]
    walls: dict[str, list[float]] = {name: [] for name in (*STAGES, "generate")}
    phases: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*generate, "generate", args.canvas, "-o", str(Path(tmp) / "out.png")]
        if args.model:
            cmd += ["--model", args.model]
        for i in range(args.runs):
            for name, code in STAGES.items():
                walls[name].append(timed([sys.executable, "-c", code])[0])
            seconds, stderr = timed(cmd)
            walls["generate"].append(seconds)
            phases.append(parse_generate_report(stderr))
            print(f"round {i + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in walls.items()),
                  file=sys.stderr)
        imports = parse_importtime(timed([sys.executable, "-X", "importtime", "-c", CLASSES])[1])

    parts = [split_round({k: v[i] for k, v in walls.items()}, phases[i]) for i in range(args.runs)]
    med = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    labels = {
        "python": "Python interpreter (`python -c pass`)",
        "torch": "import torch (with numpy, Pillow and the CLI's own modules)",
        "classes": "import the model classes (transformers, diffusers and what they pull in)",
        "teardown": "(the interpreter's teardown of those modules at a normal exit; generate skips it)",
        "weights": "read the weights and build the models (generate's load minus those imports)",
        "condition": "condition (encode the canvas layers and the prompt)",
        "sample": "sample (the transformer's steps)",
        "decode": "decode (VAE)",
        "rest": "the rest (CLI, reading the canvas, saving the PNG, exit)",
    }
    rows = [(labels[k], med[k]) for k in labels]
    packages = self_time_by_package(imports)
    model_flag = f" --model {args.model}" if args.model else ""
    span = lambda v: f"{min(v):.2f}-{max(v):.2f}"  # noqa: E731
    lines = [
        "# Start-up",
        "",
        f"`python benchmarks/startup.py --runs {args.runs}{model_flag}` on {datetime.date.today().isoformat()}: "
        f"`layercomposer generate {args.canvas} -o out.png{model_flag}` "
        f"from a cold process, {args.runs} round{'s' if args.runs > 1 else ''}, medians. "
        f"Machine: {machine()}; {versions()}.",
        "",
        f"Wall time of the whole command: **{statistics.median(walls['generate']):.2f} s** "
        f"(range {span(walls['generate'])}).",
        "",
        "| part | seconds |",
        "|---|---|",
        *(f"| {label} | {seconds:.2f} |" for label, seconds in rows),
        "",
        f"Import time by package (one `python -X importtime` run of stage 3, {sum(packages.values()):.2f} s in all: "
        "each module's own time, summed per top-level package; importtime's bookkeeping adds a little):",
        "",
        "| package | seconds | why it is imported |",
        "|---|---|---|",
        *(f"| `{pkg}` | {sec:.2f} | {WHY.get(pkg, '')} |" for pkg, sec in packages.items() if sec >= 0.05),
        f"| others | {sum(sec for sec in packages.values() if sec < 0.05):.2f} | |",
        "",
        NOTES,
    ]
    text = "\n".join(lines)
    print(text)
    if args.report:
        Path(args.report).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
