"""What the command families share: model names, the low-memory flags, loading a pipeline, and output files
checked before any work and written atomically."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import LayerComposerError

EXIT_BAD_INPUT = 2
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

REGISTERED_MODELS = ("tiny-random", "demo-base")
"""The names of `models.registry.REGISTRY`, known here without importing it (it imports torch); a test keeps
the two in step."""


def check_model_name(model: str) -> None:
    """Refuse a `--model` that names nothing, before torch, diffusers and transformers are imported (the
    loader checks everything else about a model that does exist)."""
    path = Path(model)
    if path.exists() or model in REGISTERED_MODELS:
        return
    weights = Path(__file__).resolve().parent.parent / "weights"
    shipped = sorted(p.name for p in weights.iterdir() if (p / "model_index.json").is_file()) \
        if weights.is_dir() else []
    if model in shipped:
        return
    if "/" in model and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model):
        return  # a hub id: the loader looks for it in the local cache
    from ..errors import ModelError

    choices = ", ".join(sorted({*REGISTERED_MODELS, *shipped}))
    raise ModelError(f"unknown model {model!r}: use one of {choices} or a model directory")


def default_model() -> str:
    """The shipped demo model when installed, else the tiny random one."""
    from ..models.registry import shipped_models

    return "demo" if "demo" in shipped_models() else "tiny-random"


def add_memory_arguments(parser: argparse.ArgumentParser, dtype: bool = True, vae_tiling: bool = True) -> None:
    """--quantize, --gguf, --offload, --attention-backend (and --dtype, --vae-tiling where the command has them)."""
    if dtype:
        parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                            help="weights and compute dtype (auto: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--quantize", choices=("int8", "fp8", "nf4"), default=None,
                        help="quantize the transformer on load: int8 (torchao weight-only, bf16; CPU or GPU), fp8 "
                        "(torchao; CUDA, compute capability 8.9+), nf4 (bitsandbytes 4-bit; CUDA); needs "
                        "pip install 'layercomposer[lowmem]'")
    parser.add_argument("--gguf", default=None, metavar="FILE",
                        help="read the transformer from this GGUF file (diffusers' GGUF loader; its config from the "
                        "model folder)")
    parser.add_argument("--offload", choices=("none", "model", "group", "sequential"), default="none",
                        help="CPU offload: whole models (model), diffusers' group offloading, a transformer block at a "
                        "time (group), or layer by layer (sequential, least memory)")
    parser.add_argument("--attention-backend", default=None, metavar="NAME",
                        help="diffusers' attention kernel: native (default), flash, flash_varlen, _flash_3, sage, ...")
    if vae_tiling:
        parser.add_argument("--vae-tiling", action="store_true", help="tiled VAE encode/decode for large canvases")


def load_options(args: argparse.Namespace) -> Any:
    """The `models.lowmem.LoadOptions` of a command's --quantize / --gguf (checked before the model loads)."""
    from ..models.lowmem import LoadOptions

    return LoadOptions(quantize=getattr(args, "quantize", None), gguf=getattr(args, "gguf", None))


def load_pipeline(model: str, device: str | None, dtype: str = "auto", offload: str = "none",
                   vae_tiling: bool = False, load: Any = None, attention_backend: str | None = None) -> Any:
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from ..pipeline import LayerComposerPipeline

    # Loading progress bars of the libraries are noise next to our own.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise LayerComposerError(f"--device: unknown device {device!r}") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise LayerComposerError("--device: CUDA is not available on this machine")
    from ..modelcheck import check_model

    check_model(model)  # absurd or non-finite config numbers, before anything is allocated from them
    pipe = LayerComposerPipeline.from_pretrained(model, load=load)
    torch_dtype = (torch.bfloat16 if torch_device.type == "cuda" else torch.float32) if dtype == "auto" \
        else getattr(torch, dtype)
    if offload == "none":
        if torch_device.type != "cpu" or torch_dtype != torch.float32:
            pipe.to(torch_device, torch_dtype)
    else:
        pipe.to("cpu", torch_dtype)
        if offload == "model":
            pipe.enable_model_cpu_offload(torch_device)
        elif offload == "group":
            pipe.enable_group_offload(torch_device)
        else:
            pipe.enable_sequential_cpu_offload(torch_device)
    from ..models.lowmem import set_attention_backend

    set_attention_backend(pipe.transformer, attention_backend)
    if vae_tiling:
        pipe.enable_vae_tiling()
    return pipe


def check_output(path_str: str) -> Path:
    """The output path, checked before any work: extension, folder, and that the folder takes a new file
    (a read-only folder or file system is reported now, not after generating)."""
    path = Path(path_str)
    if path.suffix.lower() not in IMAGE_FORMATS:
        raise LayerComposerError(
            f"--output {path_str}: unknown image extension (use {', '.join(sorted(IMAGE_FORMATS))})"
        )
    if path.is_dir():
        raise LayerComposerError(f"--output {path_str}: is a directory")
    if path.parent != Path() and not path.parent.is_dir():
        raise LayerComposerError(f"--output {path_str}: folder {path.parent} does not exist")
    folder = Path(os.path.realpath(path)).parent
    try:  # what writing will do: a temporary file in that folder (os.access misleads root and read-only mounts)
        fd, probe = tempfile.mkstemp(prefix=".layercomposer-probe.", suffix=".part", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LayerComposerError(f"--output {path_str}: cannot write in {folder} ({exc.strerror or exc})") from None
    return path


def save_image(image: Any, path: Path, metadata: dict[str, Any]) -> None:
    """Encode fully in memory, then write atomically: a failure leaves no partial file."""
    from PIL import PngImagePlugin

    from ..canvas import write_atomic

    fmt = IMAGE_FORMATS[path.suffix.lower()]
    buf = io.BytesIO()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("layercomposer", json.dumps(metadata))
        image.save(buf, format="PNG", pnginfo=info)
    else:
        if image.mode == "RGBA":  # no alpha in JPEG; composite over white like an image editor's export
            from PIL import Image

            base = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(base, image)
        image.convert("RGB").save(buf, format=fmt, quality=95)
    try:
        write_atomic(path, buf.getvalue())
    except OSError as exc:
        raise LayerComposerError(f"--output {path}: cannot write ({exc.strerror or exc})") from None
