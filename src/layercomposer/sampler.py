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


@torch.no_grad()
def sample_euler(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate from x = noise at sigmas[0] to sigmas[-1] with Euler steps; returns the final latents.

    A callback may raise (for example to cancel); nothing is left in an inconsistent state.
    """
    x = noise
    sig = [float(s) for s in sigmas]
    total = len(sig) - 1
    for i in range(total):
        v = velocity(x, sig[i])
        denoised = predict_x0(x, v, sig[i])
        x = euler_step(x, v, sig[i], sig[i + 1])
        if callback is not None:
            callback(StepEvent(step=i + 1, total=total, sigma=sig[i + 1], latents=x, denoised=denoised))
    return x
