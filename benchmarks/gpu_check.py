"""The GPU check in one command: per-step time and peak memory of the real FLUX.1 Kontext (12B) and FLUX.2 [klein]
4B transformers under our conditioning, in bf16, int8 and nf4, and one LoRA training step.

    python benchmarks/gpu_check.py                           # one CUDA GPU: about 8 minutes on an H100 (estimate)
    python benchmarks/gpu_check.py --toy --device cpu        # the same code end to end at toy sizes (the test)

Random weights at the real architectures' sizes (speed and memory depend on shapes, not values), built directly
in bf16 on the GPU. For each transformer and weight kind it times `models.denoiser.denoise`, the one model call of
sampling, at 1024x1024 (4096 noisy tokens) with 512 text tokens, in four conditioning modes: no condition (the
text-to-image floor), collage (a full grid), layered (the kept tokens of k subjects, each 5% of the canvas, half
of them locked) and unpruned (a full grid per subject), for k = 1, 2, 4, 8, 16. int8 is torchao's int8
weight-only (what `--quantize int8` loads), nf4 bitsandbytes' 4-bit NormalFloat (`--quantize nf4`); the quantized
runs leave out unpruned at 8 and 16 subjects (attention-bound: quantizing the weights does not change it) to fit
the time budget. Then one LoRA training step (rank 512 on the trainer's targets, 512 px, a layered canvas of 4
subjects, gradient checkpointing, AdamW; the trainer's padded-batch call) per transformer, on bf16 weights.

Times are the median of `--steps` steps after `--warmup`; peak memory is CUDA's peak allocation during them
(weights included). Ratios are to the floor of the same transformer and weights. It writes
docs/benchmarks/gpu-check.json and the GPU section of docs/BENCHMARKS.md (between its markers; the rest of the
file is kept). A configuration that fails (out of memory, a missing package) is recorded with its error, and
configurations past `--budget` seconds are recorded as skipped, so one run always finishes with a report.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import token_counts  # the same planner as the pipeline (no model)

SUBJECTS = (1, 2, 4, 8, 16)
MODES = ("none", "collage", "layered", "unpruned")
WEIGHTS = ("bf16", "int8", "nf4")
START, END = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"

# diffusers configs of the real transformers (transformer/config.json of black-forest-labs/FLUX.1-Kontext-dev and
# of FLUX.2 [klein] 4B); --kontext-config / --klein-config read a real config.json instead.
KONTEXT = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
               num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
               axes_dims_rope=(16, 56, 56))
KLEIN = dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
             axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False)
TOY_KONTEXT = dict(KONTEXT, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
TOY_KLEIN = dict(KLEIN, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=32,
                 axes_dims_rope=(4, 4, 4, 4))


class Skip(Exception):
    """A configuration this machine cannot run (recorded as skipped, with the reason)."""


def build(model: str, config: dict, device: str, dtype: Any) -> Any:
    """A random transformer built in `dtype` on `device` (FLUX.1 Kontext in float32 would need 48 GB first)."""
    import torch

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if model == "kontext":
                from diffusers import FluxTransformer2DModel

                return FluxTransformer2DModel(**config).eval().requires_grad_(False)
            from diffusers import Flux2Transformer2DModel

            from layercomposer.models.klein import make_layered

            return make_layered(Flux2Transformer2DModel(**config).eval().requires_grad_(False))
    finally:
        torch.set_default_dtype(default)


def quantize(transformer: Any, weights: str, device: str) -> Any:
    """int8: torchao's int8 weight-only, in place; nf4: every Linear as a bitsandbytes Linear4bit (CUDA)."""
    import torch

    if weights == "int8":
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        except ImportError as exc:
            raise Skip(f"torchao missing ({exc})") from None
        quantize_(transformer, Int8WeightOnlyConfig())
    elif weights == "nf4":
        if not device.startswith("cuda"):
            raise Skip("nf4 needs CUDA (bitsandbytes 4-bit)")
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise Skip(f"bitsandbytes missing ({exc})") from None
        for parent in list(transformer.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:
                    layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                              compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
                    layer.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                    if child.bias is not None:
                        layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                    setattr(parent, name, layer.to(device))  # quantized on the way to the GPU
                    del child
    return transformer


def inputs(model: str, config: dict, noisy: int, cond: int, text_len: int, device: str, dtype: Any,
           batch_ids: bool = False) -> dict[str, Any]:
    """Random tokens and text for one `denoise` call; ids are the noisy grid and condition ids (values do not
    change the cost; per-sample (1, S, 3) ids with `batch_ids`, as the trainer's padded batches)."""
    import torch

    from layercomposer.conditioning import grid_ids
    from layercomposer.models.text import TextEmbeddings

    gen = torch.Generator().manual_seed(0)
    side = int(noisy ** 0.5)
    ids = torch.cat([torch.from_numpy(grid_ids(side, side, 0)).float(), torch.ones(cond, 3)])
    pooled = config.get("pooled_projection_dim", 1)
    text = TextEmbeddings(torch.randn(1, text_len, config["joint_attention_dim"], generator=gen).to(device, dtype),
                          torch.randn(1, pooled, generator=gen).to(device, dtype))
    return {
        "x_t": torch.randn(1, noisy, config["in_channels"], generator=gen).to(device, dtype),
        "cond": torch.randn(1, cond, config["in_channels"], generator=gen).to(device, dtype) if cond else None,
        "ids": ids[None] if batch_ids else ids, "text": text, "t": torch.full((1,), 0.5, device=device),
        "guidance": torch.full((1,), 2.5, device=device) if config["guidance_embeds"] else None,
    }


def timed(step: Any, device: str, steps: int, warmup: int) -> dict[str, Any]:
    """Median seconds of `step()` after warm-up and CUDA's peak allocation during the timed steps (None on CPU)."""
    import torch

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return {"seconds": statistics.median(times), "peak_bytes": peak}


def inference_rows(model: str, config: dict, weights: str, args: argparse.Namespace, clock: Any) -> list[dict]:
    import torch

    from layercomposer.models.denoiser import denoise

    dtype = torch.bfloat16
    rows: list[dict] = []
    grid = [(k, mode) for k in args.subjects for mode in MODES if not (mode == "none" and k != args.subjects[0])]
    if weights != "bf16":  # attention-bound configurations: the bf16 rows stand for them
        grid = [(k, mode) for k, mode in grid if not (mode == "unpruned" and k >= 8)]
    base = {"model": model, "weights": weights, "kind": "inference", "size": args.size}
    try:
        transformer = quantize(build(model, config, args.device, dtype), weights, args.device)
    except Skip as exc:
        return [{**base, "subjects": k, "mode": mode, "skipped": str(exc)} for k, mode in grid]
    except Exception as exc:  # out of memory while building, a quantization back-end failing: recorded
        release(args.device)
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        return [{**base, "subjects": k, "mode": mode, "error": error} for k, mode in grid]
    try:
        for k, mode in grid:
            row = {**base, "subjects": k, "mode": mode}
            counts = token_counts(k, args.size, args.share)
            row.update(tokens=counts[mode], noisy=counts["noisy"])
            if clock() > args.budget:
                rows.append({**row, "skipped": f"past the --budget of {args.budget:.0f} s"})
                continue
            try:
                call = inputs(model, config, counts["noisy"], counts[mode], args.text_len, args.device, dtype)
                with torch.no_grad():
                    row.update(timed(lambda call=call: denoise(transformer, **call), args.device, args.steps,
                                     args.warmup))
            except Exception as exc:  # out of memory, a kernel missing: recorded, the run goes on
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"{model:7s} {weights:4s} k={k:2d} {mode:8s} " + (f"{row['seconds'] * 1000:9.1f} ms"
                  if "seconds" in row else row.get("error", row.get("skipped", ""))), file=sys.stderr)
    finally:
        transformer = None  # the weights go before the next model is built
        release(args.device)
    return rows


def training_row(model: str, config: dict, args: argparse.Namespace, clock: Any) -> dict:
    """One optimizer step of a LoRA (the trainer's targets, rank `--rank`) on bf16 weights at `--train-size`."""
    import torch
    from peft import LoraConfig

    from layercomposer.models.attention import use_padded_batch_attention
    from layercomposer.models.denoiser import denoise
    from layercomposer.training.train import LORA_TARGETS

    counts = token_counts(4, args.train_size, args.share)
    row = {"model": model, "weights": "bf16", "kind": "train", "mode": "layered", "subjects": 4,
           "size": args.train_size, "rank": args.rank, "tokens": counts["layered"], "noisy": counts["noisy"]}
    if clock() > args.budget:
        return {**row, "skipped": f"past the --budget of {args.budget:.0f} s"}
    transformer = None
    try:
        transformer = build(model, config, args.device, torch.bfloat16)
        use_padded_batch_attention(transformer)
        transformer.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                           target_modules=getattr(transformer, "lora_targets", list(LORA_TARGETS))))
        transformer.enable_gradient_checkpointing()
        transformer.train()
        params = [p for p in transformer.parameters() if p.requires_grad]
        row["lora_parameters"] = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        call = inputs(model, config, counts["noisy"], counts["layered"], args.text_len, args.device, torch.bfloat16,
                      batch_ids=True)
        target = torch.randn_like(call["x_t"])

        def step() -> None:
            loss = torch.nn.functional.mse_loss(denoise(transformer, **call).float(), target.float())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        row.update(timed(step, args.device, args.steps, args.warmup))
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    finally:
        transformer = None  # the weights go before the next model is built
        release(args.device)
    print(f"{model:7s} train rank {args.rank} " + (f"{row['seconds'] * 1000:9.1f} ms" if "seconds" in row
          else row.get("error", "")), file=sys.stderr)
    return row


def release(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    return f"{platform.machine()} CPU, torch {torch.__version__}"


def ratios(rows: list[dict]) -> None:
    floors = {(r["model"], r["weights"]): r["seconds"] for r in rows
              if r["kind"] == "inference" and r["mode"] == "none" and "seconds" in r}
    for r in rows:
        floor = floors.get((r["model"], r["weights"]))
        if r["kind"] == "inference" and floor and "seconds" in r:
            r["x_floor"] = r["seconds"] / floor


def section(doc: dict) -> str:
    """The GPU section of docs/BENCHMARKS.md (between the markers)."""
    lines = [START, f"## GPU check: FLUX.1 Kontext and FLUX.2 [klein] 4B{' (toy sizes)' if doc['toy'] else ''}", "",
             f"Machine: {doc['machine']}. Command: `{doc['command']}` ({doc['seconds']:.0f} s; median of "
             f"{doc['steps']} steps after {doc['warmup']} warm-up; random weights at "
             f"{'toy' if doc['toy'] else 'the real'} sizes, {doc['size']} px, {doc['text_len']} text tokens; peak "
             "memory is CUDA's peak allocation, weights included). Ratios are to the text-to-image floor of the "
             "same transformer and weights.", "",
             "| model | weights | mode | subjects | condition tokens | ms / step | x floor | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(r: dict) -> tuple[str, str, str]:
        if "seconds" not in r:
            return (r.get("skipped") and f"skipped: {r['skipped']}") or f"error: {r.get('error', '?')}", "", ""
        peak = "n/a (CPU)" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.1f}"
        ratio = f"{r['x_floor']:.2f}" if "x_floor" in r else ""
        return f"{r['seconds'] * 1000:.1f}", ratio, peak

    skipped_all = set()
    for model, weights in {(r["model"], r["weights"]) for r in doc["rows"] if r["kind"] == "inference"}:
        group = [r for r in doc["rows"] if r["kind"] == "inference" and (r["model"], r["weights"]) == (model, weights)]
        if len({r.get("skipped") for r in group}) == 1 and group[0].get("skipped"):
            skipped_all.add((model, weights))
    for r in doc["rows"]:
        if r["kind"] == "inference" and (r["model"], r["weights"]) in skipped_all:
            if r is next(x for x in doc["rows"] if (x["model"], x["weights"]) == (r["model"], r["weights"])):
                lines.append(f"| {r['model']} | {r['weights']} | all | | | skipped: {r['skipped']} | | |")
            continue
        if r["kind"] == "inference":
            ms, ratio, peak = cell(r)
            lines.append(f"| {r['model']} | {r['weights']} | {r['mode']} | {r['subjects']} | {r.get('tokens', '')} | "
                         f"{ms} | {ratio} | {peak} |")
    lines += ["", "One LoRA training step (bf16 weights, gradient checkpointing, AdamW, the trainer's padded-batch "
              "call on a layered canvas of 4 subjects):", "",
              "| model | size | rank | LoRA parameters | tokens (noisy + condition) | ms / step | peak GiB |",
              "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if r["kind"] == "train":
            ms, _, peak = cell(r)
            lines.append(f"| {r['model']} | {r['size']} px | {r['rank']} | {r.get('lora_parameters', '')} | "
                         f"{r['noisy']} + {r['tokens']} | {ms} | {peak} |")
    return "\n".join([*lines, "", END])


def write_section(report: Path, text: str) -> None:
    """Put `text` between the markers of `report` (appended when it has none); the rest stays as it is."""
    old = report.read_text() if report.is_file() else "# Benchmarks\n"
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--toy", action="store_true", help="tiny transformers and sizes: the code path on a CPU")
    parser.add_argument("--models", default="kontext,klein")
    parser.add_argument("--weights", default=",".join(WEIGHTS), help="bf16, int8, nf4 (comma-separated)")
    parser.add_argument("--size", type=int, default=None, help="canvas side (default 1024; toy 128)")
    parser.add_argument("--train-size", type=int, default=None, help="training canvas side (default 512; toy 64)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank of the training step (default 512; toy 4)")
    parser.add_argument("--subjects", default=None, help="comma-separated (default 1,2,4,8,16; toy 1,2)")
    parser.add_argument("--share", type=float, default=0.05, help="canvas share of each subject")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget", type=float, default=450.0, help="seconds after which configurations are skipped")
    parser.add_argument("--kontext-config", default=None, help="a real FLUX.1 Kontext transformer/config.json")
    parser.add_argument("--klein-config", default=None, help="a real FLUX.2 [klein] transformer/config.json")
    parser.add_argument("--json", default="docs/benchmarks/gpu-check.json")
    parser.add_argument("--report", default="docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --toy --device cpu to run the code path)", file=sys.stderr)
        return 2
    args.size = args.size or (128 if args.toy else 1024)
    args.train_size = args.train_size or (64 if args.toy else 512)
    args.rank = args.rank or (4 if args.toy else 512)
    args.subjects = tuple(int(k) for k in (args.subjects or ("1,2" if args.toy else "1,2,4,8,16")).split(","))
    args.text_len = 16 if args.toy else 512
    configs = {"kontext": dict(TOY_KONTEXT if args.toy else KONTEXT), "klein": dict(TOY_KLEIN if args.toy else KLEIN)}
    for name, path in (("kontext", args.kontext_config), ("klein", args.klein_config)):
        if path:
            real = json.loads(Path(path).read_text())
            configs[name] = {k: v for k, v in real.items() if not k.startswith("_")}
    models = [m for m in args.models.split(",") if m]
    weights = [w for w in args.weights.split(",") if w]
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    rows: list[dict] = []
    try:
        # The essentials first (bf16 and the training step), then the quantized weights while the budget lasts.
        for model in models:
            if "bf16" in weights:
                rows += inference_rows(model, configs[model], "bf16", args, clock)
        for model in models:
            rows.append(training_row(model, configs[model], args, clock))
        for weight in [w for w in weights if w != "bf16"]:
            for model in models:
                rows += inference_rows(model, configs[model], weight, args, clock)
    except KeyboardInterrupt:
        print("gpu_check: interrupted; writing what was measured", file=sys.stderr)
    except Exception:  # never lose the measured rows
        traceback.print_exc()
    ratios(rows)
    command = "python benchmarks/gpu_check.py" + (" --toy --device " + args.device if args.toy else "")
    doc = {"machine": machine(args.device), "device": args.device, "toy": args.toy, "command": command,
           "size": args.size, "text_len": args.text_len, "steps": args.steps, "warmup": args.warmup,
           "share": args.share, "seconds": clock(), "rows": rows}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    write_section(Path(args.report), section(doc))
    print(f"wrote {out} and the GPU section of {args.report} ({clock():.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
