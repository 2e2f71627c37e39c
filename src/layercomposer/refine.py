"""The `refine` engine: the rough-collage technique (and the paper's baseline family).

The canvas is flattened into a collage and handed to an instruction image-editing model with an
instruction to make it one natural picture. Backends:

- ``kontext``: diffusers' ``FluxKontextPipeline`` (a FLUX.1 Kontext folder or cached hub id), one context image;
- ``klein``: diffusers' ``Flux2KleinPipeline`` (a FLUX.2 [klein] folder): the collage as the edit image and,
  with ``--layers-as-references``, the unlocked layers as further references up to klein's limit of 4 images;
- ``qwen``: diffusers' ``QwenImageEditPipeline``, or ``QwenImageEditPlusPipeline`` for a Qwen-Image-Edit Plus
  folder (2509 / 2511), which can also take the canvas's layers as extra reference images;
- ``demo``: our collage-conditioned model (``demo-collage``, or any of our model folders) in ``collage`` mode, so
  the technique runs offline; it follows the canvas prompt, not free-form instructions.

A known collage LoRA's trigger phrase is put in front of the instruction when that LoRA is given (for
example "Place it" for the Place-it Kontext LoRA), or any phrase with ``--trigger``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image

from .canvas import Canvas
from .errors import LayerComposerError, ModelError

DEFAULT_INSTRUCTION = (
    "Turn this rough collage into one natural, seamless photograph: match the lighting, shadows, perspective "
    "and scale of every element, blend the cut-out edges, keep each subject's identity and the composition."
)

LAYOUT_NOTE = (
    "Picture 1 is the layout: keep every element where it is and at its size. The other pictures show the "
    "elements on their own, for their details."
)
"""Appended to the instruction when the layers go along as references ("Picture N" is how the Plus pipeline's
prompt template labels its images)."""

KNOWN_TRIGGERS: dict[str, str] = {
    # file-name fragment (lower case, separators removed) -> trigger phrase of that LoRA
    "placeit": "Place it",
}
"""Collage LoRAs whose trigger phrase we know; the file name identifies them (``--trigger`` for others)."""

BACKENDS = ("kontext", "klein", "qwen", "demo")

KLEIN_LAYOUT_NOTE = (
    "The first image is the layout: keep every element where it is and at its size. The other images show the "
    "elements on their own, for their details."
)
"""The layout note for klein, whose pipeline does not number its reference images in the prompt."""

QWEN_PIPELINES = ("QwenImageEditPipeline", "QwenImageEditPlusPipeline")
"""diffusers pipeline folders the ``qwen`` backend loads (Qwen-Image-Edit, and the Plus 2509 / 2511 models)."""

QWEN_TRUE_CFG = 4.0
"""Qwen-Image-Edit's recommended `true_cfg_scale` (real classifier-free guidance, with negative prompt " ")."""


@dataclass
class RefineSettings:
    instruction: str | None = None
    steps: int = 28
    guidance: float | None = None
    seed: int = 0
    loras: list[str] = field(default_factory=list)
    trigger: str | None = None
    layers_as_references: bool = False
    """qwen backend with a Plus model: also pass each visible layer as a reference image, after the collage."""


def collage_of(source: Canvas | Image.Image) -> Image.Image:
    """The rough collage: a flattened canvas (over white where nothing is drawn), or an image as given."""
    if isinstance(source, Canvas):
        w, h = source.generation_size
        flat = source.flatten((w, h))
        base = Image.new("RGBA", (w, h), (255, 255, 255, 255))
        return Image.alpha_composite(base, flat).convert("RGB")
    return source.convert("RGB")


def reference_images(canvas: Canvas, max_ratio: float = 4.0, unlocked_only: bool = False) -> list[Image.Image]:
    """Each visible non-background layer (only the unlocked ones with `unlocked_only`) cropped to its content and
    composited on white, back to front."""
    refs = []
    for layer in canvas.visible_layers():
        if layer.is_background or (unlocked_only and layer.locked):
            continue
        # The layer's own image, not its rendering: the collage already carries placement, scale and rotation,
        # and a layer shrunk on the canvas keeps all its detail here (the pipeline resizes every image anyway).
        rgba = layer.image.rgba
        box = rgba.getchannel("A").getbbox()
        if box is None:  # fully transparent: nothing to show
            continue
        crop = rgba.crop(box)
        # Pad very thin crops with white: the pipeline resizes each image to a fixed area at its aspect ratio
        # (rounded to 32 px), so a sliver would round to a zero-height image.
        w, h = crop.size
        pw, ph = max(w, round(h / max_ratio)), max(h, round(w / max_ratio))
        sheet = Image.new("RGBA", (pw, ph), (255, 255, 255, 255))
        sheet.alpha_composite(crop, ((pw - w) // 2, (ph - h) // 2))
        refs.append(sheet.convert("RGB"))
    return refs


KLEIN_MIN_SIDE = 64
"""The smallest side `Flux2KleinPipeline` accepts in an input image (its `check_image_input`)."""


def at_least(image: Image.Image, side: int) -> Image.Image:
    """`image` enlarged (aspect kept) until both sides are at least `side` px; as it is when they are."""
    short = min(image.size)
    if short >= side:
        return image
    scale = side / short
    return image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


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


def instruction_text(settings: RefineSettings, note: str = LAYOUT_NOTE) -> str:
    """The instruction an editing model gets: trigger phrase, instruction, and the layout note with references."""
    text = settings.instruction or DEFAULT_INSTRUCTION
    trigger = trigger_for(settings.loras, settings.trigger)
    if trigger and not text.lower().startswith(trigger.lower()):
        text = f"{trigger}, {text[0].lower()}{text[1:]}"
    if settings.layers_as_references:
        # After the instruction, so that a LoRA's trigger phrase stays first.
        text = f"{text} {note}"
    return text


def auto_backend(resolved: Any) -> str:
    """The backend for a resolved model (`resolve_model`'s answer): by the folder's pipeline class."""
    from .models.flux import pipeline_class

    kind = pipeline_class(resolved) if isinstance(resolved, Path) else None
    if kind == "FluxKontextPipeline":
        return "kontext"
    if kind == "Flux2KleinPipeline":
        return "klein"
    return "qwen" if kind in QWEN_PIPELINES else "demo"


class RefineEngine:
    """Loads an editing model once; `__call__` refines canvases or collage images."""

    def __init__(self, model: str, backend: str = "kontext", device: str | None = None, loras: list[str] = (),
                 load: Any = None, offload: str = "none", attention_backend: str | None = None):
        """`load` (`models.lowmem.LoadOptions`), `offload` and `attention_backend`: the low-memory flags
        (``--quantize`` / ``--gguf``, ``--offload``, ``--attention-backend``), for the diffusers backends."""
        import torch

        from .models.flux import FLUX_PIPELINES, load_loras, pipeline_class
        from .models.lowmem import LoadOptions, load_transformer, offload_diffusers_pipeline, set_attention_backend
        from .models.registry import ModelConfig, resolve_model

        load = load or LoadOptions()

        if backend not in BACKENDS:
            raise LayerComposerError(f"--backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.model = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        resolved = resolve_model(model)
        kind = None if isinstance(resolved, ModelConfig) else pipeline_class(resolved)
        self.plus = kind == "QwenImageEditPlusPipeline"
        self.kind = kind
        dtype = torch.bfloat16 if self.device != "cpu" else torch.float32
        if backend == "kontext":
            if kind != "FluxKontextPipeline":
                raise ModelError(f"--backend kontext needs a FLUX.1 Kontext model folder, got {model!r} ({kind})")
            from diffusers import FluxKontextPipeline, FluxTransformer2DModel

            parts = {"transformer": load_transformer(FluxTransformer2DModel, resolved / "transformer", load, dtype)} \
                if load.active else {}
            self.pipe: Any = FluxKontextPipeline.from_pretrained(str(resolved), torch_dtype=dtype,
                                                                 use_safetensors=True, **parts)
            offload_diffusers_pipeline(self.pipe, offload, self.device)
            self.pipe.set_progress_bar_config(disable=True)
            load_loras(self.pipe.transformer, list(loras))
            set_attention_backend(self.pipe.transformer, attention_backend)
        elif backend == "klein":
            if kind != "Flux2KleinPipeline":
                raise ModelError(f"--backend klein needs a FLUX.2 [klein] model folder, got {model!r} ({kind})")
            from diffusers import Flux2KleinPipeline, Flux2Transformer2DModel

            parts = {"transformer": load_transformer(Flux2Transformer2DModel, resolved / "transformer", load, dtype)} \
                if load.active else {}
            try:
                self.pipe = Flux2KleinPipeline.from_pretrained(str(resolved), torch_dtype=dtype, use_safetensors=True,
                                                               **parts)
            except (OSError, ValueError) as exc:
                raise ModelError(f"{resolved}: cannot load the Flux2KleinPipeline ({str(exc).splitlines()[0]})") \
                    from None
            offload_diffusers_pipeline(self.pipe, offload, self.device)
            self.pipe.set_progress_bar_config(disable=True)
            load_loras(self.pipe.transformer, list(loras), pipeline="Flux2KleinPipeline")
            set_attention_backend(self.pipe.transformer, attention_backend)
        elif backend == "qwen":
            if kind not in QWEN_PIPELINES:
                raise ModelError(f"--backend qwen needs a Qwen-Image-Edit (or Qwen-Image-Edit Plus) model folder, "
                                 f"got {model!r} ({kind})")
            if load.active:
                raise ModelError("--quantize / --gguf: for FLUX models (kontext, klein and our own); not for qwen")
            self.pipe = offload_diffusers_pipeline(load_qwen_edit(resolved, dtype), offload, self.device)
            self.pipe.set_progress_bar_config(disable=True)
            load_qwen_loras(self.pipe, list(loras))
            set_attention_backend(self.pipe.transformer, attention_backend)
        else:
            if kind in FLUX_PIPELINES or kind in QWEN_PIPELINES or kind == "Flux2KleinPipeline":
                raise ModelError(f"--backend demo takes our own models (demo-collage); {model!r} is a {kind}")
            from .pipeline import LayerComposerPipeline

            self.pipe = LayerComposerPipeline.from_pretrained(model, load=load)
            if offload != "none":
                self.pipe.to("cpu", torch.bfloat16 if self.device != "cpu" else None)
                {"model": self.pipe.enable_model_cpu_offload, "group": self.pipe.enable_group_offload,
                 "sequential": self.pipe.enable_sequential_cpu_offload}[offload](self.device)
            elif self.device != "cpu":
                self.pipe.to(self.device, torch.bfloat16)
            self.pipe.load_loras(list(loras))
            set_attention_backend(self.pipe.transformer, attention_backend)

    def __call__(self, source: Canvas | Image.Image, settings: RefineSettings, callback: Any = None) -> Image.Image:
        import torch

        collage = collage_of(source)
        w, h = (collage.width // 16) * 16, (collage.height // 16) * 16
        if settings.layers_as_references:
            if self.backend != "klein" and (self.backend != "qwen" or not self.plus):
                raise LayerComposerError(f"--layers-as-references needs --backend qwen with a Qwen-Image-Edit Plus "
                                         f"model (2509 / 2511), or --backend klein; {self.model!r} is neither")
            if not isinstance(source, Canvas):
                raise LayerComposerError("--layers-as-references needs a canvas (an image has no layers)")
        on_step = _diffusers_callback(callback, settings.steps) if callback else None
        generator = torch.Generator().manual_seed(settings.seed)
        if self.backend == "kontext":
            out = self.pipe(
                image=collage, prompt=instruction_text(settings), num_inference_steps=settings.steps,
                guidance_scale=2.5 if settings.guidance is None else settings.guidance, width=w, height=h,
                max_area=w * h, _auto_resize=False, generator=generator, callback_on_step_end=on_step,
            )
            return out.images[0]
        if self.backend == "klein":
            from .models.klein import MAX_REFERENCES

            images = [collage]
            if settings.layers_as_references:
                # The collage first; then the unlocked layers back to front (the locked ones are to be kept as the
                # collage shows them), as many as klein takes.
                refs = reference_images(source, unlocked_only=True)[: MAX_REFERENCES - 1]
                images += [at_least(ref, KLEIN_MIN_SIDE) for ref in refs]
            distilled = bool(self.pipe.config.get("is_distilled", False))
            guidance = (1.0 if distilled else 4.0) if settings.guidance is None else settings.guidance
            out = self.pipe(
                image=images if len(images) > 1 else collage, prompt=instruction_text(settings, KLEIN_LAYOUT_NOTE),
                num_inference_steps=settings.steps, guidance_scale=guidance, width=w, height=h, generator=generator,
                callback_on_step_end=on_step,
            )
            return out.images[0]
        if self.backend == "qwen":
            images: Any = collage
            if settings.layers_as_references:
                # The collage first: the layout note calls it picture 1.
                images = [collage, *reference_images(source)]
            cfg = QWEN_TRUE_CFG if settings.guidance is None else settings.guidance
            # The pipeline resizes every input image itself (to about 1 MP for the VAE latents; the Plus model's
            # vision-language encoder sees 384x384-area copies) whatever the output size, and it renders at the
            # height / width given, rounded down to its VAE's multiple (16 px for Qwen-Image's VAE).
            out = self.pipe(
                image=images, prompt=instruction_text(settings),
                # Real CFG only above 1; the pipeline warns about a negative prompt it would ignore.
                negative_prompt=" " if cfg > 1 else None, true_cfg_scale=cfg,
                num_inference_steps=settings.steps, width=w, height=h, generator=generator,
                callback_on_step_end=on_step,
            )
            image = out.images[0]
            if image.size != (w, h):  # a model whose VAE multiple does not divide the 16 px size
                image = image.resize((w, h), Image.Resampling.LANCZOS)
            return image
        # Our collage-conditioned model: the collage is one opaque layer with ids [1, r, c].
        canvas = source if isinstance(source, Canvas) else _image_canvas(collage)
        return self.pipe(canvas, prompt=settings.instruction, num_inference_steps=settings.steps,
                         guidance_scale=settings.guidance, seed=settings.seed, mode="collage", callback=callback)


# ----------------------------------------------------------------------------------------------------------
# Qwen-Image-Edit


@cache
def image_only_qwen_processor() -> type:
    """`Qwen2VLProcessor` without its video processor (Qwen-Image-Edit passes images only).

    transformers 5 cannot build a `Qwen2VLProcessor` at all without torchvision (its video processor needs it),
    so the plain `from_pretrained` of a Qwen-Image-Edit folder fails there; this subclass drops that part.
    """
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """A `Qwen2VLProcessor` made of the image processor and the tokenizer only."""

        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                     **kwargs: Any):
            # The processor's attributes come from this signature: no video_processor, so none is loaded.
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2VLProcessor


def load_qwen_edit(folder: Path, dtype: Any = None) -> Any:
    """A Qwen-Image-Edit(-Plus) pipeline from a diffusers folder, its processor loaded without a video part."""
    import torch
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    from .models.flux import pipeline_class

    cls = QwenImageEditPlusPipeline if pipeline_class(folder) == "QwenImageEditPlusPipeline" else QwenImageEditPipeline
    try:
        processor = image_only_qwen_processor().from_pretrained(str(folder / "processor"))
        return cls.from_pretrained(str(folder), processor=processor, torch_dtype=dtype or torch.float32,
                                   use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: cannot load the {cls.__name__} ({str(exc).splitlines()[0]})") from None


def load_qwen_loras(pipe: Any, specs: list[str]) -> list[str]:
    """Load LoRA files into a Qwen-Image pipeline through diffusers' Qwen loader (converts community keys).

    Returns the adapter names; they are activated with their scales together.
    """
    from .models.flux import parse_lora_spec

    names, weights = [], []
    for i, spec in enumerate(specs):
        path, scale = parse_lora_spec(spec)
        name = f"lora{i}"
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"--lora {spec}: not a Qwen-Image LoRA diffusers can load ({reason})") from None
        # diffusers only warns when no key matches the transformer (a LoRA for another model, say).
        if name not in pipe.get_list_adapters().get("transformer", []):
            raise ModelError(f"--lora {spec}: holds no Qwen-Image transformer weights")
        names.append(name)
        weights.append(scale)
    if names:
        pipe.set_adapters(names, adapter_weights=weights)
    return names


def _image_canvas(image: Image.Image) -> Canvas:
    from .canvas import Layer, LayerImage

    canvas = Canvas(image.width, image.height, [Layer("collage", LayerImage.from_pil(image), locked=False)])
    return canvas.validate()


def _diffusers_callback(callback: Any, total: int) -> Any:
    """A diffusers `callback_on_step_end` that reports our StepEvents (Kontext and Qwen share the signature)."""
    from .sampler import StepEvent

    def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        latents = kwargs.get("latents")
        callback(StepEvent(step=step + 1, total=total, sigma=float(timestep) / 1000, latents=latents,
                           denoised=latents))
        return kwargs

    return on_step_end
