"""Low-memory loading of the FLUX transformers: quantized weights, GGUF files and offloading, through diffusers.

- ``--quantize int8``: torchao int8 weight-only (`TorchAoConfig(Int8WeightOnlyConfig())`); runs on a CPU too, in
  bfloat16 (the transformer computes in bf16, everything else keeps its dtype);
- ``--quantize fp8``: torchao float8 weight-only; a CUDA GPU of compute capability 8.9 or newer;
- ``--quantize nf4``: bitsandbytes 4-bit NormalFloat (`BitsAndBytesConfig`), compute in bf16; a CUDA GPU;
- ``--gguf FILE``: a GGUF transformer (`from_single_file` with `GGUFQuantizationConfig`; keys in the original BFL
  layout or diffusers' own), its config taken from the model folder's ``transformer/``;
- ``--offload model | group | sequential``: whole models moved to the GPU while they run (accelerate hooks),
  diffusers' group offloading (block by block, on a CUDA stream when there is one), or layer by layer.

Only the transformer is quantized: it is nearly all of a FLUX model's weights. The text encoders and the VAE
load as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

QUANTIZE = ("int8", "fp8", "nf4")
OFFLOAD = ("none", "model", "group", "sequential")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model folder's transformer (None: as stored, in the pipeline's dtype)."""

    quantize: str | None = None
    gguf: str | None = None

    def __post_init__(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise ModelError(f"--quantize: one of {', '.join(QUANTIZE)}, got {self.quantize!r}")
        if self.quantize and self.gguf:
            raise ModelError("--quantize and --gguf: choose one (a GGUF file is already quantized)")
        if self.gguf is not None and not Path(self.gguf).is_file():
            raise ModelError(f"--gguf {self.gguf}: not found")

    @property
    def active(self) -> bool:
        return bool(self.quantize or self.gguf)

    def describe(self) -> str:
        return f"quantize {self.quantize}" if self.quantize else f"gguf {Path(self.gguf).name}" if self.gguf else "none"


def quantization_config(kind: str) -> Any:
    """diffusers' quantization config for `--quantize kind` (checked against this machine first)."""
    import importlib.util

    from diffusers import BitsAndBytesConfig, TorchAoConfig

    if kind in ("int8", "fp8") and importlib.util.find_spec("torchao") is None:
        raise ModelError(f"--quantize {kind} needs torchao: pip install 'layercomposer[lowmem]'")
    if kind == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if kind == "fp8":
        if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
            raise ModelError("--quantize fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper); "
                             "use --quantize int8 here")
        from torchao.quantization import Float8WeightOnlyConfig

        return TorchAoConfig(Float8WeightOnlyConfig())
    if kind == "nf4":
        if not torch.cuda.is_available():
            raise ModelError("--quantize nf4 needs a CUDA GPU (bitsandbytes 4-bit); use --quantize int8 here")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError("--quantize nf4 needs bitsandbytes: pip install 'layercomposer[lowmem]'")
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    raise ModelError(f"--quantize: one of {', '.join(QUANTIZE)}, got {kind!r}")


def load_transformer(cls: type, folder: Path, options: LoadOptions | None, dtype: torch.dtype = torch.float32) -> Any:
    """A diffusers transformer class from `folder` (a model folder's ``transformer/``), quantized as `options` say.

    Quantized weights compute in bfloat16 (torchao int8 wants it; nf4 and fp8 compute in it); a GGUF file
    dequantizes to `dtype` on the fly.
    """
    options = options or LoadOptions()
    if not options.active:  # the caller reports load errors in its own words
        return cls.from_pretrained(folder, use_safetensors=True, torch_dtype=dtype)
    try:
        if options.gguf:
            import importlib.util

            from diffusers import GGUFQuantizationConfig

            if importlib.util.find_spec("gguf") is None:
                raise ModelError("--gguf needs the gguf package: pip install 'layercomposer[lowmem]'")
            return cls.from_single_file(str(options.gguf), config=str(folder.parent), subfolder=folder.name,
                                        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                                        torch_dtype=dtype)
        return cls.from_pretrained(folder, use_safetensors=True, torch_dtype=torch.bfloat16,
                                   quantization_config=quantization_config(options.quantize))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        what = f"--gguf {options.gguf}" if options.gguf else f"--quantize {options.quantize}"
        raise ModelError(f"{what}: cannot load the transformer of {folder.parent} ({str(exc).splitlines()[0]})") \
            from None


def is_quantized(module: Any) -> bool:
    """Whether a diffusers model was loaded quantized (its dtype cannot be changed any more)."""
    return bool(getattr(module, "is_quantized", False))


def attention_backends() -> list[str]:
    """The names diffusers' attention dispatcher knows (each backend checks its own package and device on use)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return sorted(b.value for b in AttentionBackendName)


def set_attention_backend(transformer: Any, backend: str | None) -> None:
    """Choose diffusers' attention kernel for the transformer (None: leave the default, PyTorch's SDPA)."""
    if not backend:
        return
    names = attention_backends()
    if backend.lower() not in names:
        shown = ", ".join(n for n in names if not n.startswith("_"))
        raise ModelError(f"--attention-backend {backend}: unknown; one of {shown} (or diffusers' _-prefixed ones)")
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "attention backends are an experimental feature": chosen on purpose
    try:
        transformer.set_attention_backend(backend)
    except (ValueError, RuntimeError, ImportError) as exc:
        raise ModelError(f"--attention-backend {backend}: {str(exc).splitlines()[0]}") from None
    finally:
        diffusers_logging.set_verbosity(level)


def offload_diffusers_pipeline(pipe: Any, offload: str, device: str | torch.device) -> Any:
    """Place a diffusers pipeline (the refine engine's) on `device`, or offload it as `--offload` says."""
    if offload not in OFFLOAD:
        raise ModelError(f"--offload: one of {', '.join(OFFLOAD)}, got {offload!r}")
    device = torch.device(device)
    if offload == "none":
        return pipe.to(device)
    if offload == "group":
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                                  num_blocks_per_group=1, use_stream=device.type == "cuda")
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    return pipe
