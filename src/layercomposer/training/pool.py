"""Encoded sample-pool canvases on disk (`--pool-cache DIR`), so a resumed or repeated run encodes nothing twice.

Sample u of a pool is a function of the data, the seed, the resolution, the sampling settings, the
conditioning mode and the VAE, never of the step or the pool size. Those are hashed into a fingerprint;
the files of one fingerprint live in `DIR/<16 hex digits>/` (with the fingerprint spelled out in
`fingerprint.json`), so two runs that differ in any of them never read each other's latents, and runs that
agree (a resume, a longer run, a larger pool, another output folder) share them. One safetensors file per
sample, written under a temporary name and renamed: a killed run leaves no half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from ..canvas import write_atomic
from ..conditioning import TokenRules
from ..data.canvas_sampling import SamplingConfig
from ..data.scenes import SceneSet
from .batch import EncodedSample


def data_signature(scenes: SceneSet) -> str:
    """SHA-256 over every scene's id, its scene.json and the names and sizes of the files beside it."""
    digest = hashlib.sha256()
    for scene in scenes.scenes:
        digest.update(scene.id.encode())
        digest.update((scene.root / "scene.json").read_bytes())
        for path in sorted(p for p in scene.root.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(scene.root).as_posix()}:{path.stat().st_size};".encode())
    return digest.hexdigest()


def module_signature(module: torch.nn.Module) -> str:
    """SHA-256 over a module's weights (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def pool_fingerprint(scenes: SceneSet, vae: torch.nn.Module, *, seed: int, mode: str, resolution: int | None,
                     sampling: SamplingConfig, rules: TokenRules | None = None) -> dict[str, Any]:
    """Everything sample u of a pool depends on (merged locked layers, the cover pruning rule and aligned
    unlocked subjects only named when on, so the caches of runs without them keep their fingerprint)."""
    rules = rules or TokenRules()
    settings = asdict(sampling)
    if not settings["p_aligned_unlocked"]:
        del settings["p_aligned_unlocked"]
    return {"format": 1, "data": data_signature(scenes), "vae": module_signature(vae), "seed": seed,
            "mode": mode, "resolution": resolution, "sampling": settings,
            **({"merge_locked": True} if rules.merge_locked else {}),
            **({"prune": rules.prune} if rules.prune != "centre" else {})}


class PoolCache:
    """Encoded pool samples of one fingerprint, one safetensors file each."""

    def __init__(self, root: str | Path, fingerprint: dict[str, Any]) -> None:
        text = json.dumps(fingerprint, sort_keys=True)
        self.dir = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        spelled = self.dir / "fingerprint.json"
        if not spelled.is_file():
            write_atomic(spelled, json.dumps(fingerprint, indent=1, sort_keys=True).encode())

    def path(self, u: int) -> Path:
        return self.dir / f"{u:07d}.safetensors"

    def load(self, u: int) -> EncodedSample | None:
        """Sample u if it is on disk and readable; None otherwise (it is then encoded and written again)."""
        path = self.path(u)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("x0", "cond", "cond_ids")}
                # Files written before the subject cells were recorded have none (loaded as None).
                names = set(f.keys())
                subject = f.get_tensor("subject").bool() if "subject" in names else None
            h, w = (int(v) for v in meta["grid"].split(","))
            return EncodedSample(tensors["x0"], tensors["cond"], tensors["cond_ids"], (h, w), meta["prompt"], subject)
        except Exception:  # a damaged file only costs its re-encoding
            return None

    def save(self, u: int, sample: EncodedSample) -> None:
        tensors = {"x0": sample.x0.detach().cpu().contiguous(), "cond": sample.cond.detach().cpu().contiguous(),
                   "cond_ids": sample.cond_ids.detach().cpu().contiguous()}
        if sample.subject is not None:
            tensors["subject"] = sample.subject.detach().cpu().to(torch.uint8).contiguous()
        meta = {"grid": f"{sample.grid[0]},{sample.grid[1]}", "prompt": sample.prompt}
        write_atomic(self.path(u), save(tensors, metadata=meta))
