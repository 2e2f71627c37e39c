"""Who is this? The sprites world's analogue of ArcFace: identity of an unlocked character in a picture.

A small convolutional classifier over the world's held-out identities, trained only on fresh renders from
the world's own renderer (random pose, size, lighting, light side, background and a random occluder), never on
a picture it will be asked about. A query is a picture and a region (the character's visible pixels in the
true target): the region's bounding box, square-padded, pixels outside the region set to the fill grey,
resized to `IdentifierConfig.size`. Identification is top-1 among a candidate set (the true identity, its
scene-mates and random other held-out identities: `candidates`), as a face-recognition gallery would.

    layercomposer eval identifier --out src/layercomposer/weights/sprites-identifier     # about 14 min, 1 thread

The weights ship in the package (`IDENTIFIER_DIR`); `eval sprites` loads them.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

from ..errors import ModelError

IDENTIFIER_DIR = Path(__file__).resolve().parent.parent / "weights" / "sprites-identifier"
GALLERY = 40
"""Candidates per query: the true identity, its scene-mates, and random other held-out identities."""
MIN_VISIBLE_PIXELS = 300
"""A character enters the identity metric when the target shows at least this many of its pixels (about a
17x17 square; a choice: with it, the target's own region is recognised 100% of the time on the proxy set)."""
FILL = 128


@dataclass(frozen=True)
class IdentifierConfig:
    """How the identifier was built (kept beside its weights)."""

    size: int = 48
    per_identity: int = 48
    epochs: int = 12
    batch: int = 64
    lr: float = 2e-3
    seed: int = 0
    width: int = 32
    split: str = "heldout"


class IdentityNet(nn.Module):
    """Four conv layers (each with BatchNorm, ReLU and 2x2 pooling) and a linear head over the identities."""

    def __init__(self, classes: int, width: int = 48) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(chans):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def region_crop(picture: Image.Image, mask: np.ndarray, size: int) -> np.ndarray:
    """(3, size, size) float32 in [-1, 1]: `mask`'s bounding box of `picture`, grey outside the mask, padded
    to a square about its centre and resized."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("empty region")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    side = max(x1 - x0, y1 - y0) + 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rgb = np.asarray(picture.convert("RGB"), np.uint8).copy()
    rgb[~mask] = FILL
    box = (round(cx - side / 2), round(cy - side / 2), round(cx - side / 2) + side, round(cy - side / 2) + side)
    crop = Image.fromarray(rgb).crop(box)  # out-of-frame parts are black: repaint them grey
    valid = Image.fromarray((mask * 255).astype(np.uint8)).crop(box)
    arr = np.asarray(crop, np.uint8).copy()
    arr[np.asarray(valid) == 0] = FILL
    small = Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(small, np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


# ----------------------------------------------------------------------------------------------------------
# Training data: renders only


def _backgrounds(rng: np.random.Generator, count: int, frame: int) -> list[Image.Image]:
    from ..world import BACKGROUNDS, LIGHTING_NAMES, make_layout, render_background

    out = []
    for _ in range(count):
        layout = make_layout(str(rng.choice(BACKGROUNDS)), rng)
        lighting = str(rng.choice(LIGHTING_NAMES))
        from ..world.palette import get_lighting

        out.append(render_background(layout, get_lighting(lighting), frame, light_side=1.0).convert("RGB"))
    return out


def render_example(index: int, rng: np.random.Generator, background: Image.Image, occluder: int | None,
                   size: int) -> np.ndarray:
    """One training input: identity `index` re-posed, re-lit and placed on `background`, perhaps partly behind
    or in front of identity `occluder`, cropped like a query (`region_crop`) with a little blur at times."""
    from ..world import LIGHTING_NAMES, identity_from_index, render_layer, sample_pose
    from ..world.palette import get_lighting

    frame = background.width
    height = float(rng.uniform(0.15, 0.6)) * frame
    centre = (float(rng.uniform(0.3, 0.7)) * frame, float(rng.uniform(0.35, 0.65)) * frame)
    lighting = get_lighting(str(rng.choice(LIGHTING_NAMES)))
    side = 1.0 if rng.random() < 0.5 else -1.0
    layer = render_layer(identity_from_index(index), sample_pose(rng), height, centre, (frame, frame), lighting, side)
    alpha = np.asarray(layer.getchannel("A")) > 127
    picture = Image.alpha_composite(background.convert("RGBA"), layer)
    visible = alpha
    if occluder is not None:
        offset = (float(rng.uniform(-0.8, 0.8)) * height * 0.6, float(rng.uniform(-0.3, 0.3)) * height)
        other = render_layer(identity_from_index(occluder), sample_pose(rng), height * float(rng.uniform(0.7, 1.3)),
                             (centre[0] + offset[0], centre[1] + offset[1]), (frame, frame), lighting, side)
        if rng.random() < 0.5:  # in front: it hides part of the character
            picture = Image.alpha_composite(picture, other)
            hidden = np.asarray(other.getchannel("A")) > 127
            if (alpha & ~hidden).sum() >= max(MIN_VISIBLE_PIXELS, alpha.sum() // 2):
                visible = alpha & ~hidden
        else:  # behind: only the edge pixels change
            picture = Image.alpha_composite(Image.alpha_composite(background.convert("RGBA"), other), layer)
    picture = picture.convert("RGB")
    if rng.random() < 0.4:
        picture = picture.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    if rng.random() < 0.3:  # a little colour drift, as a model's relighting gives
        arr = np.asarray(picture, np.float32) * float(rng.uniform(0.9, 1.1)) + rng.uniform(-8, 8, 3)
        picture = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return region_crop(picture, visible, size)


def training_set(indices: list[int], config: IdentifierConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) inputs and (N,) labels: `config.per_identity` renders of each identity (seeded)."""
    rng = np.random.default_rng([config.seed, 7])
    backgrounds = _backgrounds(rng, 24, 192)  # smaller than the pictures: renders cost ~ area
    xs, ys = [], []
    for label, index in enumerate(indices):
        for _ in range(config.per_identity):
            bg = backgrounds[int(rng.integers(len(backgrounds)))]
            occluder = int(indices[int(rng.integers(len(indices)))]) if rng.random() < 0.5 else None
            xs.append(render_example(index, rng, bg, occluder if occluder != index else None, config.size))
            ys.append(label)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


# ----------------------------------------------------------------------------------------------------------
# The identifier


class Identifier:
    """A trained `IdentityNet` and the world identity indices its classes stand for."""

    def __init__(self, net: IdentityNet, indices: list[int], config: IdentifierConfig) -> None:
        self.net = net.eval()
        self.indices = list(indices)
        self.config = config
        self._class = {ident: k for k, ident in enumerate(self.indices)}

    @property
    def ids(self) -> list[str]:
        from ..world import identity_id

        return [identity_id(i) for i in self.indices]

    def knows(self, subject: str) -> bool:
        from ..world import index_from_id

        try:
            return index_from_id(subject) in self._class
        except (ValueError, KeyError):
            return False

    @torch.no_grad()
    def logits(self, crops: np.ndarray) -> np.ndarray:
        """(N, classes) logits of (N, 3, S, S) crops."""
        out = []
        for start in range(0, len(crops), 256):
            out.append(self.net(torch.from_numpy(np.ascontiguousarray(crops[start:start + 256]))).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.indices)), np.float32)

    def identify(self, picture: Image.Image, mask: np.ndarray, candidates: list[str]) -> str:
        """The candidate id whose class scores highest on `picture`'s region `mask`."""
        return self.identify_many([(picture, mask, candidates)])[0]

    def identify_many(self, queries: list[tuple[Image.Image, np.ndarray, list[str]]]) -> list[str]:
        """`identify` for many queries in one batch."""
        from ..world import index_from_id

        if not queries:
            return []
        crops = np.stack([region_crop(p, m, self.config.size) for p, m, _ in queries])
        logits = self.logits(crops)
        out = []
        for row, (_, _, cands) in zip(logits, queries, strict=True):
            scores = [row[self._class[index_from_id(c)]] for c in cands]
            out.append(cands[int(np.argmax(scores))])
        return out

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(root / "model.safetensors"))
        (root / "config.json").write_text(json.dumps({**asdict(self.config), "indices": self.indices}, indent=1) + "\n")
        return root

    @classmethod
    def load(cls, directory: str | Path = IDENTIFIER_DIR) -> Identifier:
        from safetensors.torch import load_file

        root = Path(directory)
        try:
            doc = json.loads((root / "config.json").read_text())
            indices = [int(i) for i in doc.pop("indices")]
            config = IdentifierConfig(**doc)
            net = IdentityNet(len(indices), config.width)
            net.load_state_dict(load_file(str(root / "model.safetensors")))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ModelError(f"{root}: cannot load the sprites identifier ({str(exc).splitlines()[0]})") from None
        return cls(net, indices, config)


def train_identifier(config: IdentifierConfig | None = None, log=print) -> Identifier:
    """Train an identifier on renders of the `config.split` identities (seeded; about 14 min on one thread)."""
    from ..world import split_indices

    config = config or IdentifierConfig()
    torch.manual_seed(config.seed)
    indices = split_indices(config.split)
    t0 = time.perf_counter()
    x, y = training_set(indices, config)
    log(f"identifier: {len(x)} renders of {len(indices)} identities in {time.perf_counter() - t0:.0f} s")
    net = IdentityNet(len(indices), config.width)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    steps = config.epochs * math.ceil(len(x) / config.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(config.seed)
    net.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=gen)
        correct, total, loss_sum = 0, 0, 0.0
        for start in range(0, len(x), config.batch):
            idx = order[start:start + config.batch]
            xb = x[idx]
            if torch.rand((), generator=gen) < 0.5:
                xb = xb.flip(3)  # the world draws mirrored poses too; identity does not change with a mirror
            logits = net(xb)
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            total += len(idx)
        log(f"identifier: epoch {epoch + 1}/{config.epochs} loss {loss_sum / total:.3f} "
            f"train top-1 {correct / total:.3f} ({time.perf_counter() - t0:.0f} s)")
    return Identifier(net, indices, config)


def candidates(true_id: str, scene_mates: list[str], pool: list[str], rng: np.random.Generator,
               size: int = GALLERY) -> list[str]:
    """The gallery of one query: the true identity, its scene-mates, then random others from `pool`, `size`
    in all, in a seeded random order (so ties cannot favour the truth)."""
    chosen = list(dict.fromkeys([true_id, *scene_mates]))
    rest = [p for p in pool if p not in chosen]
    need = max(0, size - len(chosen))
    chosen += [rest[k] for k in rng.choice(len(rest), min(need, len(rest)), replace=False)]
    return [chosen[k] for k in rng.permutation(len(chosen))]


# ----------------------------------------------------------------------------------------------------------
# The metric on evaluation cases

SIZE_BINS = ((0.0, 0.2), (0.2, 0.3), (0.3, 0.45), (0.45, 1.01))
"""Character height in the target (its full alpha's box, fraction of the picture's height)."""
ENGINES = ("layered", "hard_lock", "strength", "collage", "paste", "vae", "target")
"""Pictures whose regions are identified (when a case made them)."""


def identity_regions(case, pics: dict[str, Image.Image], identifier: Identifier, plan,
                     seed: int = 1) -> list[dict]:
    """One record per unlocked character of `case` (an `eval.sprites.SpriteCase`) that the target shows at least
    `MIN_VISIBLE_PIXELS` of: whether each picture in `pics` shows the right identity in the character's
    visible region, among `GALLERY` candidates; and the identifier's own checks on the same query: the
    background alone in that region (chance) and the character's own region in another picture of the scene.
    `plan` is the layered model's `TokenPlan` (for the layer's first-axis index)."""
    from ..data.scenes import BACKGROUND
    from ..world import index_from_id

    sample = case.sample
    scene_image = case.scene.images[sample.image]
    index_of = {g.name: g.index for g in plan.groups}
    alphas = {n: np.asarray(scene_image.layer(n).getchannel("A")) > 127 for n in scene_image.subjects}
    background = None
    if BACKGROUND in scene_image.layers:
        background = scene_image.layer(BACKGROUND).convert("RGB")
    out: list[dict] = []
    queries: list[tuple[Image.Image, np.ndarray, list[str]]] = []
    slots: list[tuple[int, str]] = []
    for name in sample.unlocked:
        if name == BACKGROUND or name not in case.visible or not identifier.knows(name):
            continue
        mask = case.visible[name]
        if int(mask.sum()) < MIN_VISIBLE_PIXELS:
            continue
        mates = [s for s in case.scene.subjects if s != name]
        rng = np.random.default_rng([seed, case.index, index_from_id(name)])
        cands = candidates(name, mates, identifier.ids, rng)
        ys = np.nonzero(alphas[name])[0]
        others = [n for n in alphas if n != name]
        record = {
            "name": name, "pixels": int(mask.sum()),
            "height": float((ys.max() - ys.min() + 1) / mask.shape[0]),
            "overlap": bool(any((alphas[name] & alphas[o]).any() for o in others)),
            "background": case.background, "index": index_of.get(name),
            "top1": {},
        }
        k = len(out)
        out.append(record)
        for engine in ENGINES:
            if engine in pics:
                queries.append((pics[engine], mask, cands))
                slots.append((k, engine))
        if background is not None:
            queries.append((background, mask, cands))
            slots.append((k, "background_only"))
        other = next((im for im in case.scene.images if im.index != sample.image and name in im.layers), None)
        if other is not None:
            from .sprites import visible_masks

            other_mask = visible_masks(other)[name]
            if other_mask.sum() >= MIN_VISIBLE_PIXELS:
                queries.append((other.picture(), other_mask, cands))
                slots.append((k, "other_picture"))
    for (k, engine), answer in zip(slots, identifier.identify_many(queries), strict=True):
        out[k]["top1"][engine] = answer == out[k]["name"]
    return out


def _rate(values: list[bool]) -> dict[str, float | int | None]:
    """Share right, its binomial standard error, and the count."""
    n = len(values)
    if not n:
        return {"top1": None, "se": None, "n": 0}
    p = float(np.mean(values))
    return {"top1": p, "se": float(math.sqrt(p * (1 - p) / n)), "n": n}


def summarise_identity(regions: list[dict]) -> dict:
    """Top-1 per picture with standard errors, the paired layered-minus-collage difference, and the splits."""
    engines = [e for e in (*ENGINES, "background_only", "other_picture") if any(e in r["top1"] for r in regions)]
    summary: dict = {"regions": len(regions), "gallery": GALLERY,
                     "engines": {e: _rate([r["top1"][e] for r in regions if e in r["top1"]]) for e in engines}}
    pairs = [(r["top1"]["layered"], r["top1"]["collage"]) for r in regions
             if "layered" in r["top1"] and "collage" in r["top1"]]
    if pairs:
        d = np.array([float(a) - float(b) for a, b in pairs])
        summary["layered_minus_collage"] = {
            "difference": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None,
            "pairs": len(d)}

    def split(key, label) -> dict:
        groups: dict[str, list[dict]] = {}
        for r in regions:
            groups.setdefault(label(r[key]), []).append(r)
        return {g: {e: _rate([r["top1"][e] for r in rs if e in r["top1"]])
                    for e in ("layered", "collage", "paste") if any(e in r["top1"] for r in rs)}
                for g, rs in sorted(groups.items())}

    def size_label(h: float) -> str:
        lo, hi = next(b for b in SIZE_BINS if b[0] <= h < b[1])
        return f"{lo:.2f}-{min(hi, 1.0):.2f}"

    summary["by_size"] = split("height", size_label)
    summary["by_overlap"] = split("overlap", lambda v: "overlapping" if v else "apart")
    summary["by_background"] = split("background", str)
    summary["by_index"] = split("index", lambda v: "hidden" if v is None else f"j={v}")
    return summary


def _pct(rate: dict | None) -> str:
    if not rate or rate.get("top1") is None:
        return "n/a"
    return f"{100 * rate['top1']:.0f}% (s.e. {100 * rate['se']:.0f})"


def identity_markdown(summary: dict) -> list[str]:
    """RESULTS.md lines: the headline table for unlocked identity, the identifier's checks and the splits."""
    e = summary["engines"]
    names = {"layered": "layered model", "hard_lock": "layered model, `--hard-lock`",
             "strength": "layered model, image-to-image from the flattened canvas (`--strength`)",
             "collage": "collage model",
             "paste": "naive pasting", "vae": "VAE reconstruction of the target", "target": "the target itself"}
    lines = ["| picture | right identity among " f"{summary['gallery']} |", "|---|---|"]
    lines += [f"| {label} | {_pct(e.get(key))} |" for key, label in names.items() if key in e]
    diff = summary.get("layered_minus_collage")
    if diff:
        se = "n/a" if diff["se"] is None else f"{100 * diff['se']:.0f}"
        lines += ["", f"Layered minus collage, paired over {diff['pairs']} characters: "
                      f"{100 * diff['difference']:+.0f} points (s.e. {se})."]
    lines += ["", f"The identifier's own checks on the same {summary['regions']} queries: the target's region "
                  f"{_pct(e.get('target'))}; the background alone in that region {_pct(e.get('background_only'))} "
                  f"(chance {100 / summary['gallery']:.1f}%); the character's own region in another picture of its "
                  f"scene (another pose and light) {_pct(e.get('other_picture'))}."]
    for key, title in (("by_size", "height in the target"), ("by_overlap", "overlap with another character"),
                       ("by_background", "background"), ("by_index", "first-axis index of the layer")):
        parts = []
        for group, rates in summary[key].items():
            n = rates.get("layered", {}).get("n", 0)
            parts.append(f"{group} ({n}): layered {_pct(rates.get('layered'))}, collage "
                         f"{_pct(rates.get('collage'))}, pasting {_pct(rates.get('paste'))}")
        lines += ["", f"- By {title}: " + "; ".join(parts) + "."]
    return lines
