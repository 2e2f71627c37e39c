"""FLUX.2 [klein] as a base: its transformer, Qwen3 text encoder and VAE under our conditioning.

A diffusers ``Flux2KleinPipeline`` folder (model_index.json ``_class_name``; diffusers >= 0.37) is detected and
loaded into a `KleinComposerPipeline`, the same `LayerComposerPipeline.generate` on FLUX.2's parts:

- **text**: the Qwen3 encoder's hidden states of layers 9, 18 and 27 side by side (the pipeline's own
  `_get_qwen3_prompt_embeds`, chat template included); FLUX.2 has no pooled vector;
- **latents**: the VAE's 32 channels in 2x2 patches (128 per token, one token per 16 px as in FLUX.1), normalised
  by the VAE's batch-norm statistics as the pipeline does;
- **schedule**: the pipeline's sigmas (`compute_empirical_mu` of the token count and the step count);
- **guidance**: none for the distilled klein (``is_distilled``), true classifier-free guidance (4) for the base.

Layered ids on FLUX.2
---------------------
FLUX.2 gives each token a 4-axis id ``(T, H, W, L)``: text token ``l`` is ``(0, 0, 0, l)``, the output's latents
``(0, r, c, 0)``, and the pipeline's k-th reference image (k = 0, 1, ...) ``(10 + 10 k, h, w, 0)`` from its own
top-left corner. Our conditioning's 3-axis ids ``[i, r, c]`` (docs/DESIGN.md section 3) map to ``(10 i, r, c, 0)``:

- noisy tokens ``[0, r, c]`` -> ``(0, r, c, 0)``, the pipeline's own output ids;
- **locked** layers ``[0, r, c]`` -> ``(0, r, c, 0)``: they share the output's index, at their canvas cells;
- the j-th **unlocked** layer (j = 1..k, back to front) ``[j, r, c]`` -> ``(10 j, r, c, 0)``: an index of its own,
  on klein's reference spacing (where the pipeline would put reference j - 1), but at its **canvas** grid cells,
  not from a (0, 0) origin, so every layer keeps where it was placed;
- ``collage`` mode's flattened canvas ``[1, r, c]`` -> ``(10, r, c, 0)``: exactly klein's first reference image,
  so `generate --mode collage` is klein's own single-reference edit (tests check it against the pipeline).

Pruned tokens stay pruned (only kept tokens enter the sequence), and merged locked layers stay one group at T = 0.
Without a LoRA trained this way the base model has never seen locked tokens at the output's index nor unlocked
layers away from their origin: what it draws is its guess.

Training uses per-sample ids and padding masks as on FLUX.1 (`attention.PaddedBatchAttnProcessor`): the FLUX.2
processors below take the same ``sample_rotary_emb`` and ``attention_mask`` through diffusers' dispatcher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..flow import FlowSchedule, time_shift
from .attention import PaddedBatchAttnProcessor, apply_rope
from .lowmem import LoadOptions, load_transformer
from .text import TextEmbeddings, WrappedTextModel

KLEIN_PIPELINES = ("Flux2KleinPipeline",)
"""diffusers pipeline folders loaded as FLUX.2 [klein]."""

REFERENCE_SPACING = 10
"""Flux2 pipelines put reference image k at T = 10 + 10 k (`_prepare_image_ids(scale=10)`)."""

MAX_REFERENCES = 4
"""Images FLUX.2 [klein] takes as references (the edit image included)."""

TEXT_LAYERS = (9, 18, 27)
"""The Qwen3 layers whose hidden states make klein's text embedding (the pipeline's default)."""

LORA_TARGETS = (r".*(transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|"
                r"to_add_out)|single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out))")
"""LoRA targets on FLUX.2: the double blocks' attention projections (as on FLUX.1) and the single blocks' fused
QKV + MLP input and output projections (a peft regular expression, matched against whole module names)."""


def layered_ids(ids: torch.Tensor) -> torch.Tensor:
    """Our (..., 3) ids ``[i, r, c]`` -> FLUX.2's (..., 4) ids ``(10 i, r, c, 0)`` (see the module docstring)."""
    ids = ids.float()
    return torch.cat([ids[..., :1] * REFERENCE_SPACING, ids[..., 1:3], torch.zeros_like(ids[..., :1])], dim=-1)


def text_ids(length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(L, 4) ids of L text tokens, ``(0, 0, 0, l)``, as `Flux2KleinPipeline._prepare_text_ids`."""
    ids = torch.zeros((length, 4), device=device)
    ids[:, 3] = torch.arange(length, device=device)
    return ids


# ----------------------------------------------------------------------------------------------------------
# The transformer


def _pos_embed_forward(module: Any, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers.models.transformers.transformer_flux2 import Flux2PosEmbed

    return Flux2PosEmbed.forward(module, ids)


class _LayeredIdsPosEmbed(torch.nn.Module):
    """Flux2PosEmbed that also takes our 3-axis ids: it returns them mapped to 4 axes, for the transformer's
    forward to turn into per-sample rotary embeddings once it knows the text length (`denoise` computes
    per-sample positions through `pos_embed` before the call). 4-axis ids get FLUX.2's rotary embedding."""

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.shape[-1] == 3:
            mapped = layered_ids(ids)
            return mapped, mapped
        return _pos_embed_forward(self, ids)


class LayeredFlux2Transformer:
    """Mixed into a loaded `Flux2Transformer2DModel` (`make_layered`): the FLUX.1 call of `models.denoiser`.

    ``forward(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance,
    joint_attention_kwargs, return_dict)`` with our 3-axis ids, mapped to FLUX.2's by `layered_ids`; the pooled
    vector is ignored (FLUX.2 has none). Weights, config, LoRA and quantization are the stock model's.
    """

    lora_targets = LORA_TARGETS
    layered_klein = True

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor | None = None, timestep: torch.Tensor | None = None,
                img_ids: torch.Tensor | None = None, txt_ids: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None, joint_attention_kwargs: dict | None = None,
                return_dict: bool = True, **kwargs: Any) -> Any:
        length = encoder_hidden_states.shape[1]
        device = hidden_states.device
        if img_ids.ndim == 3:
            img_ids = img_ids[0]
        img4 = layered_ids(img_ids) if img_ids.shape[-1] == 3 else img_ids.float()
        extra = dict(joint_attention_kwargs or {})
        per_sample = extra.pop("sample_rotary_emb", None)
        if per_sample is not None:
            ids = per_sample[0]
            if ids.shape[-1] != 4:
                raise ValueError("per-sample positions on FLUX.2 come from this model's pos_embed (3-axis ids)")
            ids = ids.clone()
            ids[:, :length] = text_ids(length, ids.device)  # the text rows: FLUX.2's (0, 0, 0, l)
            cos, sin = zip(*(_pos_embed_forward(self.pos_embed, sample) for sample in ids), strict=True)
            extra["sample_rotary_emb"] = (torch.stack(cos), torch.stack(sin))
            if not all(isinstance(p, _PADDED_PROCESSORS) for p in self.attn_processors.values()):
                raise ValueError("per-sample positions need the padded-batch processors (use_padded_batch_attention)")
        return super().forward(
            hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
            img_ids=img4.to(device), txt_ids=text_ids(length, device), guidance=guidance,
            joint_attention_kwargs=extra or None, return_dict=return_dict, **kwargs)

    def set_attn_processor(self, processor: Any) -> None:
        """FLUX.1's processors (what the trainer and `use_stock_attention` install) become their FLUX.2 versions;
        anything else is installed as given."""
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
        from diffusers.models.transformers.transformer_flux2 import (
            Flux2AttnProcessor,
            Flux2ParallelSelfAttention,
            Flux2ParallelSelfAttnProcessor,
        )

        if isinstance(processor, (PaddedBatchAttnProcessor, FluxAttnProcessor)):
            padded = isinstance(processor, PaddedBatchAttnProcessor)
            table = {}
            for key in self.attn_processors:  # "transformer_blocks.0.attn.processor", ...
                single = isinstance(self.get_submodule(key.removesuffix(".processor")), Flux2ParallelSelfAttention)
                cls = ((PaddedParallelSelfAttnProcessor if single else PaddedFlux2AttnProcessor) if padded
                       else (Flux2ParallelSelfAttnProcessor if single else Flux2AttnProcessor))
                table[key] = cls()
            super().set_attn_processor(table)
            return
        super().set_attn_processor(processor)


def make_layered(transformer: Any) -> Any:
    """Turn a loaded diffusers `Flux2Transformer2DModel` into a `LayeredFlux2Transformer` (same object, weights,
    config and adapters; only the call and the position embedding's 3-axis input are added)."""
    from diffusers import Flux2Transformer2DModel

    if getattr(transformer, "layered_klein", False):
        return transformer
    if not isinstance(transformer, Flux2Transformer2DModel):
        raise ModelError(f"not a FLUX.2 transformer: {type(transformer).__name__}")
    base = type(transformer)
    transformer.__class__ = type(f"Layered{base.__name__}", (LayeredFlux2Transformer, base), {})
    embed = transformer.pos_embed
    embed.__class__ = type("LayeredIdsPosEmbed", (_LayeredIdsPosEmbed, type(embed)), {})
    return transformer


class _PaddedAttention:
    """What both FLUX.2 block types share: per-sample rotary positions, then diffusers' attention dispatcher
    with a key mask (the backend and parallel config are the ones diffusers' own processors carry)."""

    _attention_backend = None
    _parallel_config = None

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rope: Any,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        if rope is not None:
            query, key = apply_rope(query, *rope), apply_rope(key, *rope)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        return out.flatten(2, 3).to(query.dtype)


class PaddedFlux2AttnProcessor(_PaddedAttention):
    """FLUX.2's double-stream attention with per-sample rotary positions and a key padding mask (the FLUX.2
    version of `attention.PaddedBatchAttnProcessor`), through diffusers' attention dispatcher."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None,
                 sample_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> Any:
        from diffusers.models.transformers.transformer_flux2 import _get_qkv_projections

        query, key, value, e_query, e_key, e_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        heads = (-1, attn.head_dim)
        query = attn.norm_q(query.unflatten(-1, heads))
        key = attn.norm_k(key.unflatten(-1, heads))
        value = value.unflatten(-1, heads)
        joint = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if joint:
            query = torch.cat([attn.norm_added_q(e_query.unflatten(-1, heads)), query], dim=1)
            key = torch.cat([attn.norm_added_k(e_key.unflatten(-1, heads)), key], dim=1)
            value = torch.cat([e_value.unflatten(-1, heads), value], dim=1)
        rope = sample_rotary_emb if sample_rotary_emb is not None else image_rotary_emb
        out = self._attend(query, key, value, rope, attention_mask)
        if joint:
            text_len = encoder_hidden_states.shape[1]
            e_out, out = out[:, :text_len], out[:, text_len:]
            return attn.to_out[1](attn.to_out[0](out)), attn.to_add_out(e_out)
        return attn.to_out[1](attn.to_out[0](out))


class PaddedParallelSelfAttnProcessor(_PaddedAttention):
    """FLUX.2's single-stream (parallel attention + MLP) block with per-sample rotary positions and a key mask."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: Any = None,
                 sample_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        hidden_states = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim = 3 * attn.inner_dim
        qkv, mlp = torch.split(hidden_states, [qkv_dim, hidden_states.shape[-1] - qkv_dim], dim=-1)
        query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in qkv.chunk(3, dim=-1))
        query, key = attn.norm_q(query), attn.norm_k(key)
        rope = sample_rotary_emb if sample_rotary_emb is not None else image_rotary_emb
        out = self._attend(query, key, value, rope, attention_mask)
        return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))


_PADDED_PROCESSORS = (PaddedFlux2AttnProcessor, PaddedParallelSelfAttnProcessor)


# ----------------------------------------------------------------------------------------------------------
# Text, schedule, folder


class KleinTextEncoder(WrappedTextModel):
    """FLUX.2 [klein]'s text conditioning: Qwen3 hidden states of three layers, side by side, per token."""

    kind = "klein"

    def __init__(self, model: Any, tokenizer: Any, max_sequence_length: int = 512,
                 layers: tuple[int, ...] = TEXT_LAYERS) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_sequence_length = max_sequence_length
        self.layers = tuple(layers)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeddings:
        from diffusers import Flux2KleinPipeline

        sequence = Flux2KleinPipeline._get_qwen3_prompt_embeds(
            self.model, self.tokenizer, list(prompts), max_sequence_length=self.max_sequence_length,
            hidden_states_layers=self.layers)
        # FLUX.2 has no pooled vector; `denoise` passes one along and the transformer ignores it.
        return TextEmbeddings(sequence=sequence, pooled=torch.zeros((sequence.shape[0], 1), dtype=sequence.dtype,
                                                                    device=sequence.device))

    @classmethod
    def from_pretrained(cls, root: Path, dtype: torch.dtype = torch.float32) -> KleinTextEncoder:
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        model = Qwen3ForCausalLM.from_pretrained(root / "text_encoder", use_safetensors=True, dtype=dtype)
        return cls(model, AutoTokenizer.from_pretrained(root / "tokenizer"))


def compute_empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's time shift from the token count and the number of steps (diffusers' `pipeline_flux2`)."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu as mu

    return float(mu(image_seq_len=image_seq_len, num_steps=num_steps))


class KleinSchedule(FlowSchedule):
    """The sigmas of `Flux2KleinPipeline`: linspace(1, 1/N, N), exponentially shifted by `compute_empirical_mu`."""

    def sigmas(self, num_steps: int, image_seq_len: int) -> torch.Tensor:
        t = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
        shifted = time_shift(compute_empirical_mu(image_seq_len, num_steps), t)
        return torch.cat([shifted, torch.zeros(1, dtype=torch.float64)])


def is_distilled(root: Path) -> bool:
    """Whether a klein folder is the step-distilled model (no classifier-free guidance, 4 steps)."""
    try:
        return bool(json.loads((root / "model_index.json").read_text()).get("is_distilled", False))
    except (OSError, ValueError):
        return False


def load_klein_parts(root: Path, load: LoadOptions | None = None,
                     dtype: torch.dtype = torch.float32) -> tuple[Any, Any, KleinTextEncoder]:
    """A Flux2KleinPipeline folder's transformer (layered), VAE and text encoder (safetensors only)."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (root / part).is_dir():
            raise ModelError(f"{root}: {part}/ missing from the Flux2KleinPipeline folder")
    try:
        transformer = make_layered(load_transformer(Flux2Transformer2DModel, root / "transformer", load, dtype))
        vae = AutoencoderKLFlux2.from_pretrained(root / "vae", use_safetensors=True, torch_dtype=dtype)
        text = KleinTextEncoder.from_pretrained(root, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{root}: cannot load weights ({str(exc).splitlines()[0]})") from None
    return transformer, vae, text
