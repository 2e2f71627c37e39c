"""Many benchmark canvases in one call: a JSON spec of prompts and identity sets -> a folder of canvases.

Spec (paths relative to the spec file)::

    {"width": 1024, "height": 1024,                 # size of generated priors (optional)
     "items": [
       {"name": "two-friends", "prompt": "two friends on a beach", "identities": ["ana.jpg", "ben.jpg"],
        "prior": "priors/two.png",                   # optional: without it, --prior-model makes one
        "seed": 3, "with_prior": false}              # optional
     ]}

Output: ``OUT/<name>.lcz`` (what ``eval photos --canvases OUT`` reads), ``OUT/collages/<name>.png`` (the
flattened collage the collage baselines get) and ``OUT/priors/<name>.png`` for generated priors. An item
whose canvas exists is skipped unless asked to overwrite, so an interrupted run continues where it stopped.
A failing item (a prior without enough faces, an identity photo without a person) is reported and the
others go on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LayerComposerError, read_json_file

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
ITEM_FIELDS = {"name", "prompt", "identities", "prior", "seed", "with_prior"}


@dataclass
class BatchItem:
    name: str
    prompt: str
    identities: list[Path]
    prior: Path | None = None
    seed: int | None = None
    """Seed of a generated prior (None: the run's --seed)."""
    with_prior: bool = False


@dataclass
class BatchSpec:
    items: list[BatchItem]
    width: int | None = None
    height: int | None = None

    @property
    def needs_prior_model(self) -> bool:
        return any(item.prior is None for item in self.items)


@dataclass
class BatchReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def load_batch_spec(path: str | Path) -> BatchSpec:
    """Parse and check a spec; a one-line error naming the file and the field otherwise."""
    path = Path(path)
    data = read_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("items"), list) or not data["items"]:
        raise LayerComposerError(f"{path}: items: must be a non-empty list")
    unknown = set(data) - {"items", "width", "height"}
    if unknown:
        raise LayerComposerError(f"{path}: unknown field {sorted(unknown)[0]!r}")
    sizes = {}
    for key in ("width", "height"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 64 <= value <= 4096):
            raise LayerComposerError(f"{path}: {key}: must be an integer 64..4096")
        sizes[key] = value
    base, items, names = path.parent, [], set()
    for i, raw in enumerate(data["items"]):
        where = f"{path}: items[{i}]"
        if not isinstance(raw, dict):
            raise LayerComposerError(f"{where}: must be an object")
        unknown = set(raw) - ITEM_FIELDS
        if unknown:
            raise LayerComposerError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        name = raw.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise LayerComposerError(f"{where}.name: letters, digits, '.', '_' or '-' (at most 100), got {name!r}")
        if name in names:
            raise LayerComposerError(f"{where}.name: {name!r} is used twice")
        names.add(name)
        prompt = raw.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise LayerComposerError(f"{where}.prompt: must be a non-empty string")
        ids = raw.get("identities")
        if not isinstance(ids, list) or not ids or not all(isinstance(p, str) for p in ids):
            raise LayerComposerError(f"{where}.identities: must be a non-empty list of photo paths")
        identities = [base / p for p in ids]
        prior = raw.get("prior")
        if prior is not None and not isinstance(prior, str):
            raise LayerComposerError(f"{where}.prior: must be a path")
        for j, photo in enumerate([*identities, *([base / prior] if prior else [])]):
            if not photo.is_file():
                field_name = f"identities[{j}]" if j < len(identities) else "prior"
                raise LayerComposerError(f"{where}.{field_name}: {photo} does not exist")
        seed = raw.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise LayerComposerError(f"{where}.seed: must be a non-negative integer")
        with_prior = raw.get("with_prior", False)
        if not isinstance(with_prior, bool):
            raise LayerComposerError(f"{where}.with_prior: must be true or false")
        items.append(BatchItem(name, prompt, identities, base / prior if prior else None, seed, with_prior))
    return BatchSpec(items, sizes["width"], sizes["height"])


def run_batch(
    spec: BatchSpec,
    out: str | Path,
    prior_model: Any = None,
    prior_settings: Any = None,
    overwrite: bool = False,
    on_item: Callable[[str, str], None] | None = None,
) -> BatchReport:
    """Write every item's canvas, collage and (generated) prior; see the module doc for the layout.

    `prior_model` is a `PriorModel` (or any callable `(prompt, settings) -> Image`) used for items without a
    prior; `on_item(name, status)` reports each item ("written", "skipped" or the error).
    """
    from dataclasses import replace

    from ..canvas import write_atomic
    from ..imageio import encode_png
    from .canvases import benchmark_canvas
    from .cutout import load_photo

    out = Path(out)
    if spec.needs_prior_model and prior_model is None:
        missing = next(item.name for item in spec.items if item.prior is None)
        raise LayerComposerError(f"item {missing!r} has no prior: give it one in the spec, or --prior-model")
    out.mkdir(parents=True, exist_ok=True)
    (out / "collages").mkdir(exist_ok=True)
    report = BatchReport()
    for item in spec.items:
        target = out / f"{item.name}.lcz"
        if target.exists() and not overwrite:
            report.skipped.append(item.name)
            if on_item:
                on_item(item.name, "skipped (exists)")
            continue
        try:
            if item.prior is not None:
                prior = load_photo(item.prior)
            else:
                settings = prior_settings if item.seed is None else replace(prior_settings, seed=item.seed)
                prior = prior_model(item.prompt, settings)
                (out / "priors").mkdir(exist_ok=True)
                write_atomic(out / "priors" / f"{item.name}.png", encode_png(prior))
            identities = [load_photo(p) for p in item.identities]
            names = [p.stem for p in item.identities]
            if len(set(names)) != len(names) or not all(NAME.match(n) for n in names):
                names = [f"identity{i}" for i in range(len(names))]
            canvas = benchmark_canvas(prior, identities, prompt=item.prompt, names=names, with_prior=item.with_prior)
            canvas.meta["prior"] = ({"image": item.prior.name} if item.prior is not None else
                                    {"model": getattr(prior_model, "name", "?"), "seed": settings.seed})
            canvas.save(target)
            write_atomic(out / "collages" / f"{item.name}.png", encode_png(canvas.flatten().convert("RGB")))
        except LayerComposerError as exc:
            report.failed[item.name] = str(exc)
            if on_item:
                on_item(item.name, f"failed: {exc}")
            continue
        report.written.append(item.name)
        if on_item:
            on_item(item.name, "written")
    return report
