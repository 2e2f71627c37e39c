"""Real FLUX weights: diffusers-format FLUX.1 Kontext (or FLUX.1) folders, their CLIP + T5 text encoders,
and LoRA files (diffusers / peft and the community kohya format, through diffusers' own loaders).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..flow import FlowSchedule
from .lowmem import LoadOptions, load_transformer
from .text import TextEmbeddings

FLUX_PIPELINES = ("FluxKontextPipeline", "FluxPipeline")
"""diffusers pipeline folders whose components this project loads directly."""


class FluxTextEncoder:
    """FLUX's text conditioning: T5 last hidden states as the sequence, CLIP's pooled output as the vector."""

    kind = "flux"

    def __init__(self, clip: Any, clip_tokenizer: Any, t5: Any, t5_tokenizer: Any, max_sequence_length: int = 512):
        self.clip = clip.eval().requires_grad_(False)
        self.clip_tokenizer = clip_tokenizer
        self.t5 = t5.eval().requires_grad_(False)
        self.t5_tokenizer = t5_tokenizer
        self.max_sequence_length = max_sequence_length

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeddings:
        clip_ids = self.clip_tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                                       max_length=self.clip_tokenizer.model_max_length).input_ids
        pooled = self.clip(clip_ids.to(self.clip.device), output_hidden_states=False).pooler_output
        t5_ids = self.t5_tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                                   max_length=self.max_sequence_length).input_ids
        sequence = self.t5(t5_ids.to(self.t5.device), output_hidden_states=False)[0]
        return TextEmbeddings(sequence=sequence, pooled=pooled)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FluxTextEncoder:
        self.clip.to(device=device, dtype=dtype)
        self.t5.to(device=device, dtype=dtype)
        return self

    def save_pretrained(self, root: Path) -> None:
        self.clip.save_pretrained(root / "text_encoder", safe_serialization=True)
        self.clip_tokenizer.save_pretrained(root / "tokenizer")
        self.t5.save_pretrained(root / "text_encoder_2", safe_serialization=True)
        self.t5_tokenizer.save_pretrained(root / "tokenizer_2")

    @classmethod
    def from_pretrained(cls, root: Path, dtype: torch.dtype = torch.float32) -> FluxTextEncoder:
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        clip = CLIPTextModel.from_pretrained(root / "text_encoder", use_safetensors=True, dtype=dtype)
        t5 = T5EncoderModel.from_pretrained(root / "text_encoder_2", use_safetensors=True, dtype=dtype)
        return cls(clip, AutoTokenizer.from_pretrained(root / "tokenizer"), t5,
                   AutoTokenizer.from_pretrained(root / "tokenizer_2"))


@dataclass
class FluxComponents:
    transformer: Any
    vae: Any
    text_encoder: FluxTextEncoder
    schedule: FlowSchedule
    guidance_scale: float
    name: str


def pipeline_class(root: Path) -> str | None:
    """The `_class_name` of a model folder's model_index.json (None when unreadable)."""
    try:
        return json.loads((root / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def load_flux_folder(root: Path, dtype: torch.dtype = torch.float32, load: LoadOptions | None = None) -> FluxComponents:
    """Load a diffusers FLUX.1 Kontext / FLUX.1 folder's components (safetensors only); `load` quantizes the
    transformer or reads it from a GGUF file (`lowmem`)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    kind = pipeline_class(root)
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"):
        if not (root / part).is_dir():
            raise ModelError(f"{root}: {part}/ missing from the {kind} folder")
    try:
        transformer = load_transformer(FluxTransformer2DModel, root / "transformer", load, dtype)
        vae = AutoencoderKL.from_pretrained(root / "vae", use_safetensors=True, torch_dtype=dtype)
        text = FluxTextEncoder.from_pretrained(root, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{root}: cannot load weights ({str(exc).splitlines()[0]})") from None
    schedule = FlowSchedule.load(root / "scheduler" / "scheduler_config.json")
    # Kontext is guidance-distilled (embedded guidance 2.5 in its pipeline); FLUX.1 dev uses 3.5.
    guidance = 2.5 if kind == "FluxKontextPipeline" else 3.5
    return FluxComponents(transformer, vae, text, schedule, guidance, root.name)


# ----------------------------------------------------------------------------------------------------------
# LoRA files


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """`PATH[:scale]` -> (path, scale); the scale defaults to 1."""
    path, scale = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head and _is_float(tail):
        path, scale = head, float(tail)
    p = Path(path)
    if not p.exists():
        raise ModelError(f"--lora {spec}: {path} not found")
    return p, scale


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_loras(transformer: Any, specs: list[str], pipeline: str = "FluxKontextPipeline") -> list[str]:
    """Load LoRA files into a FLUX transformer through diffusers' loader of `pipeline` (FLUX.1's converts kohya
    keys; "Flux2KleinPipeline" for FLUX.2).

    Returns the adapter names; they are activated with their scales together.
    """
    if not specs:
        return []
    import diffusers

    loader = getattr(diffusers, pipeline)
    names, weights = [], []
    for i, spec in enumerate(specs):
        path, scale = parse_lora_spec(spec)
        try:
            state = loader.lora_state_dict(str(path))
        except (OSError, ValueError, KeyError) as exc:
            reason = str(exc).splitlines()[0]
            raise ModelError(f"--lora {spec}: not a LoRA file diffusers can read ({reason})") from None
        state = state[0] if isinstance(state, tuple) else state
        if not any(k.startswith("transformer.") for k in state):
            raise ModelError(f"--lora {spec}: holds no transformer weights")
        name = f"lora{i}"
        transformer.load_lora_adapter(state, prefix="transformer", adapter_name=name)
        names.append(name)
        weights.append(scale)
    transformer.set_adapters(names, weights=weights)
    return names
