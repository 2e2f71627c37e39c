"""Generation settings and their limits, defined once: the Python API, the CLI, the server's request schema and
the editor (which reads them from `/api/health`) all check against these."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import LayerComposerError


@dataclass(frozen=True)
class Limit:
    """A closed range [low, high] (open at `low` when `low_open`), optionally of integers only."""

    name: str
    low: float
    high: float
    integer: bool = False
    low_open: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo, hi = (int(self.low), int(self.high)) if self.integer else (f"{self.low:g}", f"{self.high:g}")
        return f"{kind} in {'(' if self.low_open else '['}{lo}, {hi}]"

    def check(self, value: Any, label: str | None = None) -> int | float:
        """`value` if it is within the limit (an int for integer limits), else a one-line LayerComposerError
        naming `label` (default: the setting's name). Booleans, NaN and infinities are refused."""
        label = label or self.name
        ok = not isinstance(value, bool) and isinstance(value, int | float)
        if ok and self.integer:
            ok = isinstance(value, int) or (math.isfinite(value) and float(value).is_integer())
        if ok:
            try:
                v = float(value)
            except OverflowError:
                ok = False
            else:
                above = v > self.low if self.low_open else v >= self.low
                ok = math.isfinite(v) and above and v <= self.high
        if not ok:
            raise LayerComposerError(f"{label}: must be {self.describe()}, got {value!r}")
        return int(value) if self.integer else float(value)

    def as_json(self) -> dict[str, Any]:
        return {"min": self.low, "max": self.high, "integer": self.integer, "min_exclusive": self.low_open}


STEPS = Limit("steps", 1, 1000, integer=True)
"""Sampling steps (diffusers' `num_inference_steps`)."""
GUIDANCE = Limit("guidance", 0.0, 30.0)
"""Guidance scale; 1 or below runs one model call per step."""
STRENGTH = Limit("strength", 0.0, 1.0, low_open=True)
"""Image-to-image strength: the share of the steps run from the noised canvas (1: from noise)."""
SEED = Limit("seed", 0, 2**32 - 1, integer=True)
"""Noise seed."""
PROMPT_CHARS = 2000
"""Longest prompt or instruction, in characters."""
DEFAULT_MAX_TOKENS = 16384
"""Most tokens (noisy + condition) a picture may have unless `--max-tokens` says otherwise (`generate`, `refine`,
`serve`): about 1024x1024 px with a few layers. The largest canvas, 4096x4096, is 65536 noisy tokens alone,
hours per picture on a CPU."""

LIMITS = {limit.name: limit for limit in (STEPS, GUIDANCE, STRENGTH, SEED)}


def limits_json() -> dict[str, Any]:
    """The limits as the API reports them (`/api/health`'s `limits`), for the editor's inputs."""
    return {**{name: limit.as_json() for name, limit in LIMITS.items()}, "prompt_chars": PROMPT_CHARS}
