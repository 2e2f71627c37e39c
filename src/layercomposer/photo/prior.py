"""The prior image of a benchmark canvas, from a text-to-image model when its weights are here.

The paper's automated canvases start from a picture of the prompt made by a text-to-image model (the
"prior"): its faces give where each identity goes and how big. Any diffusers text-to-image pipeline
folder works (FLUX.1 [dev] / [schnell], SDXL, SD3, Qwen-Image, ...), loaded through diffusers'
``AutoPipelineForText2Image`` from a local folder or a hub id already in the Hugging Face cache; nothing
is downloaded. Without such weights, the user gives the prior image instead (``--prior``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..errors import LayerComposerError, ModelError

PRIOR_MULTIPLE = 16
"""Prior sizes are rounded down to this multiple (FLUX packs 2x2 latents of an 8x VAE)."""


@dataclass
class PriorSettings:
    steps: int = 28
    guidance: float | None = None
    """None: the pipeline's own default."""
    seed: int = 0
    width: int = 1024
    height: int = 1024


def prior_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) rounded down to `PRIOR_MULTIPLE`; a one-line error when too small."""
    w, h = (width // PRIOR_MULTIPLE) * PRIOR_MULTIPLE, (height // PRIOR_MULTIPLE) * PRIOR_MULTIPLE
    if w < 64 or h < 64 or w > 4096 or h > 4096:
        raise LayerComposerError(f"prior size {width}x{height}: width and height must be 64..4096")
    return w, h


class PriorModel:
    """A text-to-image pipeline loaded once; `__call__(prompt, settings)` gives the prior picture."""

    def __init__(self, model: str, device: str | None = None, dtype: str = "auto") -> None:
        import torch

        from ..models.flux import pipeline_class
        from ..models.registry import ModelConfig, resolve_model

        resolved = resolve_model(model)  # a folder, or a hub id in the local cache; never a download
        if isinstance(resolved, ModelConfig) or pipeline_class(resolved) == "LayerComposerPipeline":
            raise ModelError(f"--prior-model {model!r} is one of our canvas models, not a text-to-image model; give "
                             "a diffusers text-to-image folder (FLUX.1, SDXL, SD3, Qwen-Image, ...) or hub id")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = (torch.bfloat16 if self.device != "cpu" else torch.float32) if dtype == "auto" \
            else getattr(torch, dtype)
        from diffusers import AutoPipelineForText2Image

        try:
            pipe: Any = AutoPipelineForText2Image.from_pretrained(str(resolved), dtype=torch_dtype,
                                                                  local_files_only=True)
        except ValueError as exc:  # AutoPipeline: no text-to-image pipeline for this folder's class
            raise ModelError(f"--prior-model {model!r}: not a text-to-image pipeline ({exc})") from None
        except OSError as exc:
            raise ModelError(f"--prior-model {model!r}: cannot load ({str(exc).splitlines()[0]})") from None
        self.pipe = pipe.to(self.device)
        self.name = model
        self.kind = type(pipe).__name__

    def __call__(self, prompt: str, settings: PriorSettings, progress: bool = True) -> Image.Image:
        import torch

        if not prompt:
            raise LayerComposerError("a prior needs a prompt (--prompt)")
        w, h = prior_size(settings.width, settings.height)
        self.pipe.set_progress_bar_config(disable=not progress, desc="prior")
        kwargs: dict[str, Any] = dict(prompt=prompt, width=w, height=h, num_inference_steps=settings.steps,
                                      generator=torch.Generator().manual_seed(settings.seed))
        if settings.guidance is not None:
            kwargs["guidance_scale"] = settings.guidance
        image = self.pipe(**kwargs).images[0]
        if image.size != (w, h):  # a VAE multiple that does not divide 16 (not FLUX): match the asked size
            image = image.resize((w, h), Image.Resampling.LANCZOS)
        return image.convert("RGB")


def fit_prior_size(width: int | None, height: int | None, megapixels: float = 1.0) -> tuple[int, int]:
    """A prior size from what is given: both sides, one side (square), or neither (1 MP square)."""
    if width and height:
        return prior_size(width, height)
    side = width or height or int(math.sqrt(megapixels * 1024 * 1024))
    return prior_size(side, side)
