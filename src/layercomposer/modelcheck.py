"""Sanity checks of a model directory's JSON configs before any weights are loaded (issue 31, item 19).

diffusers and transformers build a model from its config first and check it against the weights after: a
config saying 10^6 layers or a 10^7-word vocabulary allocates gigabytes before anything complains, 10^12
ends in a traceback, and a NaN scheduler `shift` samples an all-black picture without an error. These
checks read only the small JSON files (model_index.json, */config.json, scheduler_config.json) and refuse,
in one line, numbers no real model of this kind has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import ModelError

MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_INT = 1 << 24
"""Any integer in a config (sizes, ids, lengths): the largest real ones are context lengths of about 10^5."""
MAX_VOCABULARY = 1_000_000
"""vocab_size (CLIP 49408, T5 32128, Qwen2.5 152064, Gemma 256000)."""
MAX_LAYERS = 1000
"""Any count of layers or blocks (FLUX.1: 19 + 38)."""
MAX_WIDTH = 1 << 16
"""Any width, head count or channel count (FLUX.1's largest is 4096, Qwen2.5-7B's 18944)."""
POSITIVE_FLOATS = ("shift", "base_shift", "max_shift", "scaling_factor", "guidance_scale")


def check_model_dir(root: Path) -> None:
    """Refuse a model directory whose configs hold absurd or non-finite numbers; a no-op for sane ones."""
    files = [root / "model_index.json", *sorted(root.glob("*/config.json")),
             *sorted(root.glob("*/scheduler_config.json"))]  # (tokenizer configs hold 10^30 sentinels)
    for path in files:
        if not path.is_file():
            continue
        where = f"{path}"
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise ModelError(f"{where}: {path.stat().st_size >> 20} MiB is too large for a config file")
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelError(f"{where}: cannot read ({type(exc).__name__})") from None
        _check_value(doc, where, "", depth=0)


def _check_value(value: Any, where: str, key: str, depth: int) -> None:
    if depth > 16:
        raise ModelError(f"{where}: nested too deeply")
    at = f"{where}: {key}" if key else where
    if isinstance(value, dict):
        for k, v in value.items():
            _check_value(v, where, f"{key}.{k}" if key else str(k), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(v, where, f"{key}[{i}]", depth + 1)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        name = key.rsplit(".", 1)[-1].split("[", 1)[0]
        if name == "vocab_size" and not 0 < value <= MAX_VOCABULARY:
            raise ModelError(f"{at}: {_short(value)} is outside 1..{MAX_VOCABULARY}")
        if ("layers" in name or "blocks" in name) and not 0 <= value <= MAX_LAYERS:
            raise ModelError(f"{at}: {_short(value)} is outside 0..{MAX_LAYERS}")
        if name.endswith(("_size", "_dim", "heads", "channels", "d_model", "d_ff", "d_kv")) \
                and name != "vocab_size" and not 0 <= value <= MAX_WIDTH:
            raise ModelError(f"{at}: {_short(value)} is outside 0..{MAX_WIDTH}")
        if abs(value) > MAX_INT:
            raise ModelError(f"{at}: {_short(value)} is beyond {MAX_INT}, no model of this kind has it")
    elif isinstance(value, float):
        name = key.rsplit(".", 1)[-1]
        if not math.isfinite(value):
            raise ModelError(f"{at}: must be a finite number, got {value}")
        if name in POSITIVE_FLOATS and value <= 0:
            raise ModelError(f"{at}: must be positive, got {value}")


def _short(value: int) -> str:
    text = str(value) if abs(value) < 10**30 else f"about 10^{len(str(abs(value))) - 1}"
    return text


def check_model(model: str | Path) -> None:
    """`check_model_dir` for a model name or directory that resolves to a directory (registered configs are
    ours and need no check); unknown names are left to the loader's own error."""
    from .errors import LayerComposerError
    from .models.registry import resolve_model

    try:
        resolved = resolve_model(model)
    except LayerComposerError:
        return  # the loader reports it, in its words
    if isinstance(resolved, Path):
        check_model_dir(resolved)
