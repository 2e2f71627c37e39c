"""Character identities: the attribute space, the index -> identity map and the fixed train/held-out split."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from .palette import COLOURS, MIN_PAIR_DISTANCE, colour_distance

SHAPES: tuple[str, ...] = ("round", "tall", "boxy", "pear", "star", "ghost")
PATTERNS: tuple[str, ...] = ("plain", "stripes", "spots", "checker", "zigzag")
EYES: tuple[str, ...] = ("dots", "googly", "cyclops", "shiny")
ACCESSORIES: tuple[str, ...] = ("none", "hat", "bow", "antennae", "glasses", "scarf", "crown")

COLOUR_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (a, b) for a in COLOURS for b in COLOURS if a != b and colour_distance(COLOURS[a], COLOURS[b]) >= MIN_PAIR_DISTANCE
)
"""Ordered (primary, secondary) pairs distinct enough for the pattern and limbs to stand out."""

NUM_IDENTITIES = len(SHAPES) * len(COLOUR_PAIRS) * len(PATTERNS) * len(EYES) * len(ACCESSORIES)
"""Size of the attribute space; indices 0..NUM_IDENTITIES-1 map to distinct identities."""

UNIVERSE = 2000
"""Default number of identities in use (indices 0..UNIVERSE-1)."""

HELD_OUT_PER_MILLE = 120
"""About 12% of indices are held out, chosen by a hash of the index (not RNG state), so the split is fixed."""


def _multiplier(total: int) -> int:
    """A multiplier coprime with `total` near the golden ratio of it: a full-period scramble of indices."""
    a = int(total * 0.6180339887)
    while math.gcd(a, total) != 1:
        a += 1
    return a


_MIX = _multiplier(NUM_IDENTITIES)
_OFFSET = 7919  # so that index 0 is not the all-first-choices identity


@dataclass(frozen=True)
class Identity:
    """What a character is, independent of any image: shape, colours, pattern, eyes and accessory."""

    shape: str
    primary: str
    secondary: str
    pattern: str
    eyes: str
    accessory: str
    index: int = field(default=-1, compare=False)
    """Position in the identity universe (-1 for a hand-made identity); not part of equality."""

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("primary", self.primary, tuple(COLOURS)),
            ("secondary", self.secondary, tuple(COLOURS)),
            ("pattern", self.pattern, PATTERNS),
            ("eyes", self.eyes, EYES),
            ("accessory", self.accessory, ACCESSORIES),
        ):
            if value not in allowed:
                raise ValueError(f"Identity.{name}: {value!r} is not one of {', '.join(allowed)}")

    @property
    def id(self) -> str:
        """Stable subject id used in scene files, e.g. ``"c00042"``."""
        return identity_id(self.index) if self.index >= 0 else "custom"


def identity_id(index: int) -> str:
    """The subject id of identity `index`, e.g. 42 -> ``"c00042"``."""
    return f"c{index:05d}"


def index_from_id(subject_id: str) -> int:
    """Inverse of `identity_id`."""
    if len(subject_id) != 6 or subject_id[0] != "c" or not subject_id[1:].isdigit():
        raise ValueError(f"not a sprites-world subject id: {subject_id!r}")
    return int(subject_id[1:])


def identity_from_index(i: int) -> Identity:
    """The identity with index `i` (deterministic; distinct indices give distinct identities)."""
    if not 0 <= i < NUM_IDENTITIES:
        raise ValueError(f"identity index {i} out of range 0..{NUM_IDENTITIES - 1}")
    # A full-period affine scramble so that neighbouring indices differ in every attribute.
    k = (i * _MIX + _OFFSET) % NUM_IDENTITIES
    k, shape = divmod(k, len(SHAPES))
    k, pattern = divmod(k, len(PATTERNS))
    k, eyes = divmod(k, len(EYES))
    k, accessory = divmod(k, len(ACCESSORIES))
    primary, secondary = COLOUR_PAIRS[k % len(COLOUR_PAIRS)]
    return Identity(SHAPES[shape], primary, secondary, PATTERNS[pattern], EYES[eyes], ACCESSORIES[accessory], i)


def is_held_out(i: int) -> bool:
    """Whether identity `i` belongs to the held-out split (fixed forever: a hash of the index)."""
    digest = hashlib.blake2b(f"layercomposer-sprites-heldout:{i}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 1000 < HELD_OUT_PER_MILLE


def train_indices(universe: int = UNIVERSE) -> list[int]:
    """Indices of the train identities among the first `universe`."""
    return [i for i in range(universe) if not is_held_out(i)]


def heldout_indices(universe: int = UNIVERSE) -> list[int]:
    """Indices of the held-out identities among the first `universe`."""
    return [i for i in range(universe) if is_held_out(i)]


def split_indices(split: str, universe: int = UNIVERSE) -> list[int]:
    """Identity indices of a split: ``"train"`` or ``"heldout"``."""
    if split == "train":
        return train_indices(universe)
    if split == "heldout":
        return heldout_indices(universe)
    raise ValueError(f"unknown split {split!r}; use 'train' or 'heldout'")
