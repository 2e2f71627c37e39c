"""The sprites world: a procedural multi-image-per-scene dataset for training and measuring the demo model.

Characters (identity = shape, colours, pattern, eyes, accessory) are re-posed and re-lit in several images of
one scene; every image comes with exact per-character RGBA layers and its background (docs/DESIGN.md sections 4-5).
Pure Pillow + numpy: no torch here.
"""

from __future__ import annotations

from .backgrounds import BACKGROUNDS, Layout, make_layout, render_background
from .classifiers import classify, classify_background, classify_lighting
from .generator import (
    GeneratedImage,
    GeneratedScene,
    Placement,
    composite,
    generate_dataset,
    generate_scene,
    overlap_share,
    visible_overlaps,
    write_scene,
)
from .identity import (
    ACCESSORIES,
    EYES,
    NUM_IDENTITIES,
    PATTERNS,
    SHAPES,
    UNIVERSE,
    Identity,
    heldout_indices,
    identity_from_index,
    identity_id,
    index_from_id,
    is_held_out,
    split_indices,
    train_indices,
)
from .palette import COLOURS, LIGHTING_NAMES, LIGHTINGS, Lighting
from .prompts import VOCABULARY, describe, prompt_words, scene_prompt
from .sprite import ARM_POSES, EXPRESSIONS, Pose, named_pose, render_layer, render_sprite, sample_pose

__all__ = [
    "ACCESSORIES",
    "ARM_POSES",
    "BACKGROUNDS",
    "COLOURS",
    "EXPRESSIONS",
    "EYES",
    "LIGHTINGS",
    "LIGHTING_NAMES",
    "NUM_IDENTITIES",
    "PATTERNS",
    "SHAPES",
    "UNIVERSE",
    "VOCABULARY",
    "GeneratedImage",
    "GeneratedScene",
    "Identity",
    "Layout",
    "Lighting",
    "Placement",
    "Pose",
    "classify",
    "classify_background",
    "classify_lighting",
    "composite",
    "describe",
    "generate_dataset",
    "generate_scene",
    "heldout_indices",
    "identity_from_index",
    "identity_id",
    "index_from_id",
    "is_held_out",
    "make_layout",
    "named_pose",
    "overlap_share",
    "prompt_words",
    "render_background",
    "render_layer",
    "render_sprite",
    "sample_pose",
    "scene_prompt",
    "split_indices",
    "train_indices",
    "visible_overlaps",
    "write_scene",
]
