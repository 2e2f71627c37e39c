"""An exponential moving average of the trained weights, saved beside each checkpoint as safetensors.

Diffusion models sampled from averaged weights are usually cleaner than the last iterate, most of all
after short runs at a high learning rate. The average covers only the parameters being trained (the
whole transformer, its LoRA adapters, the demo's text encoder) and is kept in float32 whatever the
training precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

EMA_FILE = "ema.safetensors"
"""File name of the averaged weights inside a checkpoint folder."""


class EmaWeights:
    """Shadow copies of the trainable parameters of named modules, `shadow = d * shadow + (1 - d) * param`.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so the first steps (random
    weights) are forgotten quickly.
    """

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.modules = modules
        self.updates = 0
        self.shadow = {key: p.detach().float().clone() for key, p in self._params()}

    def _params(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for prefix, module in self.modules.items():
            for name, param in module.named_parameters():
                if param.requires_grad:
                    yield f"{prefix}.{name}", param

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in (call after each optimizer step)."""
        self.updates += 1
        weight = 1.0 - self.current_decay()
        for key, param in self._params():
            self.shadow[key].lerp_(param.detach().float(), weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the modules hold the averaged weights; the trained ones come back after."""
        saved = {key: p.detach().clone() for key, p in self._params()}
        try:
            copy_into(self.modules, self.shadow)
            yield
        finally:
            copy_into(self.modules, saved)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {key: t.contiguous() for key, t in self.shadow.items()}
        save_file(tensors, str(path), metadata={"updates": str(self.updates), "decay": repr(self.decay)})

    def load(self, path: str | Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            keys = set(fh.keys())
            if keys != set(self.shadow):
                raise ValueError(f"{path}: EMA weights do not match the model ({len(keys)} vs {len(self.shadow)} "
                                 "tensors)")
            for key in keys:
                self.shadow[key] = fh.get_tensor(key).float()
            self.updates = int((fh.metadata() or {}).get("updates", 0))


@torch.no_grad()
def copy_into(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor]) -> int:
    """Copy `prefix.name` tensors into the matching parameters of `modules`; returns how many were copied."""
    copied = 0
    for prefix, module in modules.items():
        for name, param in module.named_parameters():
            value = tensors.get(f"{prefix}.{name}")
            if value is not None:
                param.copy_(value.to(param.dtype))
                copied += 1
    return copied
