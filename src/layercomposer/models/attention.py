"""A FLUX attention processor for padded batches: per-sample rotary positions and a key padding mask.

diffusers' `FluxTransformer2DModel` takes one `img_ids` for the whole batch, but a training batch mixes
canvases whose kept condition tokens differ in number and position. This processor plugs into the public
attention-processor hook (`transformer.set_attn_processor`) and reads two extra `joint_attention_kwargs`:

- ``sample_rotary_emb``: ``(cos, sin)``, each ``(B, S, head_dim)`` for the full text + image sequence;
- ``attention_mask``: ``(B, 1, 1, S)`` bool, False on padding keys.

With neither given it computes exactly what the stock `FluxAttnProcessor` computes.

The attention itself goes through diffusers' attention dispatcher (`dispatch_attention_fn`), as the stock
processors do, so `transformer.set_attention_backend("flash" | "flash_varlen" | "native" | ...)` or the
`attention_backend` context manager choose the kernel. The padding mask is a key mask whose False entries are
a suffix of each sample's sequence (`training.batch.collate` pads at the end), which is the form the
variable-length backends (`flash_varlen`, `sage_varlen`) read.
"""

from __future__ import annotations

import torch


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): FLUX's interleaved real-pair rotation."""
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    return torch.stack([-x_imag, x_real], dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on x (B, S, H, D) with cos/sin (S, D) or (B, S, D), in float32."""
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # (B, S, 1, D) broadcast over heads
    return (x.float() * cos + rotate_pairs(x).float() * sin).to(x.dtype)


class PaddedBatchAttnProcessor:
    """Joint text-image attention of FLUX with per-sample rotary positions and padding masks."""

    # Set by diffusers' `ModelMixin.set_attention_backend` (None: the dispatcher's active backend).
    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn,  # diffusers FluxAttention
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        sample_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        heads = (-1, attn.head_dim)
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, heads))  # (B, S_img, H, D)
        key = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, heads))
        value = attn.to_v(hidden_states).unflatten(-1, heads)

        joint = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if joint:
            # Double-stream block: the text stream has its own projections; the sequence is [text, image].
            e_query = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, heads))
            e_key = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, heads))
            e_value = attn.add_v_proj(encoder_hidden_states).unflatten(-1, heads)
            query = torch.cat([e_query, query], dim=1)
            key = torch.cat([e_key, key], dim=1)
            value = torch.cat([e_value, value], dim=1)

        rope = sample_rotary_emb if sample_rotary_emb is not None else image_rotary_emb
        if rope is not None:
            query = apply_rope(query, *rope)
            key = apply_rope(key, *rope)

        out = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)  # (B, S, H*D)

        if joint:
            text_len = encoder_hidden_states.shape[1]
            e_out, out = out[:, :text_len], out[:, text_len:]
            out = attn.to_out[1](attn.to_out[0](out.contiguous()))
            return out, attn.to_add_out(e_out.contiguous())
        return out

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """(B, H, S, D) queries, keys and values -> (B, H, S, D) outputs, through diffusers' dispatcher.

        `mask`: (B, 1, 1, S) bool, False on padding keys, or None. Subclasses may override this (the eval's
        attention-mass probe computes the weights explicitly).
        """
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        out = dispatch_attention_fn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                    attn_mask=mask, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        return out.transpose(1, 2)


def use_padded_batch_attention(transformer: torch.nn.Module) -> None:
    """Install `PaddedBatchAttnProcessor` on every attention module of a FluxTransformer2DModel."""
    transformer.set_attn_processor(PaddedBatchAttnProcessor())


def use_stock_attention(transformer: torch.nn.Module) -> None:
    """Put diffusers' own FluxAttnProcessor back (inference at batch 1 needs nothing else)."""
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    transformer.set_attn_processor(FluxAttnProcessor())


def sample_rotary(transformer: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, 3) ids -> per-sample (cos, sin), each (B, S, head_dim), from the transformer's own FluxPosEmbed."""
    cos, sin = zip(*(transformer.pos_embed(sample_ids) for sample_ids in ids), strict=True)
    return torch.stack(cos), torch.stack(sin)
