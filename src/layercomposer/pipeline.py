"""`LayerComposerPipeline`: canvas + prompt -> picture, on diffusers' FluxTransformer2DModel and AutoencoderKL."""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from PIL import Image

from ._version import __version__
from .canvas import Canvas
from .conditioning import (
    MODES,
    Conditioning,
    ConditioningBuilder,
    Mode,
    TokenPlan,
    TokenRules,
    grid_ids,
    pixels_picture,
)
from .errors import LayerComposerError, ModelError
from .flow import FlowSchedule, add_noise
from .models.denoiser import denoise
from .models.flux import FLUX_PIPELINES, FluxTextEncoder, load_flux_folder, load_loras
from .models.klein import KLEIN_PIPELINES
from .models.lowmem import LoadOptions, is_quantized, load_transformer
from .models.registry import ModelConfig, build_random, resolve_model
from .models.text import ClipTextEncoder, TextEmbeddings, TextEncoder
from .models.vae_tiles import decode_latents
from .sampler import KnownRegion, StepCallback, sample_euler
from .settings import GUIDANCE, SEED, STEPS, STRENGTH

PIPELINE_CLASS = "LayerComposerPipeline"
_TEXT_ENCODERS: dict[str, type] = {"clip": ClipTextEncoder, "flux": FluxTextEncoder}


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H/8, W/8) VAE latents -> (B, H/16 * W/16, 4C) tokens, 2x2 patches, row-major (as FLUX)."""
    return rearrange(latents, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def unpack_latents(tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B, rows*cols, 4C) tokens -> (B, C, 2 rows, 2 cols) latents; the inverse of `pack_latents`."""
    return rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=rows, w=cols, ph=2, pw=2)


def skipped_steps(steps: int, strength: float) -> int:
    """Steps of a `steps`-step schedule that image-to-image at `strength` leaves out (diffusers' rule:
    it runs `round(steps * strength)`, at least one)."""
    strength = STRENGTH.check(strength)
    return steps - max(1, min(steps, round(steps * strength)))


@dataclass
class GenerationResult:
    """A picture and how it was made."""

    image: Image.Image
    prompt: str
    seed: int
    steps: int
    guidance_scale: float
    mode: Mode
    plan: TokenPlan
    seconds: dict[str, float] = field(default_factory=dict)
    hard_locked: int | None = None
    """With `hard_lock`: how many latent pixels (8x8 px) were held to the locked layers; None without."""
    strength: float = 1.0
    """How much of the schedule was run from the flattened canvas (1: from pure noise, the method)."""

    def settings(self) -> dict[str, Any]:
        """The settings to reproduce this picture (JSON)."""
        return {"prompt": self.prompt, "seed": self.seed, "steps": self.steps,
                "guidance_scale": self.guidance_scale, "mode": self.mode,
                "hard_lock": self.hard_locked is not None, "strength": self.strength}


class LayerComposerPipeline:
    """Renders a layered canvas into one picture (docs/DESIGN.md section 3)."""

    _trained_sizes: list[tuple[int, int]] | None = None

    def __init__(
        self,
        transformer: Any,  # diffusers.FluxTransformer2DModel
        vae: Any,  # diffusers.AutoencoderKL
        text_encoder: TextEncoder,
        schedule: FlowSchedule | None = None,
        guidance_scale: float = 2.5,
        default_steps: int = 28,
        name: str | None = None,
        rules: TokenRules | None = None,
    ) -> None:
        self.transformer = transformer.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.schedule = schedule or FlowSchedule()
        self.guidance_scale = guidance_scale
        self.default_steps = default_steps
        self.name = name
        latent_channels = vae.config.latent_channels
        if transformer.config.in_channels != 4 * latent_channels:
            raise ModelError(
                f"transformer in_channels {transformer.config.in_channels} does not match 4 x the VAE's "
                f"{latent_channels} latent channels"
            )
        self.conditioning = ConditioningBuilder(self._encode_pixels, rules=rules)
        self._prompt_cache: OrderedDict[str, TextEmbeddings] = OrderedDict()
        self._execution_device: torch.device | None = None

    @property
    def merge_locked(self) -> bool:
        """Whether this model sees the locked layers flattened into one group (see `conditioning`)."""
        return self.conditioning.merge_locked

    @property
    def trained_sizes(self) -> list[tuple[int, int]] | None:
        """Canvas sizes (width, height) the model was trained at: model_index.json's `trained_sizes`; None when
        the folder does not say (built from a config, or an older folder)."""
        return None if self._trained_sizes is None else list(self._trained_sizes)

    @property
    def rules(self) -> TokenRules:
        """How this model turns canvases into tokens (merged locked layers, pruning rule)."""
        return self.conditioning.rules

    # -- construction --------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ModelConfig, seed: int = 0) -> LayerComposerPipeline:
        """A pipeline with random weights built from a registered config (offline)."""
        transformer, vae, text_encoder = build_random(config, seed)
        return cls(transformer, vae, text_encoder, config.schedule, config.guidance_scale, config.default_steps,
                   name=config.name)

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike[str], device: str | torch.device | None = None, dtype: torch.dtype | None = None,
        load: LoadOptions | None = None,
    ) -> LayerComposerPipeline:
        """Load a named model (`tiny-random`, `demo`, ...) or a directory written by `save_pretrained`.

        `load` (`models.lowmem.LoadOptions`): a quantized transformer (`--quantize`) or one read from a GGUF file
        (`--gguf`); model folders only.
        """
        resolved = resolve_model(str(model) if isinstance(model, os.PathLike) else model)
        if isinstance(resolved, ModelConfig):
            if load is not None and load.active:
                raise ModelError(f"--quantize / --gguf need a model folder; {model!r} is built from a config")
            pipe = cls.from_config(resolved)
        else:
            pipe = cls._load_dir(resolved, load)
        if device is not None or dtype is not None:
            pipe.to(device or "cpu", dtype)
        return pipe

    @classmethod
    def _load_dir(cls, root: Path, load: LoadOptions | None = None) -> LayerComposerPipeline:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from safetensors import SafetensorError

        try:
            index = json.loads((root / "model_index.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{root}/model_index.json: cannot read ({exc})") from None
        if index.get("_class_name") in KLEIN_PIPELINES:
            # A diffusers FLUX.2 [klein] folder: our conditioning on FLUX.2's ids (models/klein.py).
            return KleinComposerPipeline.from_folder(root, load)
        if index.get("_class_name") in FLUX_PIPELINES:
            # A diffusers FLUX.1 Kontext folder: our conditioning on the real architecture.
            c = load_flux_folder(root, load=load)
            return cls(c.transformer, c.vae, c.text_encoder, c.schedule, c.guidance_scale, 28, name=c.name)
        if index.get("_class_name") != PIPELINE_CLASS:
            raise ModelError(
                f"{root}: a {index.get('_class_name')!r} directory, not a {PIPELINE_CLASS} model directory"
            )
        for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (root / part).is_dir():
                raise ModelError(f"{root}: {part}/ missing from the model directory")
        kind = index.get("text_encoder_kind", "clip")
        if kind not in _TEXT_ENCODERS:
            raise ModelError(f"{root}: unknown text_encoder_kind {kind!r}")
        try:
            transformer = load_transformer(FluxTransformer2DModel, root / "transformer", load, torch.float32)
            vae = AutoencoderKL.from_pretrained(root / "vae", use_safetensors=True, torch_dtype=torch.float32)
            text_encoder = _TEXT_ENCODERS[kind].from_pretrained(root)
        except (OSError, ValueError, SafetensorError) as exc:  # a truncated file is a SafetensorError
            raise ModelError(f"{root}: cannot load weights ({str(exc).splitlines()[0]})") from None
        try:
            rules = TokenRules.from_index(index)
        except LayerComposerError as exc:
            raise ModelError(f"{root}/model_index.json: {exc}") from None
        sizes = index.get("trained_sizes")
        if sizes is not None:
            if not isinstance(sizes, list) or not all(
                isinstance(s, list) and len(s) == 2 and all(type(v) is int and v > 0 for v in s) for s in sizes
            ):
                raise ModelError(f"{root}/model_index.json: trained_sizes must be a list of [width, height]")
            sizes = [(w, h) for w, h in sizes]
        schedule = FlowSchedule.load(root / "scheduler" / "scheduler_config.json")
        pipe = cls(transformer, vae, text_encoder, schedule, float(index.get("guidance_scale", 2.5)),
                   int(index.get("default_steps", 28)), name=index.get("name", root.name), rules=rules)
        pipe._trained_sizes = sizes
        return pipe

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write safetensors weights and configs in diffusers' per-component layout."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(root / "transformer", safe_serialization=True)
        self.vae.save_pretrained(root / "vae", safe_serialization=True)
        self.text_encoder.save_pretrained(root)
        (root / "scheduler").mkdir(exist_ok=True)
        self.schedule.save(root / "scheduler" / "scheduler_config.json")
        index = {
            "_class_name": PIPELINE_CLASS,
            "_layercomposer_version": __version__,
            "name": self.name,
            "text_encoder_kind": self.text_encoder.kind,
            "guidance_scale": self.guidance_scale,
            "default_steps": self.default_steps,
            **self.rules.index_fields(),
        }
        if self._trained_sizes is not None:
            index["trained_sizes"] = [[w, h] for w, h in self._trained_sizes]
        # model_index.json last: a directory without it is not a model, so a crash leaves no half model.
        (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return root

    def load_loras(self, specs: list[str]) -> list[str]:
        """Apply LoRA files (`PATH[:scale]`, diffusers / peft or kohya format) to the transformer."""
        return load_loras(self.transformer, specs)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> LayerComposerPipeline:
        self._execution_device = None
        # A quantized transformer keeps its dtype (its weights are int8 / nf4 / GGUF blocks computing in bf16).
        if is_quantized(self.transformer):
            self.transformer.to(device)
        else:
            self.transformer.to(device=device, dtype=dtype)
        self.vae.to(device=device, dtype=dtype)
        self.text_encoder.to(device, dtype)
        self.conditioning.clear()  # cached latents live on the old device
        self._prompt_cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        """Where the computation runs (with CPU offload the weights live on the CPU between uses)."""
        if self._execution_device is not None:
            return self._execution_device
        return next(self.transformer.parameters()).device

    # -- memory modes (diffusers' own conventions, through accelerate's hooks) ---------------------------

    def _text_modules(self) -> list[torch.nn.Module]:
        te = self.text_encoder
        return [m for m in (getattr(te, "model", None), getattr(te, "clip", None), getattr(te, "t5", None)) if m]

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> LayerComposerPipeline:
        """Keep each model on the CPU and move it to `device` only while it runs (one model at a time)."""
        from accelerate import cpu_offload_with_hook

        device = torch.device(device)
        hook = None
        for module in [*self._text_modules(), self.vae, self.transformer]:
            module.to("cpu")
            _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
        self._execution_device = device
        self.conditioning.clear()
        self._prompt_cache.clear()
        return self

    def enable_sequential_cpu_offload(self, device: str | torch.device = "cuda") -> LayerComposerPipeline:
        """Stream each layer's weights to `device` as it runs: the least memory, the slowest."""
        from accelerate import cpu_offload, cpu_offload_with_hook

        device = torch.device(device)
        # Text encoders move whole while they run: transformers' CLIP keeps a non-persistent position-id
        # buffer that per-layer offload cannot restore. They run once per prompt.
        for module in self._text_modules():
            module.to("cpu")
            cpu_offload_with_hook(module, device)
        for module in (self.vae, self.transformer):
            module.to("cpu")
            cpu_offload(module, execution_device=device, offload_buffers=True)
        self._execution_device = device
        self.conditioning.clear()
        self._prompt_cache.clear()
        return self

    def enable_group_offload(self, device: str | torch.device = "cuda", offload_type: str = "block_level",
                             use_stream: bool | None = None) -> LayerComposerPipeline:
        """diffusers' group offloading: weights stay on the CPU and move to `device` a block of layers at a time
        (`offload_type` "block_level", one transformer block per group) or one layer at a time ("leaf_level"),
        prefetched on a CUDA stream when `use_stream` (default: on CUDA)."""
        from diffusers.hooks import apply_group_offloading

        device = torch.device(device)
        stream = device.type == "cuda" if use_stream is None else use_stream
        kwargs: dict[str, Any] = {"onload_device": device, "offload_device": torch.device("cpu"),
                                  "offload_type": offload_type, "use_stream": stream}
        if offload_type == "block_level":
            kwargs["num_blocks_per_group"] = 1
        for module in [*self._text_modules(), self.vae, self.transformer]:
            module.to("cpu")
            apply_group_offloading(module, **kwargs)
        self._execution_device = device
        self.conditioning.clear()
        self._prompt_cache.clear()
        return self

    def enable_vae_tiling(self) -> LayerComposerPipeline:
        """Encode and decode large pictures in overlapping tiles (less memory at 2K and up)."""
        self.vae.enable_tiling()
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype (a GGUF transformer's quantized blocks are stored as bytes)."""
        return next(p.dtype for p in self.transformer.parameters() if p.is_floating_point())

    # -- components ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H/16 * W/16, 4C) normalised packed latents (distribution mode)."""
        vae = self.vae
        vae_dtype = next(vae.parameters()).dtype
        latents = vae.encode(pixels.to(self.device, vae_dtype)).latent_dist.mode()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        return pack_latents(latents).to(self.dtype)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, grid: tuple[int, int],
               check: Callable[[], None] | None = None) -> Image.Image:
        """(1, rows*cols, 4C) packed latents -> RGB picture; a large picture is decoded in tiles with `check()`
        before each (`models/vae_tiles.py`), so that a cancel can stop it."""
        vae = self.vae
        latents = unpack_latents(tokens, *grid)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        pixels = decode_latents(vae, latents.to(next(vae.parameters()).dtype), check)[0]
        return pixels_picture(pixels)

    def encode_prompt(self, prompt: str) -> TextEmbeddings:
        """Prompt embeddings, cached by text (the editor regenerates with the same prompt)."""
        cached = self._prompt_cache.get(prompt)
        if cached is None:
            cached = self.text_encoder.encode([prompt])
            self._prompt_cache[prompt] = cached
            if len(self._prompt_cache) > 16:
                self._prompt_cache.popitem(last=False)
        return cached

    def condition(self, canvas: Canvas, mode: Mode = "layered", check: Callable[[], None] | None = None
                  ) -> Conditioning:
        """The canvas's condition tokens and ids (cached per layer)."""
        return self.conditioning.build(canvas, mode, check)

    # -- generation ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        canvas: Canvas,
        prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        mode: Mode = "layered",
        callback: StepCallback | None = None,
        hard_lock: bool = False,
        strength: float = 1.0,
        check: Callable[[], None] | None = None,
    ) -> GenerationResult:
        """Render `canvas`; `prompt` overrides the canvas's own. Same seed, same picture (bit for bit on CPU).

        `check` is called before each VAE encode of the conditioning, before sampling and before decoding,
        and may raise to stop there (a cancelled job); `callback` does the same between sampling steps.

        `hard_lock=True` also holds the latent pixels (8x8 px) that show locked layers only to those
        layers' latents while sampling (inpainting-style; see `conditioning.hard_lock_target`): fidelity
        there up to the VAE, whatever the model's own; latent pixels with any unlocked or soft-edge
        content stay the model's.

        `strength < 1` starts from the flattened canvas instead of pure noise (image-to-image, as
        diffusers' `strength` or ComfyUI's `denoise`): its latents are noised to the schedule's sigma
        after the first `steps - round(steps * strength)` steps, and only the remaining steps run. Lower
        keeps more of the canvas as drawn (placement, pose, colours; transparent areas are the fill
        grey), higher lets the model redraw more; 1 (the default) is the method itself.
        """
        canvas.validate()
        if mode not in MODES:
            raise LayerComposerError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
        steps = STEPS.check(self.default_steps if num_inference_steps is None else num_inference_steps)
        guidance = self.guidance_scale if guidance_scale is None else GUIDANCE.check(guidance_scale)
        seed = SEED.check(seed)
        skipped = skipped_steps(steps, strength)
        text = prompt if prompt is not None else (canvas.prompt or "")
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()

        cond = self.condition(canvas, mode, check)
        t1 = time.perf_counter()
        seconds["condition"] = t1 - t0
        emb = self.encode_prompt(text)
        # Guidance-distilled models (FLUX dev / Kontext) take guidance as an embedding; others get true
        # classifier-free guidance: one batched pass with the prompt and with the empty prompt.
        embedded_guidance = bool(self.transformer.config.guidance_embeds)
        true_cfg = not embedded_guidance and guidance > 1.0
        if true_cfg:
            empty = self.encode_prompt("")
            emb = TextEmbeddings(torch.cat([emb.sequence, empty.sequence]), torch.cat([emb.pooled, empty.pooled]))
        rows, cols = canvas.grid
        n_noisy = rows * cols
        device, dtype = self.device, self.dtype

        generator = torch.Generator("cpu").manual_seed(int(seed))
        # Noise is drawn on the CPU in float32, so a seed means the same noise on any device.
        noise = torch.randn((1, n_noisy, self.transformer.config.in_channels), generator=generator)
        noise = noise.to(device, dtype)
        ids = torch.cat([torch.from_numpy(grid_ids(rows, cols, 0)), cond.ids])
        cond_tokens = cond.tokens.to(device, dtype) if cond.tokens is not None else None
        batch = 2 if true_cfg else 1
        guidance_t = torch.full((1,), guidance, device=device, dtype=torch.float32) if embedded_guidance else None

        def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
            out = denoise(self.transformer, x.expand(batch, -1, -1), cond_tokens, ids, emb,
                          torch.full((batch,), sigma), guidance_t)
            if true_cfg:
                v_cond, v_uncond = out.chunk(2)
                return v_uncond + guidance * (v_cond - v_uncond)
            return out

        known, hard_locked = None, (0 if hard_lock else None)
        if hard_lock:
            with torch.no_grad():
                if check is not None:
                    check()
                held, x0 = self.conditioning.hard_lock(canvas)  # cached: an unchanged canvas encodes once
            if x0 is not None:
                channels = x0.shape[-1] // 4
                mask = pack_latents(torch.from_numpy(held)[None, None].expand(1, channels, -1, -1))
                known = KnownRegion(x0[None].to(device, dtype), mask.to(device))
                hard_locked = int(held.sum())
            seconds["hard_lock"] = time.perf_counter() - t1

        sigmas = self.schedule.sigmas(steps, n_noisy)[skipped:]
        start = noise
        if skipped:
            if not canvas.visible_layers():
                raise LayerComposerError("strength: below 1 needs a visible layer to start from")
            drawn = self.condition(canvas, "collage", check).tokens.to(device, dtype)  # the flattened canvas
            start = add_noise(drawn, noise, sigmas[:1])
        if check is not None:
            check()
        latents = sample_euler(velocity, start, sigmas, callback, known)
        t2 = time.perf_counter()
        seconds["sample"] = t2 - t1
        if check is not None:
            check()
        image = self.decode(latents, (rows, cols), check)
        seconds["decode"] = time.perf_counter() - t2
        return GenerationResult(image=image, prompt=text, seed=int(seed), steps=steps, guidance_scale=guidance,
                                mode=mode, plan=cond.plan, seconds=seconds, hard_locked=hard_locked,
                                strength=float(strength))

    def __call__(self, canvas: Canvas, prompt: str | None = None, **settings: Any) -> Image.Image:
        """Render `canvas` and return the picture: `generate(canvas, prompt, **settings).image`, with the
        same keyword settings (`num_inference_steps`, `guidance_scale`, `seed`, `mode`, `strength`, ...)."""
        return self.generate(canvas, prompt, **settings).image

    def preview(self, tokens: torch.Tensor, grid: tuple[int, int]) -> Image.Image:
        """Decode intermediate latents (e.g. a StepEvent's `denoised`) for a progress preview."""
        return self.decode(tokens, grid)


class KleinComposerPipeline(LayerComposerPipeline):
    """`LayerComposerPipeline` on FLUX.2 [klein]: its transformer under FLUX.2's ids, its Qwen3 text encoder,
    and its VAE's batch-norm-normalised 2x2-patch latents (`models.klein` documents the id mapping)."""

    @classmethod
    def from_folder(cls, root: Path, load: LoadOptions | None = None) -> KleinComposerPipeline:
        """Load a diffusers `Flux2KleinPipeline` folder (`load`: --quantize / --gguf for its transformer)."""
        from .models.klein import KleinSchedule, is_distilled, load_klein_parts

        transformer, vae, text = load_klein_parts(root, load)
        distilled = is_distilled(root)
        # The pipeline's defaults: the distilled klein runs 4 steps without guidance, the base 50 with CFG 4.
        return cls(transformer, vae, text, KleinSchedule(), 1.0 if distilled else 4.0, 4 if distilled else 50,
                   name=root.name)

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's batch-norm mean and standard deviation per packed channel (4C: channel, then 2x2 patch)."""
        bn = self.vae.bn
        return bn.running_mean, torch.sqrt(bn.running_var + self.vae.config.batch_norm_eps)

    @torch.no_grad()
    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        vae_dtype = next(vae.parameters()).dtype
        latents = vae.encode(pixels.to(self.device, vae_dtype)).latent_dist.mode()
        # pack_latents orders each token's channels (c, ph, pw), as Flux2's `_patchify_latents`.
        mean, std = self._latent_stats()
        tokens = (pack_latents(latents) - mean.to(latents)) / std.to(latents)
        return tokens.to(self.dtype)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, grid: tuple[int, int],
               check: Callable[[], None] | None = None) -> Image.Image:
        vae = self.vae
        vae_dtype = next(vae.parameters()).dtype
        mean, std = self._latent_stats()
        tokens = tokens.to(mean.device, torch.float32) * std.float() + mean.float()
        pixels = decode_latents(vae, unpack_latents(tokens, *grid).to(vae_dtype), check)[0]
        return pixels_picture(pixels)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        raise ModelError("a FLUX.2 [klein] pipeline is saved as its diffusers folder and a LoRA, not as ours")

    def load_loras(self, specs: list[str]) -> list[str]:
        """Apply LoRA files through diffusers' FLUX.2 loader (`Flux2KleinPipeline.lora_state_dict`)."""
        from .models.flux import load_loras as load

        return load(self.transformer, specs, pipeline="Flux2KleinPipeline")
