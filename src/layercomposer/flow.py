"""Rectified-flow math shared by the sampler and the trainer (so the two cannot drift apart).

Convention (FLUX / docs/DESIGN.md section 4): ``x_t = (1 - t) x0 + t e`` with t = 1 pure noise, the network
predicts the velocity ``e - x0``, and Euler integrates from t = 1 down to 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch


@dataclass(frozen=True)
class FlowSchedule:
    """FLUX's shifted sigma schedule; field names follow diffusers' FlowMatchEulerDiscreteScheduler config."""

    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    use_dynamic_shifting: bool = True
    shift: float = 3.0
    """Static shift, used only when ``use_dynamic_shifting`` is false."""

    def mu(self, image_seq_len: int) -> float:
        """Shift exponent, linear in the number of noisy tokens (condition tokens do not count)."""
        slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return self.base_shift + slope * (image_seq_len - self.base_image_seq_len)

    def sigmas(self, num_steps: int, image_seq_len: int) -> torch.Tensor:
        """(num_steps + 1,) float64 sigmas from 1 down to 0: linspace(1, 1/N, N) shifted, then a final 0."""
        if num_steps < 1:
            raise ValueError("num_steps must be at least 1")
        t = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
        if self.use_dynamic_shifting:
            shifted = time_shift(self.mu(image_seq_len), t)
        else:
            shifted = self.shift * t / (1 + (self.shift - 1) * t)
        return torch.cat([shifted, torch.zeros(1, dtype=torch.float64)])

    def save(self, path: Path) -> None:
        doc = {"_class_name": "FlowMatchEulerDiscreteScheduler", **asdict(self)}
        path.write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> FlowSchedule:
        """Read a diffusers scheduler_config.json (unknown keys ignored)."""
        doc = json.loads(path.read_text())
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names and v is not None})


def time_shift(mu: float, t: torch.Tensor) -> torch.Tensor:
    """Exponential time shift of FLUX: e^mu / (e^mu + (1/t - 1))."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t e; `t` broadcasts from shape (B,)."""
    t = t.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the network learns: e - x0."""
    return noise - x0


def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Clean estimate from a velocity: x0 = x_t - t v (used for previews)."""
    return x_t - t * velocity


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of dx/dt = v from `sigma` to `sigma_next` (< sigma)."""
    return x + (sigma_next - sigma) * velocity


def sample_logit_normal(
    batch: int, generator: torch.Generator | None = None, mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """Training times t = sigmoid(N(mean, std)) (SD3's logit-normal), float32 on the CPU."""
    return torch.sigmoid(mean + std * torch.randn(batch, generator=generator))
