"""The one model call: noisy tokens + condition tokens + text -> velocity, for sampling and training alike.

`pipeline.LayerComposerPipeline.generate` calls it at every sampling step and `training.batch.flow_loss` at
every training step, so what the model is trained on and what it is run on cannot drift apart (tests/
test_denoiser.py checks a padded training batch against the sampling call on each sample alone).

Sequence: ``[text, noisy (N), condition (M)]``; ids ``[0, r, c]`` for the noisy tokens and the conditioning's
own ids for the condition tokens. The condition tokens' outputs are discarded.
"""

from __future__ import annotations

import torch

from .attention import sample_rotary
from .text import TextEmbeddings


def denoise(
    transformer: torch.nn.Module,
    x_t: torch.Tensor,
    cond: torch.Tensor | None,
    ids: torch.Tensor,
    text: TextEmbeddings,
    t: torch.Tensor,
    guidance: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Velocity (B, N, D) at the noisy tokens `x_t` (B, N, D) at times `t` (B,) in [0, 1].

    - `cond`: (B or 1, M, D) condition tokens, or None for none;
    - `ids`: (N + M, 3) ids shared by the batch, or (B, N + M, 3) per sample (a padded training batch; needs
      `attention.PaddedBatchAttnProcessor` on the transformer);
    - `text`: sequence (B, L, E) and pooled (B, P) prompt embeddings;
    - `key_mask`: (B, N + M) bool, False on padded condition tokens (per-sample ids only).
    """
    b, n = x_t.shape[:2]
    device, dtype = x_t.device, x_t.dtype
    seq = text.sequence.to(device, dtype)
    txt_ids = torch.zeros((seq.shape[1], 3), device=device)
    hidden = x_t if cond is None else torch.cat([x_t, cond.to(device, dtype).expand(b, -1, -1)], dim=1)
    ids = ids.to(device, torch.float32)
    kwargs: dict | None = None
    if ids.ndim == 3:
        full_ids = torch.cat([txt_ids[None].expand(b, -1, -1), ids], dim=1)  # (B, L + S, 3)
        kwargs = {"sample_rotary_emb": sample_rotary(unwrap(transformer), full_ids)}
        if key_mask is not None:
            text_keys = torch.ones((b, seq.shape[1]), dtype=torch.bool, device=device)
            kwargs["attention_mask"] = torch.cat([text_keys, key_mask.to(device)], dim=1)[:, None, None, :]
        ids = ids[0]  # unused by the padded processor, but the transformer wants one
    elif key_mask is not None:
        raise ValueError("a key mask needs per-sample ids (B, S, 3)")
    out = transformer(
        hidden_states=hidden, encoder_hidden_states=seq, pooled_projections=text.pooled.to(device, dtype),
        timestep=t.to(device, dtype), img_ids=ids, txt_ids=txt_ids, guidance=guidance,
        joint_attention_kwargs=kwargs, return_dict=False,
    )[0]
    return out[:, :n]


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / compile wrappers (for its config and pos_embed)."""
    while hasattr(module, "module"):
        module = module.module
    return getattr(module, "_orig_mod", module)
