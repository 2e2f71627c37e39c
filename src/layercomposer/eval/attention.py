"""The attention-mass probe: how much of their attention the noisy tokens where the target shows an unlocked
character spend on that character's own layer tokens (and on the locked tokens, the other layers, the noisy
tokens and the text), averaged over heads, blocks and a few noise levels.

A model that uses its unlocked layers looks at them from where the character is drawn. One forward pass per
noise level on the target's latents noised as in training (`flow.add_noise`), the same call as sampling
(`models.denoiser.denoise`), with a processor that computes the attention weights explicitly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..conditioning import grid_ids
from ..flow import add_noise
from ..models.attention import PaddedBatchAttnProcessor, use_stock_attention
from ..models.denoiser import denoise

TIMES = (0.3, 0.6, 0.9)


class AttentionMassProcessor(PaddedBatchAttnProcessor):
    """The padded-batch processor with explicit softmax, summing, per query, the weight on each key group."""

    def __init__(self, groups: torch.Tensor, count: int) -> None:
        self.groups = groups
        """(S,) int64: the key group of each position of the full sequence (text, noisy, condition)."""
        self.count = count
        self.mass: list[torch.Tensor] = []
        """One (S, count) tensor per attention call: each query's weight on each group, mean over heads."""

    def attend(self, query, key, value, mask):
        scores = (query.float() @ key.float().transpose(-1, -2)) / query.shape[-1] ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1)  # (B, H, S, S)
        onehot = torch.nn.functional.one_hot(self.groups, self.count).float()  # (S, G)
        self.mass.append((weights.mean(1)[0] @ onehot).detach())
        return (weights @ value.float()).to(value.dtype)


@torch.no_grad()
def attention_mass(pipe, canvas, target, cells: dict[str, np.ndarray], times: tuple[float, ...] = TIMES,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """For each unlocked layer named in `cells` ((N,) bool: the noisy tokens where the target shows it), the
    mean attention weight of those tokens on: its own layer's tokens (`own`), other unlocked layers
    (`other_unlocked`), locked tokens (`locked`), the noisy tokens (`noisy`) and the text (`text`)."""
    from ..conditioning import picture_pixels

    cond = pipe.condition(canvas, "layered")
    rows, cols = canvas.grid
    n = rows * cols
    text = pipe.encode_prompt(canvas.prompt or "")
    length = text.sequence.shape[1]
    groups = [g for g in cond.plan.groups if g.tokens]
    # Key groups: 0 text, 1 noisy, 2 locked, 3 + k the k-th unlocked group.
    unlocked = [g.name for g in groups if not g.locked]
    labels = [torch.zeros(length, dtype=torch.long), torch.ones(n, dtype=torch.long)]
    for g in groups:
        labels.append(torch.full((g.tokens,), 2 if g.locked else 3 + unlocked.index(g.name), dtype=torch.long))
    processor = AttentionMassProcessor(torch.cat(labels), 3 + len(unlocked))
    x0 = pipe._encode_pixels(picture_pixels(target.crop((0, 0, cols * 16, rows * 16))))
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=gen)
    ids = torch.cat([torch.from_numpy(grid_ids(rows, cols, 0)), cond.ids])
    guidance = torch.full((1,), pipe.guidance_scale) if pipe.transformer.config.guidance_embeds else None
    pipe.transformer.set_attn_processor(processor)
    try:
        for t in times:
            tt = torch.tensor([t])
            denoise(pipe.transformer, add_noise(x0, noise, tt), cond.tokens, ids, text, tt, guidance)
    finally:
        use_stock_attention(pipe.transformer)
    mass = torch.stack(processor.mass).mean(0)  # (S, G): mean over blocks and times
    out: dict[str, dict[str, float]] = {}
    for name, where in cells.items():
        if name not in unlocked or not where.any():
            continue
        q = mass[length:length + n][torch.from_numpy(where)].mean(0)  # (G,)
        k = 3 + unlocked.index(name)
        out[name] = {"own": float(q[k]), "other_unlocked": float(q[3:].sum() - q[k]), "locked": float(q[2]),
                     "noisy": float(q[1]), "text": float(q[0]), "own_tokens": int(cond.plan.groups[
                         [g.name for g in cond.plan.groups].index(name)].tokens)}
    return out


def summarise_attention(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over characters, and the same split by whether the identifier recognised the layered picture."""
    def mean(rs: list[dict], key: str) -> float | None:
        return float(np.mean([r[key] for r in rs])) if rs else None

    keys = ("own", "other_unlocked", "locked", "noisy", "text")
    out: dict[str, Any] = {"characters": len(records), **{k: mean(records, k) for k in keys}}
    for label, flag in (("recognised", True), ("not_recognised", False)):
        rs = [r for r in records if r.get("recognised") is flag]
        out[label] = {"characters": len(rs), **{k: mean(rs, k) for k in keys}}
    return out
