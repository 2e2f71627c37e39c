"""Rendering commands: `generate`, `refine`, `tokens`, `flatten`, `models`, and the token limit that refuses an
over-size canvas before any model loads."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import LayerComposerError
from ..settings import DEFAULT_MAX_TOKENS, GUIDANCE, SEED, STEPS, STRENGTH
from .common import (
    add_memory_arguments,
    check_model_name,
    check_output,
    default_model,
    load_options,
    load_pipeline,
    save_image,
)


def add_canvas_parsers(sub: Any) -> None:
    """`generate`, `tokens`, `flatten`, `models`."""
    from ..conditioning import MODES, PRUNE_RULES

    gen = sub.add_parser("generate", help="render a canvas into a picture",
                         description="Render a canvas (.json or .lcz) into a picture with a model.")
    gen.add_argument("canvas", metavar="CANVAS", help="canvas .json file or .lcz bundle")
    gen.add_argument("-o", "--output", default="out.png", help="output image (.png, .jpg, .webp); default out.png")
    gen.add_argument("--prompt", help="prompt (default: the canvas's own)")
    gen.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    gen.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 28)")
    gen.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    gen.add_argument("--model", default=None,
                     help="model name (demo, demo-collage, tiny-random) or directory (default: demo): ours, a FLUX.1 "
                     "Kontext or a FLUX.2 [klein] folder; on a Kontext or klein base without a layered LoRA (--lora) "
                     "the picture is the base model's guess at our conditioning")
    gen.add_argument("--mode", choices=MODES, default="layered",
                     help="conditioning: layered (pruned, default), unpruned, or collage (flattened)")
    gen.add_argument("--hard-lock", action="store_true",
                     help="also hold the latent pixels showing only locked layers to their latents while sampling "
                     "(inpainting-style; exact locked pixels up to the VAE)")
    gen.add_argument("--strength", type=float, default=1.0,
                     help="image-to-image: start from the flattened canvas and run this share of the steps "
                     "(0-1; lower keeps the canvas as drawn, 1 = from noise, the default)")
    gen.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                     help="LoRA file (diffusers/peft or kohya format), repeatable; scale defaults to 1")
    gen.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                     help="refuse a canvas of more tokens than this (noisy + condition; default "
                     f"{DEFAULT_MAX_TOKENS}, about 1024x1024 px): time and memory grow with it, the largest "
                     "canvas (4096x4096) runs for hours on a CPU")
    add_memory_arguments(gen)
    gen.set_defaults(func=cmd_generate, quick_exit=True)

    tok = sub.add_parser("tokens", help="conditioning token statistics of a canvas (no model)",
                         description="Count the conditioning tokens a canvas gives, per layer and per mode.")
    tok.add_argument("canvas", metavar="CANVAS")
    tok.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tok.add_argument("--model", default=None,
                     help="count as this model does (its merged locked layers and pruning rule, read from its "
                     "model_index.json; no weights loaded); default: one group per layer, centre pruning "
                     "(docs/DESIGN.md section 3)")
    tok.add_argument("--merge-locked", action="store_true",
                     help="count as a model with merged locked layers does (one group for all locked layers)")
    tok.add_argument("--prune", choices=PRUNE_RULES, default=None,
                     help="pruning rule: centre (the default, docs/DESIGN.md section 3: a cell is kept iff its "
                     "centre pixel is opaque) or cover (iff any of its pixels is)")
    tok.set_defaults(func=cmd_tokens)

    flat = sub.add_parser("flatten", help="flatten a canvas into its rough collage",
                          description="Alpha-composite the visible layers back to front into one image.")
    flat.add_argument("canvas", metavar="CANVAS")
    flat.add_argument("-o", "--output", required=True, help="output image (.png keeps transparency)")
    flat.set_defaults(func=cmd_flatten)

    models = sub.add_parser("models", help="list the named models")
    models.set_defaults(func=cmd_models)


def add_refine_parser(sub: Any) -> None:
    """`refine`."""
    ref = sub.add_parser("refine", help="refine a rough collage with an image-editing model",
                         description="Flatten a canvas (or take a collage image) and have an instruction "
                         "image-editing model make it one natural picture (FLUX.1 Kontext, FLUX.2 [klein], "
                         "Qwen-Image-Edit, or demo-collage).")
    ref.add_argument("source", metavar="CANVAS|IMAGE", help="canvas .json / .lcz, or a collage image")
    ref.add_argument("-o", "--output", default="refined.png")
    ref.add_argument("--model", default=None,
                     help="FLUX.1 Kontext (backend kontext), FLUX.2 [klein] (backend klein) or "
                     "Qwen-Image-Edit(-Plus) (backend qwen) folder or cached hub id, or demo-collage (default)")
    ref.add_argument("--backend", choices=("kontext", "klein", "qwen", "demo"), default=None,
                     help="default: kontext for a FLUX.1 Kontext model, klein for a FLUX.2 [klein] model, qwen for "
                     "a Qwen-Image-Edit(-Plus) model, demo otherwise")
    ref.add_argument("--layers-as-references", action="store_true",
                     help="qwen backend with a Plus model: also pass each visible layer as a reference image; klein "
                     "backend: each unlocked layer, up to klein's 4 images (the collage included)")
    ref.add_argument("--instruction", default=None, help="editing instruction (default: make it one photo)")
    ref.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]", help="LoRA file, repeatable")
    ref.add_argument("--trigger", default=None, help="trigger phrase to prepend (known collage LoRAs: automatic)")
    ref.add_argument("--steps", type=int, default=28)
    ref.add_argument("--guidance", type=float, default=None)
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--device", default=None)
    ref.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                     help="refuse a source of more tokens than this (noisy + the collage, one token per 16x16 px; "
                     f"the demo backend counts a canvas as the collage mode does; default {DEFAULT_MAX_TOKENS}, "
                     "about 1024x1024 px)")
    add_memory_arguments(ref, dtype=False, vae_tiling=False)
    ref.set_defaults(func=cmd_refine, quick_exit=True)


def cmd_generate(args: argparse.Namespace) -> int:
    from ..canvas import load_canvas

    model = args.model or default_model()
    check_model_name(model)
    output = check_output(args.output)
    canvas = load_canvas(args.canvas)  # bad input fails before the (slow) model load
    if canvas.size_note():
        print(f"layercomposer: note: {canvas.size_note()}", file=sys.stderr)
    check_settings(args)
    if args.strength < 1.0 and not canvas.visible_layers():
        raise LayerComposerError("--strength: below 1 needs a visible layer to start from")
    _check_token_count(canvas, model, args.mode, args.max_tokens, args.steps, args.device, args.dtype)
    from ..models.flux import parse_lora_spec

    for spec in args.lora:
        parse_lora_spec(spec)  # a missing file fails before the model load

    load = load_options(args)
    t0 = time.perf_counter()
    pipe = load_pipeline(model, args.device, args.dtype, args.offload, args.vae_tiling, load,
                          args.attention_backend)
    pipe.load_loras(args.lora)
    load_s = time.perf_counter() - t0

    from tqdm import tqdm

    from ..pipeline import skipped_steps

    steps = args.steps or pipe.default_steps
    steps_run = steps - skipped_steps(steps, args.strength)
    bar = tqdm(total=steps_run, desc="sampling", unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        result = pipe.generate(canvas, prompt=args.prompt, num_inference_steps=args.steps,
                               guidance_scale=args.guidance, seed=args.seed, mode=args.mode,
                               callback=lambda event: bar.update(1), hard_lock=args.hard_lock,
                               strength=args.strength)
    finally:
        bar.close()
    settings = {**result.settings(), "model": model, "canvas": str(args.canvas)}
    save_image(result.image, output, metadata=settings)
    plan = result.plan
    held = "" if result.hard_locked is None else f", {result.hard_locked} latent pixels (8 px) hard-locked"
    if result.strength < 1.0:
        held += f", strength {result.strength:g}: {steps_run} of {steps} steps"
    print(
        f"wrote {output} ({result.image.width}x{result.image.height}, {plan.total} condition tokens "
        f"[{plan.mode}] + {plan.noisy} noisy{held}; load {load_s:.1f}s, condition {result.seconds['condition']:.1f}s, "
        f"sample {result.seconds['sample']:.1f}s, decode {result.seconds['decode']:.1f}s)",
        file=sys.stderr,
    )
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from ..canvas import load_canvas
    from ..conditioning import TokenRules, token_stats

    rules = TokenRules()
    if args.model:
        from ..models.registry import resolve_model, token_rules

        resolve_model(args.model)  # a model that does not exist is an error here, not the default rules
        rules = token_rules(args.model)
    rules = TokenRules(args.merge_locked or rules.merge_locked, args.prune or rules.prune)
    canvas = load_canvas(args.canvas)
    stats = token_stats(canvas, rules=rules)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    rows, cols = stats["grid"]
    w, h = canvas.generation_size
    print(f"canvas {canvas.width}x{canvas.height}, generated at {w}x{h}: grid {rows}x{cols} = {rows * cols} "
          f"noisy tokens")
    name_w = max([5, *(len(layer["name"]) for layer in stats["layers"])])
    print(f"{'layer':<{name_w}}  {'locked':>6}  {'index':>5}  {'tokens':>6}  {'coverage':>8}")
    for layer in stats["layers"]:
        print(f"{layer['name']:<{name_w}}  {'yes' if layer['locked'] else 'no':>6}  {layer['index']:>5}  "
              f"{layer['tokens']:>6}  {100 * layer['coverage']:>7.1f}%")
    if stats["hidden"]:
        print(f"hidden (no tokens): {', '.join(stats['hidden'])}")
    print(f"condition tokens: layered {stats['total']}, unpruned {stats['unpruned_total']}, "
          f"collage {stats['collage_total']}")
    return 0


def cmd_flatten(args: argparse.Namespace) -> int:
    from ..canvas import load_canvas

    output = check_output(args.output)
    canvas = load_canvas(args.canvas)
    save_image(canvas.flatten(), output, metadata={"canvas": str(args.canvas)})
    print(f"wrote {output} ({canvas.width}x{canvas.height}, {len(canvas.visible_layers())} visible layers)",
          file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.registry import REGISTRY, shipped_models

    default = default_model()
    for name, path in shipped_models().items():
        print(f"{name:<14} shipped   {path}{'  (default)' if name == default else ''}")
    for name, config in REGISTRY.items():
        print(f"{name:<14} random    {config.description}{'  (default)' if name == default else ''}")
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    check_model_name(args.model or "demo-collage")
    from ..canvas import load_canvas
    from ..imageio import decode_image
    from ..models.flux import parse_lora_spec
    from ..models.registry import resolve_model

    output = check_output(args.output)
    source_path = Path(args.source)
    if source_path.suffix.lower() in (".json", ".lcz"):
        source = load_canvas(source_path)
    else:
        from ..canvas import read_regular_file
        from ..imageio import MAX_IMAGE_BYTES

        source = decode_image(read_regular_file(source_path, MAX_IMAGE_BYTES, args.source, "an image file"),
                              args.source)
    check_settings(args)
    for spec in args.lora:
        parse_lora_spec(spec)
    model = args.model or "demo-collage"

    from tqdm import tqdm

    from ..modelcheck import check_model
    from ..refine import RefineEngine, RefineSettings, auto_backend, instruction_text

    check_model(model)
    backend = args.backend or auto_backend(resolve_model(model))
    _check_refine_token_count(source, backend, model, args.max_tokens, args.steps, args.device)

    settings = RefineSettings(instruction=args.instruction, steps=args.steps, guidance=args.guidance,
                              seed=args.seed, loras=args.lora, trigger=args.trigger,
                              layers_as_references=args.layers_as_references)
    engine = RefineEngine(model, backend, args.device, args.lora, load=load_options(args), offload=args.offload,
                          attention_backend=args.attention_backend)
    bar = tqdm(total=args.steps, desc="refining", unit="step", file=sys.stderr, leave=False)
    try:
        image = engine(source, settings, callback=lambda event: bar.update(1))
    finally:
        bar.close()
    from ..refine import KLEIN_LAYOUT_NOTE, LAYOUT_NOTE

    note = KLEIN_LAYOUT_NOTE if backend == "klein" else LAYOUT_NOTE
    text = instruction_text(settings, note) if backend in ("kontext", "klein", "qwen") \
        else (args.instruction or "(canvas prompt)")
    save_image(image, output, metadata={"engine": "refine", "backend": backend, "model": model,
                                         "instruction": text, "seed": args.seed, "steps": args.steps})
    print(f"wrote {output} ({image.width}x{image.height}, refine/{backend}: {text!r})", file=sys.stderr)
    return 0


def check_settings(args: argparse.Namespace) -> None:
    """The generation settings of `generate` and `refine` against the limits every entry point shares
    (`layercomposer.settings`), before any model loads."""
    for flag, limit in (("steps", STEPS), ("guidance", GUIDANCE), ("seed", SEED), ("strength", STRENGTH)):
        value = getattr(args, flag, None)
        if value is not None:
            limit.check(value, f"--{flag}")


def _check_token_count(canvas: Any, model: str, mode: str, limit: int, steps: int | None = None,
                       device: str | None = None, dtype: str = "auto") -> None:
    """Refuse a canvas whose token count (noisy + condition, as `model` counts) is above `limit`, in one line,
    before the model is loaded: time and memory of sampling grow with it."""
    _check_limit(limit)
    from ..conditioning import ConditioningBuilder
    from ..models.registry import token_rules

    plan = ConditioningBuilder(max_entries=0, rules=token_rules(model)).plan(canvas, mode)
    w, h = canvas.generation_size
    _refuse_above(plan.total + plan.noisy, f"{plan.noisy} noisy for {w}x{h} px + {plan.total} condition, {mode}",
                  "canvas", model, limit, steps, device, dtype)


def _check_refine_token_count(source: Any, backend: str, model: str, limit: int, steps: int,
                              device: str | None) -> None:
    """`_check_token_count` for `refine`: the demo backend counts a canvas as the collage mode does; the other
    backends get the flattened collage whole, one token per 16x16 px, next to as many noisy tokens (the
    reference images of --layers-as-references are not counted)."""
    _check_limit(limit)
    from ..canvas import Canvas

    if backend == "demo":
        from ..refine import _image_canvas

        canvas = source if isinstance(source, Canvas) else _image_canvas(source.convert("RGB"))
        _check_token_count(canvas, model, "collage", limit, steps, device)
        return
    w, h = source.generation_size if isinstance(source, Canvas) else source.size
    grid = (w // 16) * (h // 16)
    _refuse_above(2 * grid, f"{grid} noisy for {w // 16 * 16}x{h // 16 * 16} px + {grid} of the collage",
                  "canvas" if isinstance(source, Canvas) else "image", model, limit, steps, device, "auto")


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise LayerComposerError(f"--max-tokens: must be at least 1, got {limit}")


def _refuse_above(total: int, what: str, name: str, model: str, limit: int, steps: int | None,
                  device: str | None, dtype: str) -> None:
    if total <= limit:
        return
    from ..models.cost import DEFAULT_STEPS, estimate_attention

    cpu = _runs_on_cpu(device)
    width = 4 if dtype == "float32" or (dtype == "auto" and cpu) else 2
    estimate = estimate_attention(total, model, bytes_per_element=width, cpu=cpu)
    raise LayerComposerError(
        f"{name}: {total} tokens ({what}) is above --max-tokens {limit}: {estimate.describe(steps or DEFAULT_STEPS)};"
        " make the canvas smaller or raise --max-tokens")


def _runs_on_cpu(device: str | None) -> bool:
    """Whether a command's --device means the CPU (no device: the CPU unless CUDA is available)."""
    if device is not None:
        return device.split(":")[0] == "cpu"
    import torch

    return not torch.cuda.is_available()
