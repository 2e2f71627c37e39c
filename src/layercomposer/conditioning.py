"""Canvas -> conditioning tokens (docs/DESIGN.md section 3): layer latents, transparent pruning, ids with locking.

Every mode goes through one path: `plan()` decides, per token group, which grid cells are kept and which
first-axis id the group gets; `build()` encodes each group's picture with the VAE (cached by content and
transform) and gathers the kept tokens. Only the planning half runs for `layercomposer tokens` (no torch).

Fill colour: pixels are composited over mid grey (0.5, 0.5, 0.5) by their alpha before encoding, i.e. the
VAE input is ``(2 * rgb - 1) * alpha``; fully transparent pixels are exactly 0 in the VAE's [-1, 1] range.
Training and inference share this function, so they cannot disagree.

Merged locked layers (`merge_locked`, a property of a model, kept in its model_index.json): the locked
layers are flattened back to front into one picture, encoded once and given ids `[0, r, c]`; unlocked
layers stay one group each. Locked layers are pinned to the picture being generated, so what one of them
hides under another locked layer can never show; merging drops only that, and leaves one locked token per
cell instead of several tokens with the same id (a background and the characters in front of it), whose
order the model could only guess from their content. A model is trained one way and run the same way.

Pruning rule (`prune`, also a property of a model): the default, `centre`, keeps a cell iff the alpha sampled
at its centre pixel is > 0.5. `cover` keeps a cell iff any of its pixels has alpha > 0.5, so a layer's edge
cells enter too: at 256 px a small character loses about a third of its pixels to `centre`, and a model
can only guess what it was not shown (docs/TRAINING.md measures it). Cost still follows visible area.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from .canvas import TOKEN_PX, Canvas, Layer, alpha_array
from .errors import LayerComposerError

if TYPE_CHECKING:
    import torch

Mode = Literal["layered", "unpruned", "collage"]
MODES: tuple[Mode, ...] = ("layered", "unpruned", "collage")
ALPHA_THRESHOLD = 0.5
"""A token is kept iff the alpha sampled for its grid cell is > 0.5 (strictly)."""
PruneRule = Literal["centre", "cover"]
PRUNE_RULES: tuple[PruneRule, ...] = ("centre", "cover")

FILL_VALUE = 0.5
"""Fill colour (grey, per channel in [0, 1]) behind transparent pixels; 0 in the VAE's [-1, 1] input."""

TokenEncoder = Callable[["torch.Tensor"], "torch.Tensor"]
"""(B, 3, H, W) images in [-1, 1] -> (B, rows*cols, D) packed latent tokens, row-major over the grid."""


def nearest_grid(alpha: np.ndarray) -> np.ndarray:
    """Nearest-resize an (H, W) map to the (H/16, W/16) token grid, sampling each cell's centre pixel.

    The centre of cell (r, c) is pixel (16r + 8, 16c + 8) (half-pixel-aligned nearest neighbour, as
    Pillow's NEAREST and PyTorch's ``nearest-exact`` do). H and W must be multiples of 16.
    """
    h, w = alpha.shape
    if h % TOKEN_PX or w % TOKEN_PX:
        raise ValueError(f"alpha map {w}x{h} is not a multiple of {TOKEN_PX}")
    half = TOKEN_PX // 2
    return alpha[half::TOKEN_PX, half::TOKEN_PX]


def cell_max(alpha: np.ndarray) -> np.ndarray:
    """The largest value of an (H, W) map within each 16x16 cell of the token grid."""
    h, w = alpha.shape
    if h % TOKEN_PX or w % TOKEN_PX:
        raise ValueError(f"alpha map {w}x{h} is not a multiple of {TOKEN_PX}")
    return alpha.reshape(h // TOKEN_PX, TOKEN_PX, w // TOKEN_PX, TOKEN_PX).max(axis=(1, 3))


def keep_mask(alpha: np.ndarray, rule: PruneRule = "centre") -> np.ndarray:
    """Transparent latent pruning: True where the cell's centre pixel (`centre`, the default) or any of its
    pixels (`cover`) has alpha > 0.5."""
    if rule == "centre":
        return nearest_grid(alpha) > ALPHA_THRESHOLD
    if rule == "cover":
        return cell_max(alpha) > ALPHA_THRESHOLD
    raise LayerComposerError(f"prune rule: one of {', '.join(PRUNE_RULES)}, got {rule!r}")


@dataclass(frozen=True)
class TokenRules:
    """How a model turns canvases into tokens where it departs from the defaults (module docstring; docs/DESIGN.md
    section 3). A model is trained under its rules and keeps them in its model_index.json."""

    merge_locked: bool = False
    prune: PruneRule = "centre"

    def __post_init__(self) -> None:
        if not isinstance(self.merge_locked, bool):
            raise LayerComposerError(f"merge_locked_layers must be true or false, got {self.merge_locked!r}")
        if self.prune not in PRUNE_RULES:
            raise LayerComposerError(f"prune_rule: one of {', '.join(PRUNE_RULES)}, got {self.prune!r}")

    def index_fields(self) -> dict[str, Any]:
        """The model_index.json entries."""
        return {"merge_locked_layers": self.merge_locked, "prune_rule": self.prune}

    @classmethod
    def from_index(cls, index: dict[str, Any]) -> TokenRules:
        """Read from a model_index.json (missing entries: the defaults); bad values raise."""
        return cls(index.get("merge_locked_layers", False), index.get("prune_rule", "centre"))


def composite_on_fill(rgba: Image.Image) -> np.ndarray:
    """(H, W, 4) uint8 straight RGBA -> (3, H, W) float32 VAE input in [-1, 1], transparent pixels at 0."""
    arr = np.asarray(rgba, dtype=np.float32) / 255.0
    rgb, alpha = arr[..., :3], arr[..., 3:4]
    # (rgb * a + FILL * (1 - a)) * 2 - 1 with FILL = 0.5 simplifies to (2 rgb - 1) * a.
    out = (rgb * alpha + FILL_VALUE * (1.0 - alpha)) * 2.0 - 1.0
    return np.ascontiguousarray(out.transpose(2, 0, 1))



def picture_pixels(image: Image.Image) -> torch.Tensor:
    """RGB picture -> (1, 3, H, W) float32 VAE input in [-1, 1] (a target, or a picture to encode whole)."""
    import torch

    return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def pixels_picture(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) VAE output in [-1, 1] -> RGB picture (clamped and rounded): `picture_pixels`' inverse."""
    import torch

    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def subject_cells(alpha: np.ndarray, grid: tuple[int, int], cell: int = TOKEN_PX) -> torch.Tensor:
    """(rows * cols,) bool, row-major like the packed tokens: cells of the (H, W) alpha (cropped to the grid)
    with at least one pixel of alpha >= 128, i.e. every cell a subject covers, its edges included."""
    import torch

    rows, cols = grid
    covered = np.asarray(alpha)[:rows * cell, :cols * cell] >= 128
    return torch.from_numpy(covered.reshape(rows, cell, cols, cell).any(axis=(1, 3)).reshape(-1).copy())

# ----------------------------------------------------------------------------------------------------------
# Planning (no torch)


@dataclass
class TokenGroup:
    """One source of condition tokens: a layer (layered / unpruned) or the flattened canvas (collage)."""

    name: str
    locked: bool
    index: int
    """First id axis: 0 for locked layers, j = 1..k for the visible unlocked layers back to front."""
    keep: np.ndarray
    """(rows, cols) bool: which grid cells enter the sequence."""
    coverage: float
    """Share of the grid kept under the pruning rule (independent of the mode)."""
    key: tuple[Any, ...] = field(repr=False)
    """Cache key: content and transform of what is encoded."""
    kind: str = "subject"

    @property
    def tokens(self) -> int:
        return int(self.keep.sum())


@dataclass
class TokenPlan:
    """Which tokens a canvas contributes in one mode, and the statistics of all three modes."""

    mode: Mode
    grid: tuple[int, int]
    groups: list[TokenGroup]
    unpruned_total: int
    collage_total: int
    hidden: list[str]

    @property
    def noisy(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def total(self) -> int:
        """Kept condition tokens in this plan's mode."""
        return sum(g.tokens for g in self.groups)

    def as_dict(self) -> dict[str, Any]:
        """JSON statistics (the shape of `layercomposer tokens --json`)."""
        return {
            "mode": self.mode,
            "grid": list(self.grid),
            "noisy": self.noisy,
            "layers": [
                {"name": g.name, "kind": g.kind, "locked": g.locked, "index": g.index, "tokens": g.tokens,
                 "coverage": round(g.coverage, 6)}
                for g in self.groups
            ],
            "hidden": list(self.hidden),
            "total": self.total,
            "unpruned_total": self.unpruned_total,
            "collage_total": self.collage_total,
        }


def layer_key(canvas: Canvas, layer: Layer) -> tuple[Any, ...]:
    """What a layer's latent tokens depend on: its pixels, its transform and the canvas size."""
    return ("layer", layer.image.digest, layer.transform_key(), canvas.width, canvas.height)


def collage_key(canvas: Canvas) -> tuple[Any, ...]:
    """What the flattened collage depends on: every visible layer's key, in z-order."""
    return ("collage", tuple(layer_key(canvas, layer) for layer in canvas.visible_layers()))


def locked_key(canvas: Canvas, locked: list[Layer]) -> tuple[Any, ...]:
    """What the merged locked group depends on: the locked layers' keys, in z-order."""
    return ("locked", tuple(layer_key(canvas, layer) for layer in locked))


def flatten_layers(canvas: Canvas, layers: list[Layer]) -> Image.Image:
    """`layers` rendered at generation size and alpha-composited back to front (transparent elsewhere)."""
    out = Image.new("RGBA", canvas.generation_size, (0, 0, 0, 0))
    for layer in layers:
        out = Image.alpha_composite(out, canvas.render_layer(layer, canvas.generation_size))
    return out


@dataclass
class _Entry:
    keep_full: np.ndarray  # (rows, cols) bool, kept under the builder's pruning rule
    image: Image.Image | None  # rendered RGBA at generation size, dropped once encoded
    tokens: torch.Tensor | None = None  # (rows*cols, D) packed latents


class ConditioningBuilder:
    """Builds condition token sequences from canvases, caching renders and latents per layer.

    A layer's entry depends only on `layer_key` (content, transform, canvas size): moving one layer of six
    re-renders and re-encodes that layer only. Locking, visibility and z-order change ids, not latents.
    """

    def __init__(self, encoder: TokenEncoder | None = None, max_entries: int = 64, encode_batch: int = 1,
                 rules: TokenRules | None = None) -> None:
        self.encoder = encoder
        self._rules = rules or TokenRules()
        self.max_entries = max_entries
        self.encode_batch = max(1, encode_batch)
        """Pictures encoded together in one VAE call. Batching is faster (the trainer uses 8), but a
        convolution's float rounding can depend on the batch size, so a layer's latents would then depend
        on which other layers happened to be missing from the cache. Inference keeps 1: the same canvas
        and seed give the same picture bit for bit, whatever was cached before."""
        self.encode_calls = 0
        """Pictures encoded so far (layers, collages, locked pictures), whatever the batching."""
        self._cache: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()

    @property
    def rules(self) -> TokenRules:
        """Merged locked layers and the pruning rule (module docstring); the model decides, not the user."""
        return self._rules

    @rules.setter
    def rules(self, rules: TokenRules) -> None:
        if rules != self._rules:
            self._rules = rules
            self.clear()  # cached entries hold kept cells under the old pruning rule

    @property
    def merge_locked(self) -> bool:
        return self._rules.merge_locked

    @property
    def prune(self) -> PruneRule:
        return self._rules.prune

    def clear(self) -> None:
        self._cache.clear()

    def discard(self, keys: list[tuple[Any, ...]]) -> None:
        """Drop entries that will not come back (a trainer's randomly jittered layers), keeping the rest."""
        for key in keys:
            self._cache.pop(key, None)

    # -- planning ------------------------------------------------------------------------------------------

    def plan(self, canvas: Canvas, mode: Mode = "layered") -> TokenPlan:
        """Kept cells and ids of every token group of `canvas` in `mode` (renders, never encodes)."""
        if mode not in MODES:
            raise LayerComposerError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
        rows, cols = canvas.grid
        visible = canvas.visible_layers()
        hidden = [layer.name for layer in canvas.layers if not layer.visible]
        cells = rows * cols
        groups: list[TokenGroup] = []
        if mode == "collage":
            if visible:
                entry = self._entry(collage_key(canvas), lambda: canvas.flatten(canvas.generation_size))
                # Opaque by construction (composited on the fill colour): every cell, id [1, r, c].
                groups.append(TokenGroup("collage", False, 1, np.ones((rows, cols), bool),
                                         float(entry.keep_full.mean()), collage_key(canvas), "collage"))
        else:
            locked = [layer for layer in visible if layer.locked] if self.merge_locked else []
            if locked:
                key = locked_key(canvas, locked)
                entry = self._entry(key, lambda: flatten_layers(canvas, locked))
                keep = entry.keep_full if mode == "layered" else np.ones((rows, cols), bool)
                groups.append(TokenGroup(" + ".join(layer.name for layer in locked), True, 0, keep,
                                         float(entry.keep_full.mean()), key, "locked"))
            j = 0
            for layer in visible:
                if locked and layer.locked:
                    continue
                key = layer_key(canvas, layer)
                entry = self._entry(key, lambda layer=layer: canvas.render_layer(layer, canvas.generation_size))
                if layer.locked:
                    index = 0
                else:
                    j += 1
                    index = j
                keep = entry.keep_full if mode == "layered" else np.ones((rows, cols), bool)
                groups.append(TokenGroup(layer.name, layer.locked, index, keep, float(entry.keep_full.mean()),
                                         key, layer.kind))
        # Groups of the layered / unpruned modes: one per visible layer, or the locked ones counted once.
        n_locked = sum(layer.locked for layer in visible)
        per_layer = len(visible) - n_locked + 1 if self.merge_locked and n_locked else len(visible)
        return TokenPlan(mode, (rows, cols), groups, unpruned_total=per_layer * cells,
                         collage_total=cells if visible else 0, hidden=hidden)

    def _entry(self, key: tuple[Any, ...], render: Callable[[], Image.Image]) -> _Entry:
        def make() -> _Entry:
            image = render()
            alpha = np.asarray(image.getchannel("A"), np.float32) / 255.0
            return _Entry(keep_full=keep_mask(alpha, self._rules.prune), image=image)

        return self._cached(key, make)

    def _cached(self, key: tuple[Any, ...], make: Callable[[], _Entry]) -> _Entry:
        entry = self._cache.get(key)
        if entry is None:
            entry = self._cache[key] = make()
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return entry

    def hard_lock(self, canvas: Canvas) -> tuple[np.ndarray, torch.Tensor | None]:
        """`hard_lock_target`'s mask and the locked picture's latent tokens, cached like a layer's.

        The key is every visible layer's key and lock, so regenerating an unchanged canvas (another seed)
        neither re-renders nor re-encodes. Tokens are None when no latent pixel is held.
        """
        key = ("hard_lock", tuple((layer_key(canvas, layer), layer.locked) for layer in canvas.visible_layers()))

        def make() -> _Entry:
            held, picture = hard_lock_target(canvas)
            return _Entry(keep_full=held, image=picture)

        entry = self._cached(key, make)
        if not entry.keep_full.any():
            return entry.keep_full, None
        return entry.keep_full, self._tokens(key, canvas)

    # -- building ------------------------------------------------------------------------------------------

    def prepare(self, canvases: list[Canvas], mode: Mode = "layered") -> list[TokenPlan]:
        """Plan several canvases of one size and encode every layer they miss, `encode_batch` per VAE call.

        A trainer's batch of canvases then builds from the cache; the latents are those `build` would make.
        """
        if self.encoder is None:
            raise RuntimeError("ConditioningBuilder.prepare needs an encoder")
        plans = [self.plan(canvas, mode) for canvas in canvases]
        if canvases:
            if len({canvas.grid for canvas in canvases}) != 1:
                raise ValueError("prepare: the canvases must share one token grid")
            self._encode_missing([group.key for plan in plans for group in plan.groups], canvases[0])
        return plans

    def build(self, canvas: Canvas, mode: Mode = "layered", check: Callable[[], None] | None = None) -> Conditioning:
        """The condition tokens and ids of `canvas` in `mode`, encoding only layers not already cached.
        `check` is called before each VAE call and may raise to stop (a cancelled job)."""
        import torch

        if self.encoder is None:
            raise RuntimeError("ConditioningBuilder.build needs an encoder")
        plan = self.plan(canvas, mode)
        self._encode_missing([group.key for group in plan.groups], canvas, check)
        token_parts, id_parts = [], []
        for group in plan.groups:
            all_tokens = self._tokens(group.key, canvas)  # (rows*cols, D)
            flat_keep = torch.from_numpy(group.keep.reshape(-1))
            token_parts.append(all_tokens[flat_keep.to(all_tokens.device)])
            rc = torch.from_numpy(np.argwhere(group.keep))  # (n, 2) row-major (r, c)
            id_parts.append(torch.cat([torch.full((len(rc), 1), group.index), rc], dim=1))
        if token_parts:
            tokens = torch.cat(token_parts)[None]  # (1, M, D)
            ids = torch.cat(id_parts).to(torch.int64)  # (M, 3)
        else:
            tokens, ids = None, torch.zeros((0, 3), dtype=torch.int64)
        return Conditioning(tokens=tokens, ids=ids, plan=plan)

    def _encode_missing(self, keys: list[tuple[Any, ...]], canvas: Canvas,
                        check: Callable[[], None] | None = None) -> None:
        """Encode the cached renders of `keys` that have no latents yet, `encode_batch` pictures per VAE call."""
        import torch

        missing = [key for key in dict.fromkeys(keys) if self._cache[key].tokens is None]
        rows, cols = canvas.grid
        for start in range(0, len(missing), self.encode_batch):
            if check is not None:
                check()
            chunk = [self._cache[key] for key in missing[start:start + self.encode_batch]]
            if any(entry.image is None for entry in chunk):  # evicted render (cannot happen within one build)
                raise RuntimeError("layer render missing from cache")
            pixels = torch.from_numpy(np.stack([composite_on_fill(entry.image) for entry in chunk]))  # (B, 3, H, W)
            tokens = self.encoder(pixels)  # (B, rows*cols, D)
            if tokens.shape[:2] != (len(chunk), rows * cols):
                raise RuntimeError(f"encoder returned {tuple(tokens.shape)} for {len(chunk)} pictures, {rows}x{cols}")
            self.encode_calls += len(chunk)
            for entry, layer_tokens in zip(chunk, tokens.detach(), strict=True):
                entry.tokens = layer_tokens.clone()  # not a view: an evicted neighbour frees its memory
                entry.image = None  # the latents are all we need from now on

    def _tokens(self, key: tuple[Any, ...], canvas: Canvas) -> torch.Tensor:
        """The (rows*cols, D) latents of a cached entry, encoding it if needed."""
        if self._cache[key].tokens is None:
            self._encode_missing([key], canvas)
        return self._cache[key].tokens

@dataclass
class Conditioning:
    """Condition tokens of one canvas: (1, M, D) packed latents (None when M = 0) and (M, 3) ids."""

    tokens: torch.Tensor | None
    ids: torch.Tensor
    plan: TokenPlan

    @property
    def count(self) -> int:
        return int(self.ids.shape[0])


LATENT_PX = TOKEN_PX // 2
"""Pixels per side of one VAE latent pixel (a token packs 2x2 of them)."""


def hard_lock_target(canvas: Canvas, full: float = 0.99) -> tuple[np.ndarray, Image.Image | None]:
    """For hard locking: which latent pixels show locked layers only, and the picture of the locked layers.

    Back to front, a pixel's *locked weight* w becomes `a * locked + (1 - a) * w` for each visible layer
    with alpha `a`: the share of its final colour that comes from locked layers. A latent pixel (8x8 px,
    a quarter of a token) is hard-locked iff w >= `full` at all its 64 pixels, so one touched by an
    unlocked layer in front, or by a locked layer's soft edge, is left to the model. Returns the
    (2 rows, 2 cols) bool mask and the locked layers flattened over transparency (None when no latent
    pixel qualifies).
    """
    gw, gh = canvas.generation_size
    rows, cols = canvas.grid
    weight = np.zeros((gh, gw), dtype=np.float32)
    locked_picture = Image.new("RGBA", (gw, gh), (0, 0, 0, 0))
    for layer in canvas.visible_layers():
        rendered = canvas.render_layer(layer, (gw, gh))
        a = alpha_array(rendered)
        weight = a * float(layer.locked) + (1.0 - a) * weight
        if layer.locked:
            locked_picture = Image.alpha_composite(locked_picture, rendered)
    held = weight.reshape(2 * rows, LATENT_PX, 2 * cols, LATENT_PX).min(axis=(1, 3)) >= full
    return held, (locked_picture if held.any() else None)


def grid_ids(rows: int, cols: int, index: int = 0) -> np.ndarray:
    """(rows*cols, 3) ids [index, r, c] in row-major order: the noisy tokens use index 0."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([np.full(rows * cols, index), r.reshape(-1), c.reshape(-1)], axis=1).astype(np.int64)


def token_stats(canvas: Canvas, mode: Mode = "layered", rules: TokenRules | None = None) -> dict[str, Any]:
    """The statistics of `layercomposer tokens` for a canvas (renders the layers, no model)."""
    return ConditioningBuilder(rules=rules).plan(canvas, mode).as_dict()
