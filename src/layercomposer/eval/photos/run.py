"""`eval photos` engines, the run over canvases and engines, and the Markdown table."""

from __future__ import annotations

import gc
import json
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ...canvas import Canvas, write_atomic
from ...errors import LayerComposerError
from ..metrics import psnr
from .cases import (
    BENCHMARK_INSTRUCTION,
    ENGINES,
    LOCKED_WEIGHT,
    NA_WEIGHTS,
    OLD_ENGINE_NAMES,
    PSNR_CAP,
    EvalOptions,
    Log,
    canvas_pixels,
    load_cases,
)
from .scoring import get_identity_scorer, identity_scores, prompt_metrics

# ----------------------------------------------------------------------------------------------------------
# Engines


class Engine(Protocol):
    name: str
    description: str

    def __call__(self, canvas: Canvas) -> Image.Image: ...


@dataclass
class PasteEngine:
    """Naive pasting, the baseline that changes nothing: the flattened canvas over white, no model."""

    name: str = "paste"
    description: str = "flattened canvas, no model"

    def __call__(self, canvas: Canvas) -> Image.Image:
        return canvas_pixels(canvas)


class LayeredEngine:
    def __init__(self, options: EvalOptions) -> None:
        import torch

        from ...models.registry import shipped_models
        from ...pipeline import LayerComposerPipeline

        model = options.model or ("demo" if "demo" in shipped_models() else "tiny-random")
        self.name = "layered"
        self.description = f"{model}{' (hard lock)' if options.hard_lock else ''}"
        self.options = options
        self.pipe = LayerComposerPipeline.from_pretrained(model)
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device != "cpu":
            self.pipe.to(device, torch.bfloat16)

    def __call__(self, canvas: Canvas) -> Image.Image:
        o = self.options
        result = self.pipe.generate(canvas, num_inference_steps=o.steps, guidance_scale=o.guidance, seed=o.seed,
                                    mode="layered", hard_lock=o.hard_lock)
        return result.image


class RefineEngineAdapter:
    def __init__(self, name: str, model: str, backend: str, options: EvalOptions) -> None:
        from ...refine import RefineEngine

        self.name, self.description, self.backend, self.options = name, model, backend, options
        self.engine = RefineEngine(model, backend, options.device)

    def __call__(self, canvas: Canvas) -> Image.Image:
        from ...refine import RefineSettings

        o = self.options
        if self.backend == "demo":
            instruction = None  # our collage model follows the canvas prompt
        else:
            template = o.instruction or BENCHMARK_INSTRUCTION
            instruction = template.replace("{prompt}", (canvas.prompt or "the scene").strip().rstrip("."))
        settings = RefineSettings(instruction=instruction, steps=o.steps, guidance=o.guidance, seed=o.seed)
        return self.engine(canvas, settings)


_MODEL_OPTION = {"refine-kontext": ("kontext_model", "--kontext-model", "a FLUX.1 Kontext diffusers folder"),
                 "refine-qwen": ("qwen_model", "--qwen-model", "a Qwen-Image-Edit(-Plus) diffusers folder")}


def load_engine(name: str, options: EvalOptions) -> Engine:
    """Load one engine; a one-line LayerComposerError naming what is missing when it cannot."""
    if name == "paste":
        return PasteEngine()
    if name == "layered":
        return LayeredEngine(options)
    if name in _MODEL_OPTION:
        attr, flag, what = _MODEL_OPTION[name]
        model = getattr(options, attr)
        if not model:
            raise LayerComposerError(f"{name}: no {flag} given ({what} or a cached hub id)")
        return RefineEngineAdapter(name, model, "kontext" if name == "refine-kontext" else "qwen", options)
    if name == "refine-demo":
        return RefineEngineAdapter(name, options.collage_model or "demo-collage", "demo", options)
    raise LayerComposerError(f"--engines: unknown engine {name!r} (known: {', '.join(ENGINES)})")


def parse_engines(text: str | Sequence[str]) -> list[str]:
    """The engine names of ``--engines`` (comma-separated or a list), checked; old names read as today's."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    names = [OLD_ENGINE_NAMES.get(n, n) for n in names]
    if not names:
        raise LayerComposerError("--engines: give at least one engine")
    for n in names:
        if n not in ENGINES:
            raise LayerComposerError(f"--engines: unknown engine {n!r} (known: {', '.join(ENGINES)})")
    if len(set(names)) != len(names):
        raise LayerComposerError("--engines: an engine is named twice")
    return names


def _quiet_libraries() -> None:
    """No loading progress bars or advisory warnings from diffusers / transformers (one line per engine is ours)."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover
        return
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def _free(engine: Any) -> None:
    del engine
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# ----------------------------------------------------------------------------------------------------------
# The run


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _save_png(image: Image.Image, path: Path) -> None:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def evaluate_photos(canvases: str | os.PathLike[str], out: str | os.PathLike[str], options: EvalOptions,
                    log: Log | None = None) -> dict[str, Any]:
    """Run every engine on every canvas, score the outputs, write `table.md`, `table.json` and the pictures
    (``outputs/<canvas>/<engine>.png``, identity references in ``references/<canvas>/``) under `out`.

    Engines that cannot load: with one engine asked for, a one-line error; with several, that engine's row says
    why it was skipped (and a line goes to `log`); all of them failing is an error.
    """
    say = log or (lambda line: None)
    engines = parse_engines(options.engines)
    if not 1 <= options.steps <= 1000:
        raise LayerComposerError(f"--steps: must be between 1 and 1000, got {options.steps}")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise LayerComposerError(f"--out {out}: exists and is not a folder")
    scorer = get_identity_scorer(options.embedder, options.arcface_dir, options.device)
    # Bad canvases fail before any model loads.
    cases = load_cases(canvases, scorer, options.lock, say, exclude=out_dir)
    metrics = prompt_metrics(options)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for ident in case.identities:
            _save_png(ident.reference, out_dir / "references" / case.id / f"{_safe(ident.layer)}.png")

    _quiet_libraries()
    rows: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, Image.Image]] = {case.id: {} for case in cases}
    for name in engines:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():  # libraries' deprecation notices are not the user's business here
                warnings.simplefilter("ignore", FutureWarning)
                engine = load_engine(name, options)
        except LayerComposerError as exc:
            if len(engines) == 1:
                raise
            reason = str(exc).removeprefix(f"{name}: ")
            say(f"{name}: skipped ({reason})")
            rows[name] = {"status": "skipped", "reason": reason}
            continue
        load_s = time.perf_counter() - t0
        seconds = []
        for case in cases:
            t1 = time.perf_counter()
            image = engine(case.canvas).convert("RGB")
            seconds.append(time.perf_counter() - t1)
            if image.size != case.target.size:  # compare at the canvas's generation size
                image = image.resize(case.target.size, Image.Resampling.LANCZOS)
            outputs[case.id][name] = image
            _save_png(image, out_dir / "outputs" / case.id / f"{name}.png")
        say(f"{name}: {len(cases)} canvases in {sum(seconds):.1f}s (load {load_s:.1f}s)")
        rows[name] = {"status": "ok", "model": engine.description, "load_seconds": round(load_s, 2),
                      "seconds_per_canvas": round(float(np.mean(seconds)), 3)}
        _free(engine)
    if all(row["status"] == "skipped" for row in rows.values()):
        raise LayerComposerError("no engine could run: " + "; ".join(f"{n}: {r['reason']}" for n, r in rows.items()))

    per_canvas: list[dict[str, Any]] = []
    for case in cases:
        prompt = (case.canvas.prompt or "").strip()
        entry: dict[str, Any] = {
            "id": case.id, "canvas": str(case.path), "prompt": prompt or None,
            "size": list(case.target.size), "identities": [i.layer for i in case.identities],
            "layers_without_face": case.no_face, "locked_pixels": int(case.locked.sum()),
            "references": {i.layer: f"references/{case.id}/{_safe(i.layer)}.png" for i in case.identities},
            "engines": {},
        }
        for name, image in outputs[case.id].items():
            record: dict[str, Any] = {"output": f"outputs/{case.id}/{name}.png",
                                      "identity": identity_scores(case, image, scorer)}
            record["locked_psnr"] = psnr(image, case.target, case.locked) if case.locked.any() else None
            for metric in metrics:
                record[metric.key] = metric.score(image, prompt) if metric.available and prompt else None
            entry["engines"][name] = record
        per_canvas.append(entry)

    for name, row in rows.items():
        if row["status"] != "ok":
            continue
        records = [c["engines"][name] for c in per_canvas]
        pairs = [p for r in records for p in r["identity"]]
        detected = [p for p in pairs if p["detected"]]
        row["identity"] = {
            "cosine": _mean([p["cosine"] for p in detected]), "distance": _mean([p["distance"] for p in detected]),
            "detected": len(detected), "identities": len(pairs),
            "same_person": sum(bool(p["same_person"]) for p in pairs),
        }
        locked = [r["locked_psnr"] for r in records if r["locked_psnr"] is not None]
        row["locked_psnr"] = {"mean_db": _mean(locked), "canvases": len(locked)}
        for metric in metrics:
            row[metric.key] = _mean([r[metric.key] for r in records]) if metric.available else None

    report = {
        "format": "layercomposer-photo-table/1",
        "embedder": scorer.name,
        "embedder_threshold": scorer.threshold,
        "canvases": len(cases),
        "settings": {"steps": options.steps, "seed": options.seed, "guidance": options.guidance,
                     "lock": options.lock, "hard_lock": options.hard_lock},
        "metrics": {m.key: {"name": m.name, "available": m.available, "reason": m.reason} for m in metrics},
        "engines": rows,
        "per_canvas": per_canvas,
    }
    write_atomic(out_dir / "table.json", (json.dumps(report, indent=2) + "\n").encode())
    write_atomic(out_dir / "table.md", table_markdown(report).encode())
    return report


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "layer"


# ----------------------------------------------------------------------------------------------------------
# The table


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _psnr_cell(value: float | None) -> str:
    if value is None:
        return "n/a (no locked region)"
    return f"{value:.2f}" + (" (identical)" if value >= PSNR_CAP else "")


def table_markdown(report: dict[str, Any]) -> str:
    """The paper's Table 1 layout: rows = engines; identity, prompt alignment, quality, plus locked PSNR."""
    metrics = report["metrics"]
    emb = report["embedder"]
    heads = [
        "Engine", f"Identity ↑ (cosine, {emb})", "Face detected", "Same person",
        f"Prompt: {metrics['vqascore']['name']} ↑", f"Prompt: {metrics['clipscore']['name']} ↑",
        f"Quality: {metrics['hpsv3']['name']} ↑", "Locked PSNR (dB) ↑",
    ]
    lines = [
        f"# Photo benchmark: {report['canvases']} canvases",
        "",
        f"Steps {report['settings']['steps']}, seed {report['settings']['seed']}, locks: "
        f"{report['settings']['lock']}{', hard lock' if report['settings']['hard_lock'] else ''}. "
        f"Identity: {emb} (same person: distance below {report['embedder_threshold']}).",
        "",
        "| " + " | ".join(heads) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(heads) - 1)) + " |",
    ]
    for name, row in report["engines"].items():
        if row["status"] != "ok":
            lines.append(f"| {name} | skipped: {row['reason']} |" + " |" * (len(heads) - 2))
            continue
        ident = row["identity"]
        n = ident["identities"]
        if n == 0:
            id_cell = det_cell = same_cell = "n/a (no identity faces)"
        else:
            id_cell = _fmt(ident["cosine"]) if ident["detected"] else "n/a (no face detected)"
            det_cell = f"{ident['detected']}/{n} ({100 * ident['detected'] / n:.0f}%)"
            same_cell = f"{ident['same_person']}/{n}"
        cells = [f"{name} ({row['model']})", id_cell, det_cell, same_cell]
        for key, digits in (("vqascore", 3), ("clipscore", 2), ("hpsv3", 2)):
            cells.append(_fmt(row[key], digits) if metrics[key]["available"] else NA_WEIGHTS)
        cells.append(_psnr_cell(row["locked_psnr"]["mean_db"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Identity: mean cosine similarity between each identity layer's face and the output face paired "
                 "with it (one-to-one, least total embedding distance), over the identities whose face was found. "
                 "Locked PSNR: output vs the canvas's own pixels where the flattened colour is at least "
                 f"{LOCKED_WEIGHT:.0%} from locked layers, mean over the canvases that have such pixels "
                 f"({PSNR_CAP:.0f} = identical).")
    missing = [f"- {m['name']}: {m['reason']}" for m in metrics.values() if not m["available"]]
    if missing:
        lines += ["", "Columns without weights:", *missing]
    return "\n".join(lines) + "\n"
