"""The `refine` engine: the rough-collage technique (and the paper's baseline family).

The canvas is flattened into a collage and handed to an instruction image-editing model with an
instruction to make it one natural picture. Backends:

- ``kontext``: diffusers' ``FluxKontextPipeline`` (a FLUX.1 Kontext folder or cached hub id), one context image;
- ``demo``: our collage-conditioned model (``demo-collage``, or any of our model folders) in ``collage`` mode, so
  the technique runs offline; it follows the canvas prompt, not free-form instructions.

A known collage LoRA's trigger phrase is put in front of the instruction when that LoRA is given (for
example "Place it" for the Place-it Kontext LoRA), or any phrase with ``--trigger``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .canvas import Canvas
from .errors import LayerComposerError, ModelError

DEFAULT_INSTRUCTION = (
    "Turn this rough collage into one natural, seamless photograph: match the lighting, shadows, perspective "
    "and scale of every element, blend the cut-out edges, keep each subject's identity and the composition."
)

KNOWN_TRIGGERS: dict[str, str] = {
    # file-name fragment (lower case, separators removed) -> trigger phrase of that LoRA
    "placeit": "Place it",
}
"""Collage LoRAs whose trigger phrase we know; the file name identifies them (``--trigger`` for others)."""

BACKENDS = ("kontext", "demo")


@dataclass
class RefineSettings:
    instruction: str | None = None
    steps: int = 28
    guidance: float | None = None
    seed: int = 0
    loras: list[str] = field(default_factory=list)
    trigger: str | None = None


def collage_of(source: Canvas | Image.Image) -> Image.Image:
    """The rough collage: a flattened canvas (over white where nothing is drawn), or an image as given."""
    if isinstance(source, Canvas):
        w, h = source.generation_size
        flat = source.flatten((w, h))
        base = Image.new("RGBA", (w, h), (255, 255, 255, 255))
        return Image.alpha_composite(base, flat).convert("RGB")
    return source.convert("RGB")


def trigger_for(loras: list[str], explicit: str | None) -> str | None:
    """The trigger phrase to prepend: the explicit one, else that of a known collage LoRA among `loras`."""
    if explicit:
        return explicit
    for spec in loras:
        key = "".join(ch for ch in Path(spec.rsplit(":", 1)[0]).stem.lower() if ch.isalnum())
        for fragment, phrase in KNOWN_TRIGGERS.items():
            if fragment in key:
                return phrase
    return None


def instruction_text(settings: RefineSettings) -> str:
    text = settings.instruction or DEFAULT_INSTRUCTION
    trigger = trigger_for(settings.loras, settings.trigger)
    if trigger and not text.lower().startswith(trigger.lower()):
        text = f"{trigger}, {text[0].lower()}{text[1:]}"
    return text


class RefineEngine:
    """Loads an editing model once; `__call__` refines canvases or collage images."""

    def __init__(self, model: str, backend: str = "kontext", device: str | None = None, loras: list[str] = ()):
        import torch

        from .models.flux import FLUX_PIPELINES, load_loras, pipeline_class
        from .models.registry import ModelConfig, resolve_model

        if backend not in BACKENDS:
            raise LayerComposerError(f"--backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        resolved = resolve_model(model)
        kind = None if isinstance(resolved, ModelConfig) else pipeline_class(resolved)
        if backend == "kontext":
            if kind != "FluxKontextPipeline":
                raise ModelError(f"--backend kontext needs a FLUX.1 Kontext model folder, got {model!r} ({kind})")
            from diffusers import FluxKontextPipeline

            dtype = torch.bfloat16 if self.device != "cpu" else torch.float32
            self.pipe: Any = FluxKontextPipeline.from_pretrained(str(resolved), torch_dtype=dtype,
                                                                 use_safetensors=True).to(self.device)
            self.pipe.set_progress_bar_config(disable=True)
            load_loras(self.pipe.transformer, list(loras))
        else:
            if kind in FLUX_PIPELINES:
                raise ModelError(f"--backend demo takes our own models (demo-collage); {model!r} is a {kind}")
            from .pipeline import LayerComposerPipeline

            self.pipe = LayerComposerPipeline.from_pretrained(model)
            if self.device != "cpu":
                self.pipe.to(self.device, torch.bfloat16)
            self.pipe.load_loras(list(loras))

    def __call__(self, source: Canvas | Image.Image, settings: RefineSettings, callback: Any = None) -> Image.Image:
        import torch

        collage = collage_of(source)
        w, h = (collage.width // 16) * 16, (collage.height // 16) * 16
        if self.backend == "kontext":
            out = self.pipe(
                image=collage, prompt=instruction_text(settings), num_inference_steps=settings.steps,
                guidance_scale=2.5 if settings.guidance is None else settings.guidance, width=w, height=h,
                max_area=w * h, _auto_resize=False, generator=torch.Generator().manual_seed(settings.seed),
                callback_on_step_end=_kontext_callback(callback, settings.steps) if callback else None,
            )
            return out.images[0]
        # Our collage-conditioned model: the collage is one opaque layer with ids [1, r, c].
        canvas = source if isinstance(source, Canvas) else _image_canvas(collage)
        return self.pipe(canvas, prompt=settings.instruction, num_inference_steps=settings.steps,
                         guidance_scale=settings.guidance, seed=settings.seed, mode="collage", callback=callback)


def _image_canvas(image: Image.Image) -> Canvas:
    from .canvas import Layer, LayerImage

    canvas = Canvas(image.width, image.height, [Layer("collage", LayerImage.from_pil(image), locked=False)])
    return canvas.validate()


def _kontext_callback(callback: Any, total: int) -> Any:
    from .sampler import StepEvent

    def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        latents = kwargs.get("latents")
        callback(StepEvent(step=step + 1, total=total, sigma=float(timestep) / 1000, latents=latents,
                           denoised=latents))
        return kwargs

    return on_step_end
