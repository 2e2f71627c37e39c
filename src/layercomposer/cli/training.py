"""Training commands: `train`, `train-export`, `train-vae`, and `world` (the sprites scenes they train on)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import LayerComposerError


def add_training_parsers(sub: Any) -> None:
    """`train`, `train-export`, `train-vae`, `world generate|examples`."""
    from ..training.config import add_train_arguments, add_vae_arguments

    tr = sub.add_parser("train", help="train a model on scenes (full or LoRA; accelerate)",
                        description="Locking-aware flow-matching training of a FLUX transformer, full or LoRA. "
                        "Also runs as `accelerate launch -m layercomposer.training.train ...`.")
    add_train_arguments(tr)
    tr.set_defaults(func=cmd_train)
    te = sub.add_parser("train-export", help="export one checkpoint of a training run as a model folder",
                        description="Turn a checkpoint of a full-training run into a pipeline folder that "
                        "--model accepts (the newest one unless --step is given).")
    te.add_argument("run", help="the run folder given to `train --output`")
    te.add_argument("-o", "--output", required=True, help="new model folder")
    te.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    te.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    te.add_argument("--name", default=None, help="model name stored in the folder (default: its folder name)")
    te.add_argument("--guidance", type=float, default=None, help="default guidance scale stored in the folder")
    te.add_argument("--vae", default=None, metavar="DIR",
                    help="use this VAE instead of the run's (a decoder fine-tuned with train-vae --decoder-only)")
    te.add_argument("--no-ema", dest="ema", action="store_false",
                    help="export the raw weights of a run trained with --ema-decay (default: the averaged ones)")
    te.set_defaults(func=cmd_train_export)
    tv = sub.add_parser("train-vae", help="train the demo model's VAE on scenes",
                        description="Train a small AutoencoderKL on scene pictures and layers (the demo's VAE).")
    add_vae_arguments(tv)
    tv.set_defaults(func=cmd_train_vae)

    world = sub.add_parser("world", help="the sprites world: generate scenes")
    world_sub = world.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND")
    wg = world_sub.add_parser("generate", help="write sprites scenes in the training format")
    wg.add_argument("--out", required=True, help="output folder (one sub-folder per scene)")
    wg.add_argument("--scenes", type=int, required=True, help="number of scenes")
    wg.add_argument("--seed", type=int, default=0)
    wg.add_argument("--size", type=int, default=256, help="picture size in px (multiple of 16, 128..1024)")
    wg.add_argument("--split", choices=("train", "heldout"), default="train",
                    help="identities: train, or held-out (never seen in training)")
    wg.add_argument("--pose-spread", type=float, default=1.0, metavar="S",
                    help="how far a character's pose varies between the pictures of a scene: 0 the same pose "
                         "(only light, place and size change), 1 a fresh pose each time (default)")
    wg.add_argument("--heights", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="draw body heights from this range (fractions of the picture; default: 0.17-0.36, "
                         "smaller with more characters)")
    wg.add_argument("--characters", type=int, default=None, metavar="N",
                    help="characters per scene, 1..6 (default: 1-4 drawn at random)")
    wg.add_argument("--width", type=int, default=None, metavar="PX",
                    help="picture width in px, for non-square pictures of --size px height (multiple of 16, "
                         "width / height within 2/3..1.5; default: square)")
    wg.set_defaults(func=cmd_world_generate)
    we = world_sub.add_parser("examples", help="write the example canvases (held-out identities)")
    we.add_argument("--out", default="examples", help="output folder (default examples/)")
    we.set_defaults(func=cmd_world_examples)


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import train_config_from_args
    from ..training.train import train

    train(train_config_from_args(args))
    return 0


def cmd_train_export(args: argparse.Namespace) -> int:
    from ..training.train import export_checkpoint

    out = export_checkpoint(args.run, args.output, step=args.step, dtype=args.dtype, name=args.name,
                            guidance_scale=args.guidance, ema=args.ema, vae=args.vae)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_train_vae(args: argparse.Namespace) -> int:
    from ..training.config import vae_config_from_args
    from ..training.vae import train_vae

    out = train_vae(vae_config_from_args(args))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_world_generate(args: argparse.Namespace) -> int:
    from ..world import generate_dataset
    from ..world.generator import MAX_CHARACTERS, check_width

    if not 1 <= args.scenes <= 1_000_000:
        raise LayerComposerError(f"--scenes: must be between 1 and 1000000, got {args.scenes}")
    if args.size % 16 or not 128 <= args.size <= 1024:
        raise LayerComposerError(f"--size: must be a multiple of 16 in 128..1024, got {args.size}")
    if not 0.0 <= args.pose_spread <= 1.0:
        raise LayerComposerError(f"--pose-spread: must be in 0..1, got {args.pose_spread}")
    heights = tuple(args.heights) if args.heights else None
    if heights and not 0.05 <= heights[0] <= heights[1] <= 0.8:
        raise LayerComposerError(f"--heights: need 0.05 <= LO <= HI <= 0.8, got {heights[0]} {heights[1]}")
    if args.characters is not None and not 1 <= args.characters <= MAX_CHARACTERS:
        raise LayerComposerError(f"--characters: must be 1..{MAX_CHARACTERS}, got {args.characters}")
    try:
        check_width(args.width, args.size)
    except ValueError as exc:
        raise LayerComposerError(f"--width: {exc}") from None
    paths = generate_dataset(args.out, args.scenes, seed=args.seed, size=args.size, split=args.split, progress=True,
                             pose_spread=args.pose_spread, heights=heights, characters=args.characters,
                             width=args.width)
    print(f"wrote {len(paths)} scenes to {args.out}", file=sys.stderr)
    return 0


def cmd_world_examples(args: argparse.Namespace) -> int:
    from ..world.examples import make_examples

    for path in make_examples(args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0
