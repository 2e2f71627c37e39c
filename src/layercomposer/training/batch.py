"""From training canvases to padded batches, and the flow-matching loss on them.

A batch mixes canvases with different numbers of kept condition tokens: condition tokens are padded to
the batch maximum, padded keys are masked out of attention, and every sample gets its own positions
(`models.attention.PaddedBatchAttnProcessor`). The loss is taken on the noisy tokens only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..conditioning import ConditioningBuilder, Mode, TokenRules, grid_ids, picture_pixels, subject_cells
from ..data.canvas_sampling import TrainingSample
from ..flow import add_noise, velocity_target
from ..models.denoiser import denoise, unwrap
from ..models.text import TextEmbeddings


@dataclass
class EncodedSample:
    """One training example in latent space."""

    x0: torch.Tensor
    """(N, D) target latents (packed)."""
    cond: torch.Tensor
    """(M, D) kept condition tokens (M may be 0)."""
    cond_ids: torch.Tensor
    """(M, 3) int64 ids of the condition tokens."""
    grid: tuple[int, int]
    prompt: str
    subject: torch.Tensor | None = None
    """(N,) bool: noisy tokens whose 16x16 cell shows part of a subject in the target (`subject_cells`);
    None when unknown (samples from before it was recorded)."""


@dataclass
class Batch:
    """Padded tensors of B samples of the same grid."""

    x0: torch.Tensor
    """(B, N, D)"""
    cond: torch.Tensor
    """(B, M_max, D), zeros where padded"""
    ids: torch.Tensor
    """(B, N + M_max, 3) float ids of the image sequence (noisy then condition), zeros where padded"""
    key_mask: torch.Tensor | None
    """(B, N + M_max) bool, False on padding; None when no sample is padded"""
    prompts: list[str]
    subject: torch.Tensor | None = None
    """(B, N) bool, the samples' `EncodedSample.subject`; None unless every sample has one"""

    @property
    def size(self) -> int:
        return self.x0.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        mask = self.key_mask.to(device) if self.key_mask is not None else None
        subject = self.subject.to(device) if self.subject is not None else None
        return Batch(self.x0.to(device, dtype), self.cond.to(device, dtype), self.ids.to(device), mask, self.prompts,
                     subject)

    def token_weights(self, subject_weight: float) -> torch.Tensor | None:
        """(B, N) loss weights: `subject_weight` on subject cells, 1 elsewhere; None when uniform."""
        if subject_weight == 1.0:
            return None
        if self.subject is None:
            raise ValueError("a subject loss weight needs the batch's subject cells (samples made without them)")
        return 1.0 + (float(subject_weight) - 1.0) * self.subject.float()


class SampleEncoder:
    """Encodes training canvases with the same `ConditioningBuilder` as inference; targets cached by content.

    `encode_many` encodes a whole micro-batch's missing pictures (layers, collages, targets) in VAE calls of
    `encode_batch` pictures: on a CPU, one call on 8 pictures costs about half of 8 calls on one.
    """

    def __init__(self, encode_pixels: Callable[[torch.Tensor], torch.Tensor], mode: Mode = "layered",
                 max_cached_layers: int = 65536, max_cached_targets: int = 65536, encode_batch: int = 8,
                 rules: TokenRules | None = None) -> None:
        self.encode_pixels = encode_pixels
        self.mode = mode
        self.encode_batch = max(1, encode_batch)
        self.builder = ConditioningBuilder(encode_pixels, max_entries=max_cached_layers, encode_batch=encode_batch,
                                           rules=rules)
        self.max_cached_targets = max_cached_targets
        self._targets: OrderedDict[tuple[str, int, int, int], torch.Tensor] = OrderedDict()

    @staticmethod
    def _target_key(sample: TrainingSample) -> tuple[str, int, int, int]:
        return (sample.scene, sample.image, *sample.target.size)

    def _encode_targets(self, samples: list[TrainingSample]) -> None:
        missing = {self._target_key(s): s for s in samples if self._target_key(s) not in self._targets}
        items = list(missing.items())
        for start in range(0, len(items), self.encode_batch):
            chunk = items[start:start + self.encode_batch]
            pixels = torch.cat([target_pixels(sample) for _, sample in chunk])
            tokens = self.encode_pixels(pixels).detach()
            for (key, _), t in zip(chunk, tokens, strict=True):
                self._targets[key] = t.clone()
        while len(self._targets) > self.max_cached_targets:
            self._targets.popitem(last=False)

    def target_tokens(self, sample: TrainingSample) -> torch.Tensor:
        """(N, D) latents of the target picture, cached by (scene, image, size)."""
        key = self._target_key(sample)
        if key not in self._targets:
            self._encode_targets([sample])
        self._targets.move_to_end(key)
        return self._targets[key]

    def encode(self, sample: TrainingSample) -> EncodedSample:
        return self.encode_many([sample])[0]

    def encode_many(self, samples: list[TrainingSample]) -> list[EncodedSample]:
        """Encoded samples, their missing layers and targets encoded together."""
        out: list[EncodedSample] = []
        for start in range(0, len(samples), self.encode_batch):
            chunk = samples[start:start + self.encode_batch]
            self.builder.prepare([s.canvas for s in chunk], self.mode)
            self._encode_targets(chunk)
            for sample in chunk:
                cond = self.builder.build(sample.canvas, self.mode)
                # Locked layers are the target's own pixels and come back whenever that target does: keep
                # their latents. Unlocked layers (and collages) are jittered afresh every time: drop them, so
                # they do not push the reusable ones out of the cache.
                self.builder.discard([g.key for g in cond.plan.groups if not g.locked])
                x0 = self.target_tokens(sample)
                tokens = cond.tokens[0] if cond.tokens is not None else x0.new_zeros((0, x0.shape[-1]))
                subject = subject_cells(sample.subjects, sample.canvas.grid) if sample.subjects is not None else None
                out.append(EncodedSample(x0=x0, cond=tokens, cond_ids=cond.ids, grid=sample.canvas.grid,
                                         prompt=sample.prompt, subject=subject))
        return out


def target_pixels(sample: TrainingSample) -> torch.Tensor:
    """(1, 3, h, w) pixels of the target, cropped to the canvas's generation size."""
    w, h = sample.canvas.generation_size
    return picture_pixels(sample.target.crop((0, 0, w, h)))


def collate(samples: list[EncodedSample]) -> Batch:
    """Pad condition tokens to the batch maximum; every sample keeps its own ids."""
    grids = {s.grid for s in samples}
    if len(grids) != 1:
        raise ValueError(f"a batch must share one grid, got {sorted(grids)}")
    rows, cols = samples[0].grid
    n = rows * cols
    m_max = max(s.cond.shape[0] for s in samples)
    b, d = len(samples), samples[0].x0.shape[-1]
    cond = samples[0].x0.new_zeros((b, m_max, d))
    ids = torch.zeros((b, n + m_max, 3), dtype=torch.float32)
    mask = torch.ones((b, n + m_max), dtype=torch.bool)
    noisy_ids = torch.from_numpy(grid_ids(rows, cols, 0)).float()
    for i, s in enumerate(samples):
        m = s.cond.shape[0]
        cond[i, :m] = s.cond
        ids[i, :n] = noisy_ids
        ids[i, n:n + m] = s.cond_ids.float()
        mask[i, n + m:] = False
    x0 = torch.stack([s.x0 for s in samples])
    subject = torch.stack([s.subject for s in samples]) if all(s.subject is not None for s in samples) else None
    return Batch(x0=x0, cond=cond, ids=ids, key_mask=None if bool(mask.all()) else mask,
                 prompts=[s.prompt for s in samples], subject=subject)


def predict_velocity(
    transformer: torch.nn.Module,
    x_t: torch.Tensor,
    batch: Batch,
    text: TextEmbeddings,
    t: torch.Tensor,
    guidance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Velocity at the noisy tokens (B, N, D) for a padded batch (needs PaddedBatchAttnProcessor): the same
    `models.denoiser.denoise` call that sampling makes, with per-sample ids."""
    return denoise(transformer, x_t, batch.cond, batch.ids, text, t, guidance, batch.key_mask)


def flow_loss(
    transformer: torch.nn.Module,
    batch: Batch,
    text: TextEmbeddings,
    t: torch.Tensor,
    noise: torch.Tensor,
    guidance: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-matching MSE on the noisy tokens: (mean loss, per-sample losses (B,)).

    `token_weights` (B, N) makes each sample's loss the weighted mean over its tokens (`Batch.token_weights`);
    the per-token optimum is unchanged, only how much of the model's capacity each region gets.
    """
    x_t = add_noise(batch.x0, noise, t)
    pred = predict_velocity(transformer, x_t, batch, text, t, guidance)
    per_token = F.mse_loss(pred.float(), velocity_target(batch.x0, noise).float(), reduction="none").mean(dim=2)
    if token_weights is None:
        per_sample = per_token.mean(dim=1)
    else:
        w = token_weights.to(per_token)
        per_sample = (per_token * w).sum(dim=1) / w.sum(dim=1)
    return per_sample.mean(), per_sample


def guidance_vector(transformer: torch.nn.Module, batch_size: int, value: float = 1.0,
                    device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The guidance-embedding input for models that have one (FLUX dev / Kontext), else None."""
    if not unwrap(transformer).config.guidance_embeds:
        return None
    return torch.full((batch_size,), float(value), device=device)
