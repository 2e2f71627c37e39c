"""The layered canvas: data model, file format v1 (JSON and `.lcz` bundle), rendering and flattening.

docs/DESIGN.md section 2 is the contract. Coordinates are pixels, origin top-left, y down. ``x, y`` place the
top-left corner of the scaled, unrotated image; ``rotation`` is in degrees counter-clockwise about the centre
of the scaled image. Layers are ordered back to front.
"""

from __future__ import annotations

from .checks import (
    CANVAS_VERSION,
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_INFLATED_BYTES,
    MAX_BUNDLE_MEMBERS,
    MAX_CANVAS_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_LAYERS,
    MAX_META_BYTES,
    MAX_NAME_LENGTH,
    MAX_NUMBER,
    MAX_OFFSET,
    MAX_PROMPT_LENGTH,
    MAX_SCALE,
    MAX_SIDE,
    MIN_SIDE,
    TOKEN_PX,
    LayerKind,
    check_json_value,
    check_text,
    read_regular_file,
)
from .files import (
    ImageResolver,
    canvas_from_dict,
    canvas_to_dict,
    current_umask,
    load_bundle,
    load_canvas,
    save_bundle_bytes,
    save_canvas,
    write_atomic,
)
from .model import (
    Canvas,
    Layer,
    LayerImage,
    alpha_array,
    layer_affine,
    render_layer,
)

__all__ = [
    "CANVAS_VERSION",
    "MAX_BUNDLE_BYTES",
    "MAX_BUNDLE_INFLATED_BYTES",
    "MAX_BUNDLE_MEMBERS",
    "MAX_CANVAS_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_LAYERS",
    "MAX_META_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_NUMBER",
    "MAX_OFFSET",
    "MAX_PROMPT_LENGTH",
    "MAX_SCALE",
    "MAX_SIDE",
    "MIN_SIDE",
    "TOKEN_PX",
    "Canvas",
    "ImageResolver",
    "Layer",
    "LayerImage",
    "LayerKind",
    "alpha_array",
    "canvas_from_dict",
    "canvas_to_dict",
    "check_json_value",
    "check_text",
    "current_umask",
    "layer_affine",
    "load_bundle",
    "load_canvas",
    "read_regular_file",
    "render_layer",
    "save_bundle_bytes",
    "save_canvas",
    "write_atomic",
]
