"""Prompt templates of the sprites world, the closed vocabulary they use and the word splitter."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .identity import SHAPES, Identity
from .palette import COLOURS

PATTERN_WORDS = {"plain": "", "stripes": "striped", "spots": "spotted", "checker": "checkered", "zigzag": "zigzag"}
ACCESSORY_WORDS = {
    "none": "",
    "hat": "a hat",
    "bow": "a bow",
    "antennae": "antennae",
    "glasses": "glasses",
    "scarf": "a scarf",
    "crown": "a crown",
}
EYE_WORDS = {"dots": "dot eyes", "googly": "googly eyes", "cyclops": "one big eye", "shiny": "shiny eyes"}
PLACE_WORDS = {
    "meadow": "in a meadow",
    "beach": "on a beach",
    "city": "in a city",
    "forest": "in a forest",
    "snow": "in the snow",
    "desert": "in a desert",
    "room": "in a room",
}
LIGHT_WORDS = {"day": "in daylight", "sunset": "at sunset", "night": "at night", "overcast": "in overcast light"}
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
MORE_COUNT_WORDS = {5: "five", 6: "six"}
"""Counts past the world's usual 1-4, for scenes made with `characters=`. They stay out of VOCABULARY, whose
order is the demo models' token ids (both words are in the models' basic vocabulary after it)."""
_GLUE = "a an sprite sprites one and with"

_WORD = re.compile(r"[a-z]+")


def prompt_words(prompt: str) -> list[str]:
    """Split a prompt into lowercase words (punctuation dropped), the way VOCABULARY is built."""
    return _WORD.findall(prompt.lower())


def describe(identity: Identity, eyes: bool = False, noun: str = "sprite") -> str:
    """Short description, e.g. ``"a red and blue spotted round sprite with a hat"`` (eyes only if asked)."""
    article = "an" if identity.primary[0] in "aeiou" else "a"
    words = [
        article,
        identity.primary,
        "and",
        identity.secondary,
        PATTERN_WORDS[identity.pattern],
        identity.shape,
        noun,
    ]
    extras = [EYE_WORDS[identity.eyes]] if eyes else []
    if identity.accessory != "none":
        extras.append(ACCESSORY_WORDS[identity.accessory])
    text = " ".join(w for w in words if w)
    return f"{text} with {' and '.join(extras)}" if extras else text


def scene_prompt(identities: Sequence[Identity], background: str, lighting: str) -> str:
    """The prompt of one image: its characters (left to right), the place and the lighting. Prompts of 5 or 6
    characters can be longer than MAX_PROMPT_WORDS."""
    counts = {**COUNT_WORDS, **MORE_COUNT_WORDS}
    if len(identities) not in counts:
        raise ValueError(f"a prompt describes 1 to {max(counts)} characters, got {len(identities)}")
    tail = f"{PLACE_WORDS[background]} {LIGHT_WORDS[lighting]}"
    if len(identities) == 1:
        return f"{describe(identities[0])}, {tail}"
    parts = [describe(i, noun="one") for i in identities]
    listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{counts[len(identities)]} sprites: {listed}, {tail}"


def _vocabulary() -> list[str]:
    texts = [
        _GLUE,
        *COLOURS,
        *SHAPES,
        *PATTERN_WORDS.values(),
        *ACCESSORY_WORDS.values(),
        *EYE_WORDS.values(),
        *PLACE_WORDS.values(),
        *LIGHT_WORDS.values(),
        *COUNT_WORDS.values(),
    ]
    return sorted({w for t in texts for w in prompt_words(t)})


def _max_prompt_words() -> int:
    longest = max(
        (Identity("round", "red", "blue", "spots", "dots", acc) for acc in ACCESSORY_WORDS),
        key=lambda i: len(prompt_words(describe(i, noun="one"))),
    )
    place = max(PLACE_WORDS, key=lambda k: len(prompt_words(PLACE_WORDS[k])))
    light = max(LIGHT_WORDS, key=lambda k: len(prompt_words(LIGHT_WORDS[k])))
    return len(prompt_words(scene_prompt([longest] * 4, place, light)))


VOCABULARY: list[str] = _vocabulary()
"""Every word a sprites-world prompt (or `describe(..., eyes=True)`) can contain, sorted, lowercase."""

MAX_PROMPT_WORDS: int = _max_prompt_words()
"""The longest prompt the templates can produce for the world's usual 1-4 characters, in words (four characters,
all with patterns and accessories)."""
