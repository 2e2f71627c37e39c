"""The sampler: rectified-flow Euler as a free function of a velocity model (k-diffusion style)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .flow import euler_step, predict_x0

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
"""(x_t of the noisy tokens (B, N, D), sigma) -> velocity (B, N, D) for those tokens only."""


@dataclass
class StepEvent:
    """What a progress callback sees after each step."""

    step: int
    """1-based index of the step just taken."""
    total: int
    sigma: float
    """Noise level after the step (0 at the end)."""
    latents: torch.Tensor
    """x after the step (B, N, D)."""
    denoised: torch.Tensor
    """Clean estimate x_t - sigma v made during the step, for previews (B, N, D)."""


StepCallback = Callable[[StepEvent], None]


@dataclass
class KnownRegion:
    """Tokens held to known clean values while sampling (hard-locked cells, inpainting-style).

    After every step those tokens are replaced by the known latents noised to the new level with the
    *initial* noise, so they follow the exact path `(1 - s) x0 + s e` and end at `x0`.
    """

    x0: torch.Tensor
    """(B, N, D) clean latents (only the masked tokens matter)."""
    mask: torch.Tensor
    """(1 or B, N, 1): nonzero (True) where the token is known, 0 where the model decides."""


@torch.no_grad()
def sample_euler(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None = None,
    known: KnownRegion | None = None,
) -> torch.Tensor:
    """Integrate from x = noise at sigmas[0] to sigmas[-1] with Euler steps; returns the final latents.

    `known` holds some tokens to given clean latents (see `KnownRegion`). A callback may raise (for
    example to cancel); nothing is left in an inconsistent state.
    """
    sig = [float(s) for s in sigmas]
    x = noise
    held = None if known is None else known.mask.bool()
    if known is not None:
        x = torch.where(held, (1.0 - sig[0]) * known.x0 + sig[0] * noise, x)
    total = len(sig) - 1
    for i in range(total):
        v = velocity(x, sig[i])
        denoised = predict_x0(x, v, sig[i])
        x = euler_step(x, v, sig[i], sig[i + 1])
        if known is not None:
            s = sig[i + 1]
            x = torch.where(held, (1.0 - s) * known.x0 + s * noise, x)
            denoised = torch.where(held, known.x0, denoised)
        if callback is not None:
            callback(StepEvent(step=i + 1, total=total, sigma=sig[i + 1], latents=x, denoised=denoised))
    return x
