"""The `layercomposer` command line, one module per command family: `generate` (generate, refine, tokens,
flatten, models), `training` (train, train-export, train-vae, world), `serve`, `evaluate` (eval ...) and `photo`
(cutout, scenes, photos); `common` holds what they share.

Bad input prints one line on stderr and exits with code 2; no traceback and no partial output file.
Heavy imports (torch, diffusers) happen only in the commands that run a model.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .._version import __version__
from ..errors import LayerComposerError
from ..settings import DEFAULT_MAX_TOKENS
from .common import (
    EXIT_BAD_INPUT,
    REGISTERED_MODELS,
    check_model_name,
    default_model,
)
from .evaluate import add_eval_parsers
from .generate import add_canvas_parsers, add_refine_parser
from .photo import add_photo_parsers
from .serve import add_serve_parser, cmd_serve
from .training import add_training_parsers

__all__ = ["DEFAULT_MAX_TOKENS", "EXIT_BAD_INPUT", "REGISTERED_MODELS", "build_parser", "check_model_name",
           "cmd_serve", "console", "default_model", "main", "quick_exit"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layercomposer",
        description="Render a layered canvas (RGBA layers placed, scaled, rotated and locked) into one picture.",
    )
    parser.add_argument("--version", action="version", version=f"layercomposer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The order of `layercomposer --help`.
    add_canvas_parsers(sub)
    add_training_parsers(sub)
    add_refine_parser(sub)
    add_serve_parser(sub)
    add_eval_parsers(sub)
    add_photo_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer",
                 "bitsandbytes")
"""Loggers of the optional low-memory packages that warn at import time (torchao's CUDA-only kernels missing on a
CPU, its pytree registrations; diffusers importing them): errors only, so a command's stderr stays ours."""


def quiet_library_logs() -> None:
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _run(args: argparse.Namespace) -> int:
    quiet_library_logs()
    try:
        return int(args.func(args) or 0)
    except LayerComposerError as exc:
        print(f"layercomposer: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("layercomposer: interrupted", file=sys.stderr)
        return 130


def console(argv: Sequence[str] | None = None) -> NoReturn:
    """The `layercomposer` command (and `python -m layercomposer`): `main`, then the process exits.

    After a one-shot model command (`generate`, `refine`) the interpreter's own shutdown, which tears down
    the 3,000-odd modules that torch, diffusers and transformers import one by one, costs 0.4-0.8 s on a
    2-core CPU (benchmarks/startup.py). Those commands have written their outputs (atomically) and
    closed their files by then, so the process runs the exit handlers, flushes its streams and ends
    without that teardown. Every other command exits normally.
    """
    args = build_parser().parse_args(argv)
    code = _run(args)
    if getattr(args, "quick_exit", False):
        quick_exit(code)
    sys.exit(code)


def quick_exit(code: int) -> NoReturn:
    """Run the exit handlers, flush stdout and stderr, and end the process without module teardown."""
    import atexit
    import contextlib

    atexit._run_exitfuncs()  # logging, multiprocessing, huggingface_hub...: what a normal exit runs
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said there
            stream.flush()
    os._exit(code)
