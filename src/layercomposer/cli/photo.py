"""Photo commands: `cutout`, `scenes build` and `photos canvases|batch` (the photo extra)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import LayerComposerError
from .common import EXIT_BAD_INPUT, check_output, save_image


def add_photo_parsers(sub: Any) -> None:
    """`cutout`, `scenes build`, `photos canvases|batch`."""
    cut = sub.add_parser("cutout", help="cut a person or an object out of a photo into an RGBA layer",
                         description="Cut the subject out of a photo: a person (MediaPipe selfie segmentation, "
                         "default) or an object in a box (OpenCV GrabCut); clean, feathered alpha; cropped to the "
                         "content. Needs the photo extra: pip install \"layercomposer[photo]\".")
    cut.add_argument("photo", metavar="PHOTO", help="photo file (.png, .jpg, .webp, ...)")
    cut.add_argument("-o", "--output", required=True, help="output layer (.png or .webp keep transparency)")
    how = cut.add_mutually_exclusive_group()
    how.add_argument("--person", action="store_true", help="segment the person (default)")
    how.add_argument("--box", metavar="X0,Y0,X1,Y1", help="GrabCut the object inside this box (pixels)")
    cut.set_defaults(func=cmd_cutout)

    sc = sub.add_parser("scenes", help="training scenes from photos")
    sc_sub = sc.add_subparsers(dest="scenes_command", required=True, metavar="SCENES_COMMAND")
    sb = sc_sub.add_parser("build", help="turn folders of photos of the same people into training scenes",
                           description="One sub-folder of PHOTOS_DIR per scene (several photos of the same "
                           "people) -> docs/DESIGN.md section 4 scenes: one layer per person per photo, identities "
                           "matched across photos by face embedding, background with the people inpainted away. "
                           "Prompt: <photo>.txt, else the scene's prompt.txt, else --template. Needs the photo "
                           "extra.")
    sb.add_argument("photos", metavar="PHOTOS_DIR")
    sb.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder (one per scene)")
    sb.add_argument("--max-people", type=int, default=4, help="skip photos with more people (default 4)")
    sb.add_argument("--min-face", type=int, default=32, help="smaller faces (px) are not subjects (default 32)")
    sb.add_argument("--max-side", type=int, default=1024, help="downscale larger photos to this (default 1024)")
    sb.add_argument("--min-score", type=float, default=0.6, help="face detection confidence (default 0.6)")
    sb.add_argument("--template", default="a photo of {people}",
                    help="prompt without a sidecar text; {people} and {n} are filled in (default: %(default)r)")
    sb.add_argument("--embedder", choices=("auto", "dlib", "hog-colour"), default="auto",
                    help="face embedding for identities (auto: dlib when installed, else the weak hog-colour)")
    sb.add_argument("--overwrite", action="store_true", help="replace scenes that exist in OUT_DIR")
    sb.set_defaults(func=cmd_scenes_build)

    ph = sub.add_parser("photos", help="photo benchmark tools")
    ph_sub = ph.add_subparsers(dest="photos_command", required=True, metavar="PHOTOS_COMMAND")
    pc = ph_sub.add_parser("canvases", help="a benchmark canvas: identities placed on a prior image's faces",
                           description="Cut each identity photo's person out and place it on a face of the prior "
                           "image (faces paired left to right; one person aligned by the eyes). Writes a canvas "
                           "(.json with images beside it, or .lcz). Needs the photo extra.")
    prior = pc.add_mutually_exclusive_group(required=True)
    prior.add_argument("--prior", help="prior image (its faces give the layout)")
    prior.add_argument("--prior-model", metavar="DIR|HUB_ID",
                       help="make the prior from --prompt with this text-to-image model (a diffusers folder or a hub "
                       "id in the local cache: FLUX.1, SDXL, SD3, Qwen-Image, ...)")
    pc.add_argument("--identity", action="append", required=True, metavar="PHOTO",
                    help="identity photo, repeatable (one per face of the prior)")
    pc.add_argument("--prompt", default=None, help="the canvas's prompt")
    pc.add_argument("--with-prior", action="store_true", help="also put the prior in as the background layer")
    pc.add_argument("--collage", default=None, help="also write the flattened collage (image file)")
    pc.add_argument("-o", "--output", required=True, help="output canvas (.json or .lcz)")
    pc.add_argument("--save-prior", default=None, metavar="IMAGE", help="also write the generated prior")
    add_prior_arguments(pc)
    pc.set_defaults(func=cmd_photos_canvases)
    pb = ph_sub.add_parser("batch", help="many benchmark canvases from a JSON spec of prompts and identity sets",
                           description="For each item of SPEC (name, prompt, identity photos, optional prior image "
                           "and seed), place the identities on the prior's faces; items without a prior get one "
                           "from --prior-model. Writes OUT/<name>.lcz, OUT/collages/<name>.png and "
                           "OUT/priors/<name>.png; existing canvases are skipped (--overwrite to redo). The spec "
                           "format is in layercomposer/photo/batch.py. Needs the photo extra.")
    pb.add_argument("spec", metavar="SPEC_JSON")
    pb.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    pb.add_argument("--prior-model", metavar="DIR|HUB_ID", default=None,
                    help="text-to-image model for items without a prior image")
    pb.add_argument("--overwrite", action="store_true", help="redo items whose canvas exists")
    add_prior_arguments(pb)
    pb.set_defaults(func=cmd_photos_batch)


def add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prior generation (with --prior-model)")
    group.add_argument("--prior-steps", type=int, default=28, help="sampling steps (default 28)")
    group.add_argument("--prior-guidance", type=float, default=None, help="guidance scale (default: the model's)")
    group.add_argument("--prior-size", default=None, metavar="WxH",
                       help="prior size, rounded down to 16 px (default: the spec's, else 1024x1024)")
    group.add_argument("--seed", type=int, default=0,
                       help="prior seed (batch: for items without a seed of their own; default 0)")
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                       help="prior model dtype (auto: bfloat16 on CUDA, float32 on the CPU)")


def cmd_cutout(args: argparse.Namespace) -> int:
    from ..photo.cutout import cutout, load_photo, parse_box

    output = check_output(args.output)
    box_text = args.box
    if box_text is not None:
        parse_box(box_text)  # syntax first, before reading the photo
    photo = load_photo(args.photo)
    box = parse_box(box_text, photo.size) if box_text is not None else None
    result = cutout(photo, box=box)
    x0, y0, x1, y1 = result.box
    save_image(result.layer, output, metadata={"source": str(args.photo), "box": [x0, y0, x1, y1],
                                                "method": result.method})
    print(f"wrote {output} ({result.layer.width}x{result.layer.height}, at {x0},{y0} in the "
          f"{photo.width}x{photo.height} photo; {result.method})", file=sys.stderr)
    return 0


def cmd_scenes_build(args: argparse.Namespace) -> int:
    from ..photo.scene_builder import BuildOptions, build_scenes

    options = BuildOptions(max_people=args.max_people, min_face=args.min_face, max_side=args.max_side,
                           min_score=args.min_score, template=args.template, embedder=args.embedder,
                           overwrite=args.overwrite)
    report = build_scenes(args.photos, args.output, options,
                          warn=lambda line: print(f"layercomposer: {line}", file=sys.stderr))
    print(f"wrote {len(report.scenes)} scenes ({report.images} images, {len(report.skipped)} photos skipped) to "
          f"{args.output}; identities by {report.embedder}", file=sys.stderr)
    return 0


def cmd_photos_canvases(args: argparse.Namespace) -> int:
    from ..photo.canvases import benchmark_canvas
    from ..photo.cutout import load_photo

    output = Path(args.output)
    if output.suffix.lower() not in (".json", ".lcz"):
        raise LayerComposerError(f"--output {args.output}: must be a .json canvas or a .lcz bundle")
    if output.parent != Path() and not output.parent.is_dir():
        raise LayerComposerError(f"--output {args.output}: folder {output.parent} does not exist")
    collage = check_output(args.collage) if args.collage else None
    save_prior = check_output(args.save_prior) if args.save_prior else None
    identities = [load_photo(p) for p in args.identity]  # bad photos fail before a (slow) prior model loads
    if args.prior_model:
        if not args.prompt:
            raise LayerComposerError("--prior-model: the prior is made from --prompt; give one")
        settings = _prior_settings(args, None, None)
        prior = _load_prior_model(args)(args.prompt, settings)
        if save_prior is not None:
            save_image(prior, save_prior, metadata={"prompt": args.prompt, "model": args.prior_model,
                                                     "seed": settings.seed, "steps": settings.steps})
    else:
        prior = load_photo(args.prior)
    names = [Path(p).stem or f"identity{i}" for i, p in enumerate(args.identity)]
    if len(set(names)) != len(names):
        names = [f"identity{i}" for i in range(len(names))]
    canvas = benchmark_canvas(prior, identities, prompt=args.prompt, names=names, with_prior=args.with_prior)
    canvas.save(output)
    if collage is not None:
        save_image(canvas.flatten(), collage, metadata={"canvas": str(output)})
    how = ", ".join(f"{layer.name}: {layer.meta.get('aligned_by')}" for layer in canvas.layers if layer.meta)
    print(f"wrote {output} ({canvas.width}x{canvas.height}, {len(identities)} identities placed; {how})",
          file=sys.stderr)
    return 0


def cmd_photos_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..photo.batch import load_batch_spec, run_batch

    spec = load_batch_spec(args.spec)
    settings = _prior_settings(args, spec.width, spec.height)
    if spec.needs_prior_model and not args.prior_model:
        missing = [item.name for item in spec.items if item.prior is None]
        raise LayerComposerError(f"{args.spec}: {len(missing)} item(s) without a prior ({missing[0]}, ...): give "
                                 "each a prior image, or --prior-model")
    prior_model = _load_prior_model(args) if spec.needs_prior_model else None
    bar = tqdm(total=len(spec.items), desc="canvases", unit="canvas", file=sys.stderr, dynamic_ncols=True)

    def on_item(name: str, status: str) -> None:
        bar.update(1)
        if status != "written":
            bar.write(f"layercomposer: {name}: {status}", file=sys.stderr)

    try:
        report = run_batch(spec, args.output, prior_model, settings, overwrite=args.overwrite, on_item=on_item)
    finally:
        bar.close()
    print(f"wrote {len(report.written)} canvases to {args.output} ({len(report.skipped)} already there, "
          f"{len(report.failed)} failed)", file=sys.stderr)
    return EXIT_BAD_INPUT if report.failed else 0


def _prior_settings(args: argparse.Namespace, width: int | None, height: int | None) -> Any:
    from ..photo.prior import PriorSettings, fit_prior_size

    if not 1 <= args.prior_steps <= 1000:
        raise LayerComposerError(f"--prior-steps: must be between 1 and 1000, got {args.prior_steps}")
    if args.prior_size:
        match = re.fullmatch(r"(\d+)x(\d+)", args.prior_size)
        if not match:
            raise LayerComposerError(f"--prior-size: WIDTHxHEIGHT in pixels, got {args.prior_size!r}")
        width, height = int(match[1]), int(match[2])
    w, h = fit_prior_size(width, height)
    return PriorSettings(steps=args.prior_steps, guidance=args.prior_guidance, seed=args.seed, width=w, height=h)


def _load_prior_model(args: argparse.Namespace) -> Any:
    from diffusers.utils import logging as diffusers_logging

    from ..photo.prior import PriorModel

    diffusers_logging.disable_progress_bar()  # loading bars; the sampling bar stays (desc "prior")
    print(f"layercomposer: loading prior model {args.prior_model}", file=sys.stderr)
    return PriorModel(args.prior_model, device=args.device, dtype=args.dtype)
