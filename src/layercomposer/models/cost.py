"""A rough estimate of what sampling a canvas costs, from its token count alone (no weights loaded).

Both figures are said with how they were made, in the one line that refuses an over-size canvas:

- memory: the attention matrix of one layer if it were held whole, `heads * tokens**2 * bytes per element`.
  Memory-efficient attention kernels (PyTorch's SDPA picks one where it can) never hold it all at once, so
  this is the size of the work rather than what the process will reach; it is what grows with tokens**2.
- time: only for the demo models' architecture on a CPU, the one with a recorded measurement: the slowest
  row of `docs/benchmarks/scaling-cpu.json` (demo-base, 256 noisy + 4096 condition tokens, 0.667 s per
  step on a 2-core x86_64 CPU), scaled by (tokens / 4352)**2. Attention dominates at that size and above,
  so the square is the right shape there; for other models or devices nothing was measured and no time
  is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEASURED_TOKENS = 256 + 4096
"""Noisy + condition tokens of the slowest measured demo step (its 64 text tokens not counted, as here)."""
MEASURED_SECONDS = 0.667
"""Seconds per sampling step at `MEASURED_TOKENS` (docs/benchmarks/scaling-cpu.json; a test keeps them equal)."""
MEASURED_ON = "the demo model's 0.667 s per step at 4352 tokens on a 2-core CPU"

DEFAULT_STEPS = 28
"""Steps the total time assumes when a request names none (every shipped model's default, and `refine`'s)."""

DEMO_SHAPE_KEYS = ("num_attention_heads", "attention_head_dim", "num_layers", "num_single_layers")
"""The transformer config entries that must match the demo's for its measured time to apply."""


@dataclass(frozen=True)
class AttentionEstimate:
    tokens: int
    """Noisy + condition tokens (text tokens are few and left out)."""
    heads: int | None
    """Attention heads of the model's transformer; None when its config could not be read."""
    bytes_per_element: int
    seconds_per_step: float | None
    """None where there is no measurement to scale from (another model, or not a CPU)."""

    @property
    def matrix_bytes(self) -> int | None:
        """One layer's attention matrix, held whole: heads * tokens**2 * bytes per element."""
        return None if self.heads is None else self.heads * self.tokens**2 * self.bytes_per_element

    def describe(self, steps: int) -> str:
        """One clause for an error line: the figures and how each was estimated."""
        if self.matrix_bytes is None:
            memory = "estimated: the attention size is unknown (the model's transformer config did not read)"
        else:
            memory = (f"estimated {_bytes(self.matrix_bytes)} for one attention matrix held whole ({self.heads} heads "
                      f"x {self.tokens}^2 tokens x {self.bytes_per_element} bytes; memory-efficient kernels hold "
                      "less, but the work grows with it)")
        if self.seconds_per_step is None:
            return f"{memory}; no time estimate (nothing measured for this model on this device)"
        per_step, total = _duration(self.seconds_per_step), _duration(self.seconds_per_step * steps)
        return f"{memory} and about {per_step} per step, {total} for {steps} steps ({MEASURED_ON}, scaled by tokens^2)"


def estimate_attention(tokens: int, model: str, bytes_per_element: int = 4, cpu: bool = True) -> AttentionEstimate:
    """The estimate for `tokens` on `model` (a name, folder or cached hub id), reading only its transformer
    config; `cpu` says whether it would run on a CPU (the only device with a measurement)."""
    config = transformer_config(model)
    heads = config.get("num_attention_heads") if config else None
    seconds = None
    if cpu and config is not None and is_demo_shape(config):
        seconds = MEASURED_SECONDS * (tokens / MEASURED_TOKENS) ** 2
    return AttentionEstimate(tokens, heads if isinstance(heads, int) else None, bytes_per_element, seconds)


def is_demo_shape(config: dict[str, Any]) -> bool:
    from .registry import DEMO_BASE

    return all(config.get(key) == DEMO_BASE.transformer[key] for key in DEMO_SHAPE_KEYS)


def transformer_config(model: str) -> dict[str, Any] | None:
    """The transformer's config of a registered name or a model folder; None when it does not resolve or read
    (loading the model reports why)."""
    from ..errors import LayerComposerError
    from .registry import ModelConfig, resolve_model

    try:
        resolved = resolve_model(model)
        if isinstance(resolved, ModelConfig):
            return dict(resolved.transformer)
        config = json.loads((Path(resolved) / "transformer" / "config.json").read_text())
    except (LayerComposerError, OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _bytes(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
