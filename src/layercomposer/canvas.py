"""The layered canvas: data model, file format v1 (JSON and `.lcz` bundle), rendering and flattening.

docs/DESIGN.md section 2 is the contract. Coordinates are pixels, origin top-left, y down. ``x, y`` place the
top-left corner of the scaled, unrotated image; ``rotation`` is in degrees counter-clockwise about the centre
of the scaled image. Layers are ordered back to front.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import math
import os
import posixpath
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from .errors import CanvasError
from .imageio import (
    HEADER_BYTES,
    MAX_IMAGE_BYTES,
    check_encoded_size,
    decode_image,
    encode_png,
    max_encoded_bytes,
    probe_image,
)

CANVAS_VERSION = 1
MIN_SIDE, MAX_SIDE = 64, 4096
MAX_LAYERS = 64
MAX_SCALE = 1000.0
MAX_OFFSET = 100_000.0
MAX_NAME_LENGTH = 200
TOKEN_PX = 16
"""One conditioning token covers a 16x16 pixel cell (VAE /8, then 2x2 patches)."""

MAX_BUNDLE_MEMBERS = 1000
MAX_CANVAS_JSON_BYTES = 16 * 1024 * 1024
MAX_BUNDLE_BYTES = 1024 * 1024 * 1024
"""Largest `.lcz` file read."""
MAX_BUNDLE_INFLATED_BYTES = 512 * 1024 * 1024
"""Most bytes inflated from one bundle, all members together (each member is inflated once)."""
MAX_PROMPT_LENGTH = 2000
MAX_META_BYTES = 64 * 1024
"""Largest `meta` object (canvas or layer) as compact JSON."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and lists inside `meta`."""
MAX_NUMBER = 1e15
"""Largest magnitude of any number in a canvas (x, y, scale and rotation have tighter limits of their own)."""

LayerKind = Literal["subject", "background"]
_KINDS = ("subject", "background")
_TOP_KEYS = {"version", "width", "height", "prompt", "layers", "meta"}
_LAYER_KEYS = {"name", "image", "kind", "x", "y", "scale", "rotation", "locked", "visible", "meta"}
_FORMAT_EXT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


# ----------------------------------------------------------------------------------------------------------
# Layer images


class LayerImage:
    """An encoded image kept byte for byte (so saving is lossless) with its decoded RGBA pixels.

    Equality and hashing use the digest of the decoded pixels, so the same picture is the same content
    whatever file it came from.
    """

    __slots__ = ("_data", "_digest", "_rgba", "_size", "ext", "source_name")

    def __init__(self, data: bytes | None, rgba: Image.Image | None, ext: str, source_name: str | None = None,
                 size: tuple[int, int] | None = None) -> None:
        if rgba is None and (data is None or size is None):
            raise ValueError("LayerImage: a lazily decoded image needs its bytes and size")
        self._data = data  # None: encode to PNG when first needed (saving), not on every construction
        self.ext = ext
        self.source_name = source_name
        self._rgba = rgba  # None: decoded from `_data` when first needed
        self._size = rgba.size if rgba is not None else size
        self._digest: str | None = None

    @classmethod
    def from_bytes(cls, data: bytes, where: str, source_name: str | None = None, lazy: bool = False) -> LayerImage:
        """Decode `data` (any format Pillow reads) with the limits of section 2.

        `lazy`: check only the header and length now and decode on first use of the pixels (a damaged file
        then fails there, with the same one-line error)."""
        if lazy:
            fmt, width, height = probe_image(data, where)
            check_encoded_size(data, fmt, width, height, where)
            return cls(data, None, _FORMAT_EXT.get(fmt, ".png"), source_name, size=(width, height))
        fmt = probe_image(data, where)[0]
        rgba = decode_image(data, where)
        return cls(data, rgba, _FORMAT_EXT.get(fmt, ".png"), source_name)

    @property
    def decoded(self) -> bool:
        """Whether the pixels are held in memory now."""
        return self._rgba is not None

    @property
    def nbytes(self) -> int:
        """Memory this image can hold: its encoded bytes plus its decoded RGBA pixels."""
        w, h = self.size
        return len(self._data or b"") + 4 * w * h

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], where: str | None = None) -> LayerImage:
        """Read and decode an image file; a missing or unreadable file is a one-line error."""
        path = Path(path)
        where = where or str(path)
        data = read_regular_file(path, MAX_IMAGE_BYTES, where, "an image file")
        return cls.from_bytes(data, where, source_name=path.name)

    @classmethod
    def from_pil(cls, image: Image.Image, source_name: str | None = None) -> LayerImage:
        """Wrap an in-memory image (stored as PNG when saved)."""
        rgba = image.convert("RGBA") if image.mode != "RGBA" else image.copy()
        return cls(None, rgba, ".png", source_name)

    @property
    def data(self) -> bytes:
        """The encoded file: the original bytes when loaded from a file, else a lossless PNG."""
        if self._data is None:
            self._data = encode_png(self._rgba)
        return self._data

    @property
    def rgba(self) -> Image.Image:
        """The decoded pixels, straight-alpha RGBA (decoded now when the image was loaded lazily)."""
        if self._rgba is None:
            assert self._data is not None
            self._rgba = decode_image(self._data, self.source_name or "image")
        return self._rgba

    @property
    def size(self) -> tuple[int, int]:
        assert self._size is not None
        return self._size

    @property
    def digest(self) -> str:
        """SHA-256 of the decoded pixels and size: the content key of the latent cache."""
        if self._digest is None:
            h = hashlib.sha256()
            h.update(f"{self.size}".encode())
            h.update(self.rgba.tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerImage) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        w, h = self.size
        return f"LayerImage({self.source_name or '<memory>'}, {w}x{h}, {self.digest[:8]})"


# ----------------------------------------------------------------------------------------------------------
# Data model


@dataclass(eq=True)
class Layer:
    """One RGBA layer of the canvas."""

    name: str
    image: LayerImage
    x: float = 0.0
    y: float = 0.0
    scale: float = 1.0
    rotation: float = 0.0
    locked: bool = False
    visible: bool = True
    kind: LayerKind = "subject"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_background(self) -> bool:
        return self.kind == "background"

    def transform_key(self) -> tuple[float, ...]:
        """What, besides content and canvas size, decides how the layer renders."""
        if self.is_background:
            return (1.0,)
        return (0.0, float(self.x), float(self.y), float(self.scale), float(self.rotation) % 360.0)


@dataclass(eq=True)
class Canvas:
    """A layered canvas: size, prompt and layers ordered back to front."""

    width: int
    height: int
    layers: list[Layer] = field(default_factory=list)
    prompt: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # -- geometry ------------------------------------------------------------------------------------------

    @property
    def generation_size(self) -> tuple[int, int]:
        """(width, height) rounded down to a multiple of the 16 px token cell."""
        return (self.width // TOKEN_PX) * TOKEN_PX, (self.height // TOKEN_PX) * TOKEN_PX

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, cols) = (H/16, W/16) of the generation size."""
        w, h = self.generation_size
        return h // TOKEN_PX, w // TOKEN_PX

    def size_note(self) -> str | None:
        """A note when the picture is cropped to multiples of 16 px (None when nothing is cropped)."""
        w, h = self.generation_size
        if (w, h) != (self.width, self.height):
            return f"canvas {self.width}x{self.height} is generated at {w}x{h} (whole 16 px tokens; right and " \
                   "bottom edges cropped)"
        return None

    def visible_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.visible]

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise CanvasError(f"canvas: no layer named {name!r}")

    # -- validation ----------------------------------------------------------------------------------------

    def validate(self, where: str = "canvas") -> Canvas:
        """Check the limits of docs/DESIGN.md section 2 on an in-memory canvas; returns self."""
        _check_side(self.width, f"{where}: width")
        _check_side(self.height, f"{where}: height")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise CanvasError(f"{where}: prompt: must be a string or null")
        if len(self.layers) > MAX_LAYERS:
            raise CanvasError(f"{where}: layers: {len(self.layers)} layers, above the limit of {MAX_LAYERS}")
        seen: set[str] = set()
        for i, layer in enumerate(self.layers):
            at = f"{where}: layers[{i}]"
            if not isinstance(layer.name, str) or not layer.name.strip():
                raise CanvasError(f"{at}.name: must be a non-empty string")
            if len(layer.name) > MAX_NAME_LENGTH:
                raise CanvasError(f"{at}.name: longer than {MAX_NAME_LENGTH} characters")
            if layer.name in seen:
                raise CanvasError(f"{at}.name: duplicate layer name {layer.name!r} (names must be unique)")
            seen.add(layer.name)
            if not isinstance(layer.image, LayerImage):
                raise CanvasError(f"{at}.image: must be a LayerImage, got {type(layer.image).__name__}")
            if layer.kind not in _KINDS:
                raise CanvasError(f"{at}.kind: must be one of {list(_KINDS)}, got {layer.kind!r}")
            if layer.is_background and i != 0:
                raise CanvasError(f"{at}.kind: a background layer must be the first layer (and there is at most one)")
            _check_number(layer.x, f"{at}.x", bound=MAX_OFFSET)
            _check_number(layer.y, f"{at}.y", bound=MAX_OFFSET)
            _check_number(layer.rotation, f"{at}.rotation")
            _check_number(layer.scale, f"{at}.scale", bound=MAX_SCALE)
            if layer.scale <= 0:
                raise CanvasError(f"{at}.scale: must be positive, got {layer.scale}")
            for flag in ("locked", "visible"):
                if not isinstance(getattr(layer, flag), bool):
                    raise CanvasError(f"{at}.{flag}: must be true or false")
        return self

    # -- rendering -----------------------------------------------------------------------------------------

    def render_layer(self, layer: Layer, size: tuple[int, int] | None = None) -> Image.Image:
        """The layer drawn alone on a transparent canvas, its transform applied (RGBA, straight alpha).

        `size` crops the output to the top-left (w, h) of the canvas (the generation size uses this).
        """
        return render_layer(layer, (self.width, self.height), size)

    def flatten(self, size: tuple[int, int] | None = None) -> Image.Image:
        """The rough collage: visible layers alpha-composited over each other in z-order (RGBA)."""
        out_size = size or (self.width, self.height)
        out = Image.new("RGBA", out_size, (0, 0, 0, 0))
        for layer in self.visible_layers():
            out = Image.alpha_composite(out, self.render_layer(layer, out_size))
        return out

    # -- I/O -----------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Canvas:
        """Load a canvas JSON file or an `.lcz` bundle."""
        return load_canvas(path)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save as JSON (images beside it) or, for a `.lcz` path, as a bundle."""
        return save_canvas(self, path)

    def copy(self) -> Canvas:
        """A copy whose layer list and layers can be edited without touching this canvas (images shared)."""
        return replace(
            self,
            layers=[replace(layer, meta=dict(layer.meta)) for layer in self.layers],
            meta=dict(self.meta),
        )


# ----------------------------------------------------------------------------------------------------------
# Rendering


def layer_affine(layer: Layer, canvas_size: tuple[int, int], src_size: tuple[int, int]) -> tuple[float, ...]:
    """Pillow AFFINE coefficients mapping canvas coordinates to coordinates in an image of `src_size`.

    Pillow maps an output point p (pixel centres at u + 0.5) to the source point (a b c; d e f) . (p, 1).
    The layer's image (w, h) becomes a (w*s, h*s) box at (x, y), rotated counter-clockwise (on screen) by
    theta about its centre C: q = (w/2, h/2) + R(-theta) (p - C) / s. `src_size` may be a pre-resized
    copy of the image; the scale per axis absorbs the difference.
    """
    w, h = layer.image.size
    cw, ch = canvas_size
    if layer.is_background:
        # Cover the canvas (centre crop): the placement fields are ignored.
        s = max(cw / w, ch / h)
        x, y, theta = (cw - w * s) / 2, (ch - h * s) / 2, 0.0
    else:
        s, x, y, theta = float(layer.scale), float(layer.x), float(layer.y), math.radians(layer.rotation)
    cx, cy = x + w * s / 2, y + h * s / 2
    sw, sh = src_size
    kx, ky = sw / (w * s), sh / (h * s)  # canvas px -> source px, per axis
    cos, sin = math.cos(theta), math.sin(theta)
    # Screen-CCW rotation with y down maps offset (dx, dy) to (dx cos + dy sin, -dx sin + dy cos); invert it.
    a, b = cos * kx, -sin * kx
    d, e = sin * ky, cos * ky
    c = sw / 2 - a * cx - b * cy
    f = sh / 2 - d * cx - e * cy
    return (a, b, c, d, e, f)


def render_layer(
    layer: Layer, canvas_size: tuple[int, int], size: tuple[int, int] | None = None
) -> Image.Image:
    """Draw one layer at canvas size (cropped to `size`), premultiplying so edges do not fringe."""
    out_size = size or canvas_size
    src = layer.image.rgba
    w, h = src.size
    s = max(canvas_size[0] / w, canvas_size[1] / h) if layer.is_background else float(layer.scale)
    coeffs = layer_affine(layer, canvas_size, src.size)
    if _is_integer_translation(coeffs):
        # Exact pixel copy (no resampling) for unscaled, unrotated layers at integer positions.
        out = Image.new("RGBA", out_size, (0, 0, 0, 0))
        out.paste(src, (round(-coeffs[2]), round(-coeffs[5])))
        return out
    src = src.convert("RGBa")  # premultiplied, so resampling does not bleed colour from transparent pixels
    if s < 1.0:
        # Downscale with a proper reducing filter first; the affine only does the (near-1) remainder.
        src = src.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
        coeffs = layer_affine(layer, canvas_size, src.size)
    out = src.transform(out_size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)
    return out.convert("RGBA")


def _is_integer_translation(coeffs: tuple[float, ...], eps: float = 1e-9) -> bool:
    a, b, c, d, e, f = coeffs
    return (
        abs(a - 1) < eps and abs(e - 1) < eps and abs(b) < eps and abs(d) < eps
        and abs(c - round(c)) < eps and abs(f - round(f)) < eps
    )


def alpha_array(image: Image.Image) -> np.ndarray:
    """Alpha in [0, 1] as float32 (H, W)."""
    return np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0


# ----------------------------------------------------------------------------------------------------------
# Parsing (JSON dict -> Canvas) with one-line errors naming the file and field

ImageResolver = Callable[[str, str], LayerImage]
"""(relative path as written in the canvas, where-string for errors) -> decoded image."""


def canvas_from_dict(data: Any, resolve_image: ImageResolver, where: str) -> Canvas:
    """Build and validate a canvas from parsed JSON; `resolve_image` loads each layer's image."""
    if not isinstance(data, dict):
        raise CanvasError(f"{where}: the top level must be a JSON object")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise CanvasError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    if "version" not in data:
        raise CanvasError(f"{where}: version: missing (this build reads version {CANVAS_VERSION})")
    version = data["version"]
    if isinstance(version, bool) or version != CANVAS_VERSION:
        raise CanvasError(
            f"{where}: version: unsupported canvas version {_short(version)} (this build reads {CANVAS_VERSION})"
        )
    width = _require(data, "width", where)
    height = _require(data, "height", where)
    _check_side(width, f"{where}: width")
    _check_side(height, f"{where}: height")
    prompt = data.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise CanvasError(f"{where}: prompt: must be a string or null")
    if prompt is not None:
        if len(prompt) > MAX_PROMPT_LENGTH:
            raise CanvasError(f"{where}: prompt: {len(prompt)} characters, above the limit of {MAX_PROMPT_LENGTH}")
        check_text(prompt, f"{where}: prompt")
    meta = _meta(data, where)
    raw_layers = data.get("layers", [])
    if not isinstance(raw_layers, list):
        raise CanvasError(f"{where}: layers: must be a list")
    if len(raw_layers) > MAX_LAYERS:
        raise CanvasError(f"{where}: layers: {len(raw_layers)} layers, above the limit of {MAX_LAYERS}")
    # Check every layer's fields before decoding any image (cheap errors first).
    specs = [_layer_spec(raw, f"{where}: layers[{i}]") for i, raw in enumerate(raw_layers)]
    layers = []
    for i, spec in enumerate(specs):
        ref = spec.pop("image")
        image = resolve_image(ref, f"{where}: layers[{i}].image {ref!r}")
        if image.source_name is None:
            image.source_name = posixpath.basename(ref)
        layers.append(Layer(image=image, **spec))
    return Canvas(width=width, height=height, layers=layers, prompt=prompt, meta=meta).validate(where)


def _layer_spec(raw: Any, at: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise CanvasError(f"{at}: must be a JSON object")
    unknown = sorted(set(raw) - _LAYER_KEYS)
    if unknown:
        raise CanvasError(f"{at}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_LAYER_KEYS))})")
    image = _require(raw, "image", at)
    if not isinstance(image, str) or not image:
        raise CanvasError(f"{at}.image: must be a non-empty relative path string")
    if len(image) > 4096:
        raise CanvasError(f"{at}.image: path longer than 4096 characters")
    check_text(image, f"{at}.image")
    name = raw.get("name", posixpath.splitext(posixpath.basename(image))[0])
    if not isinstance(name, str) or not name.strip():
        raise CanvasError(f"{at}.name: must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise CanvasError(f"{at}.name: longer than {MAX_NAME_LENGTH} characters")
    check_text(name, f"{at}.name")
    kind = raw.get("kind", "subject")
    if kind not in _KINDS:
        raise CanvasError(f"{at}.kind: must be one of {list(_KINDS)}, got {_short(kind)}")
    spec: dict[str, Any] = {"name": name, "image": image, "kind": kind, "meta": _meta(raw, at)}
    for key, default in (("x", 0), ("y", 0), ("scale", 1), ("rotation", 0)):
        value = raw.get(key, default)
        _check_number(value, f"{at}.{key}")
        spec[key] = value
    if spec["scale"] <= 0:
        raise CanvasError(f"{at}.scale: must be positive, got {spec['scale']}")
    for key, default in (("locked", False), ("visible", True)):
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise CanvasError(f"{at}.{key}: must be true or false, got {_short(value)}")
        spec[key] = value
    return spec


def _require(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise CanvasError(f"{where}: {key}: missing")
    return data[key]


def _meta(data: dict[str, Any], where: str) -> dict[str, Any]:
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise CanvasError(f"{where}: meta: must be a JSON object")
    check_json_value(meta, f"{where}: meta", MAX_META_BYTES)
    return meta


def check_text(text: str, where: str) -> None:
    """Refuse a string that is not valid Unicode text (a lone surrogate such as "\\udcff" from JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanvasError(f"{where}: not valid Unicode text (a lone surrogate)") from None


def check_json_value(value: Any, where: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse a JSON value nested deeper than `max_depth`, longer than `max_bytes` as compact JSON, or holding
    numbers beyond float range, non-finite floats or lone surrogates (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    size = 0
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise CanvasError(f"{where}: nested deeper than {max_depth} levels")
        if isinstance(item, dict):
            size += 2
            for key, child in item.items():
                if not isinstance(key, str):
                    raise CanvasError(f"{where}: keys must be strings")
                check_text(key, f"{where}: key")
                size += len(key) + 4
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            size += 2
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            check_text(item, where)
            size += len(item) + 3
        elif isinstance(item, bool) or item is None:
            size += 5
        elif isinstance(item, int):
            if abs(item) > MAX_NUMBER:
                raise CanvasError(f"{where}: number beyond the limit of {MAX_NUMBER:g}")
            size += 16
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise CanvasError(f"{where}: numbers must be finite")
            size += 16
        else:
            raise CanvasError(f"{where}: not a JSON value ({type(item).__name__})")
        if size > max_bytes:
            raise CanvasError(f"{where}: larger than the limit of {max_bytes >> 10} KiB")


def _check_side(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CanvasError(f"{where}: must be an integer number of pixels, got {_short(value)}")
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise CanvasError(f"{where}: {_short(value)} is outside {MIN_SIDE}..{MAX_SIDE}")


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value for an error line, cut short (a huge int or string must not fill the message)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**limit:
        return "a huge integer"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_number(value: Any, where: str, bound: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CanvasError(f"{where}: must be a number, got {_short(value)}")
    if isinstance(value, int) and abs(value) > (bound if bound is not None else MAX_NUMBER):
        # An int may be beyond float range (10**400): compare it as an int, never convert it.
        raise CanvasError(f"{where}: beyond the limit of {bound if bound is not None else MAX_NUMBER:g}")
    if not math.isfinite(value):
        raise CanvasError(f"{where}: must be finite, got {_short(value)}")
    if bound is not None and abs(value) > bound:
        raise CanvasError(f"{where}: {value} is beyond the limit of {bound:g}")


# ----------------------------------------------------------------------------------------------------------
# Loading


def load_canvas(path: str | os.PathLike[str]) -> Canvas:
    """Load a canvas from a JSON file (images relative to it) or an `.lcz` bundle."""
    path = Path(path)
    if not path.exists():
        raise CanvasError(f"{path}: file not found")
    if path.is_dir():
        raise CanvasError(f"{path}: is a directory, not a canvas file")
    raw = read_regular_file(path, MAX_BUNDLE_BYTES, str(path), "a canvas file")
    if path.suffix.lower() == ".lcz" or raw[:2] == b"PK":
        return load_bundle(raw, str(path))
    if len(raw) > MAX_CANVAS_JSON_BYTES:
        raise CanvasError(f"{path}: {len(raw) >> 20} MiB is too large for a canvas JSON file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CanvasError(f"{path}: not a canvas (neither UTF-8 JSON nor an .lcz bundle)") from None
    data = _parse_json(text, str(path))
    base = path.parent

    def resolve(ref: str, where: str) -> LayerImage:
        image = LayerImage.from_file(base / ref, where)
        image.source_name = ref
        return image

    return canvas_from_dict(data, resolve, str(path))


_ZIP_READ_ERRORS = (zipfile.BadZipFile, OSError, NotImplementedError, EOFError, RuntimeError, zlib.error,
                    lzma.LZMAError, ValueError)
"""What zipfile raises for a damaged member (RuntimeError: encrypted; NotImplementedError: an unknown
compression; OSError: a bad bzip2 stream; LZMAError, zlib.error, EOFError: damaged deflate or LZMA data)."""


def load_bundle(data: bytes, where: str = "bundle") -> Canvas:
    """Load a `.lcz` bundle from bytes: `canvas.json` at the root, images read only from inside the zip.

    Each member is inflated once however many layers name it, at most `MAX_BUNDLE_INFLATED_BYTES` in all, and
    an image member no further than its header's pixel size can need. Whatever is wrong with the zip, the
    error is a `CanvasError`."""
    try:
        return _load_bundle(data, where)
    except CanvasError:
        raise
    except (*_ZIP_READ_ERRORS, zipfile.LargeZipFile, struct.error, IndexError, KeyError, TypeError,
            OverflowError) as exc:
        # zipfile reports a damaged archive in many ways (RuntimeError: encrypted; NotImplementedError: an
        # unknown compression; ValueError, IndexError, zlib.error, EOFError: damaged headers or streams).
        raise CanvasError(f"{where}: not a valid .lcz bundle ({type(exc).__name__}: {_short(str(exc), 120)})") \
            from None


def _load_bundle(data: bytes, where: str) -> Canvas:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise CanvasError(f"{where}: not a valid .lcz bundle (not a zip file)") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_BUNDLE_MEMBERS:
            raise CanvasError(f"{where}: {len(infos)} files in the bundle, above the limit of {MAX_BUNDLE_MEMBERS}")
        members = {info.filename: info for info in infos if not info.is_dir()}
        if "canvas.json" not in members:
            raise CanvasError(f"{where}: canvas.json missing at the root of the bundle")
        budget = [MAX_BUNDLE_INFLATED_BYTES]
        text = _read_member(zf, members["canvas.json"], MAX_CANVAS_JSON_BYTES, f"{where}: canvas.json", budget)
        try:
            doc = _parse_json(text.decode("utf-8"), f"{where}: canvas.json")
        except UnicodeDecodeError:
            raise CanvasError(f"{where}: canvas.json: not UTF-8 text") from None
        images: dict[str, LayerImage] = {}

        def resolve(ref: str, at: str) -> LayerImage:
            name = _safe_member_name(ref, at)
            if name not in members:
                raise CanvasError(f"{at}: not found in the bundle")
            if name not in images:  # inflated and decoded once, shared by every layer that names it
                blob = _read_image_member(zf, members[name], at, budget)
                images[name] = LayerImage.from_bytes(blob, at, source_name=posixpath.basename(name))
            return images[name]

        return canvas_from_dict(doc, resolve, f"{where}: canvas.json")


def _safe_member_name(ref: str, where: str) -> str:
    """Normalise a path inside a bundle, refusing absolute paths and anything that climbs out."""
    if "\\" in ref or ref.startswith("/") or (len(ref) > 1 and ref[1] == ":") or "\x00" in ref:
        raise CanvasError(f"{where}: must be a relative path inside the bundle")
    norm = posixpath.normpath(ref)
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        raise CanvasError(f"{where}: path leaves the bundle")
    return norm


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, where: str,
                 budget: list[int] | None = None) -> bytes:
    """A member's bytes, inflating no more than `limit` (nor what is left of `budget[0]`, which is spent)."""
    if info.file_size > limit:
        raise CanvasError(f"{where}: {info.file_size >> 20} MiB uncompressed, above the {limit >> 20} MiB limit")
    try:
        with zf.open(info) as fh:
            blob = _read_limited(fh, limit, where, budget)
    except _ZIP_READ_ERRORS as exc:
        raise CanvasError(f"{where}: cannot read from the bundle ({type(exc).__name__}: {_short(str(exc), 120)})") \
            from None
    return blob


def _read_image_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, budget: list[int]) -> bytes:
    """An image member: its header first, then no more than its pixel size can need (no appended data)."""
    try:
        with zf.open(info) as fh:
            head = _read_limited(fh, HEADER_BYTES - 1, where, budget, exact=False)
            fmt, width, height = probe_image(head, where)
            limit = max_encoded_bytes(width, height)
            if info.file_size > limit:
                raise CanvasError(f"{where}: {info.file_size >> 10} KiB uncompressed is more than a "
                                  f"{width}x{height} image can need (data appended to the picture?)")
            rest = _read_limited(fh, limit - len(head), where, budget) if len(head) == HEADER_BYTES - 1 else b""
    except _ZIP_READ_ERRORS as exc:
        raise CanvasError(f"{where}: cannot read from the bundle ({type(exc).__name__}: {_short(str(exc), 120)})") \
            from None
    blob = head + rest
    check_encoded_size(blob, fmt, width, height, where)
    return blob


def _read_limited(fh: Any, limit: int, where: str, budget: list[int] | None, exact: bool = True) -> bytes:
    """Read up to `limit` bytes in 1 MiB chunks; more than `limit` (when `exact`) or than the budget is refused."""
    chunks, total = [], 0
    want = limit + 1 if exact else limit
    while total < want:
        chunk = fh.read(min(1 << 20, want - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if budget is not None:
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise CanvasError(f"{where}: the bundle inflates to more than {MAX_BUNDLE_INFLATED_BYTES >> 20} MiB")
    if exact and total > limit:
        raise CanvasError(f"{where}: larger than the {limit >> 20} MiB limit" if limit >= 1 << 20
                          else f"{where}: larger than {limit} bytes")
    return b"".join(chunks)


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CanvasError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise CanvasError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise CanvasError(f"{where}: not valid JSON ({exc})") from None


def read_regular_file(path: Path, limit: int, where: str, what: str = "a regular file") -> bytes:
    """The bytes of a regular file, at most `limit`: devices (/dev/zero), FIFOs and sockets are refused
    without blocking, and a file that grows while read is cut off at the limit and refused."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CanvasError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise CanvasError(f"{where}: is a directory, not {what}") from None
    except OSError as exc:
        raise CanvasError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise CanvasError(f"{where}: is a directory, not {what}")
        if not stat.S_ISREG(info.st_mode):
            raise CanvasError(f"{where}: not a regular file (a device, FIFO or socket), not {what}")
        if info.st_size > limit:
            raise CanvasError(f"{where}: file is {info.st_size / 2**20:.0f} MiB, above the {limit >> 20} MiB limit")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise CanvasError(f"{where}: file is larger than the {limit >> 20} MiB limit")
        return b"".join(chunks)
    except OSError as exc:
        raise CanvasError(f"{where}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# Saving


def canvas_to_dict(canvas: Canvas, image_refs: list[str]) -> dict[str, Any]:
    """The JSON document of a canvas, given each layer's image path."""
    layers = []
    for layer, ref in zip(canvas.layers, image_refs, strict=True):
        entry: dict[str, Any] = {"name": layer.name, "image": ref}
        if layer.is_background:
            entry["kind"] = "background"
        else:
            entry.update(x=_num(layer.x), y=_num(layer.y), scale=_num(layer.scale), rotation=_num(layer.rotation))
        entry.update(locked=layer.locked, visible=layer.visible)
        if layer.meta:
            entry["meta"] = layer.meta
        layers.append(entry)
    doc: dict[str, Any] = {"version": CANVAS_VERSION, "width": canvas.width, "height": canvas.height}
    if canvas.prompt is not None:
        doc["prompt"] = canvas.prompt
    doc["layers"] = layers
    if canvas.meta:
        doc["meta"] = canvas.meta
    return doc


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def _image_names(canvas: Canvas, prefix: str, taken: Callable[[str, LayerImage], bool]) -> Iterator[str]:
    """A file name per layer: the source name when it is free, identical images share one file."""
    by_digest: dict[str, str] = {}
    used: set[str] = set()
    for layer in canvas.layers:
        image = layer.image
        if image.digest in by_digest:
            yield by_digest[image.digest]
            continue
        stem = _safe_stem(posixpath.splitext(posixpath.basename(image.source_name or ""))[0] or layer.name)
        candidate, n = f"{prefix}{stem}{image.ext}", 1
        while candidate in used or taken(candidate, image):
            candidate, n = f"{prefix}{stem}-{n}{image.ext}", n + 1
        used.add(candidate)
        by_digest[image.digest] = candidate
        yield candidate


def _safe_stem(stem: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).strip("._")
    return keep[:80] or "layer"


def save_bundle_bytes(canvas: Canvas) -> bytes:
    """The `.lcz` bundle of a canvas as bytes (images stored byte for byte as loaded)."""
    canvas.validate()
    refs = list(_image_names(canvas, "images/", lambda _name, _image: False))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("canvas.json", json.dumps(canvas_to_dict(canvas, refs), indent=2))
        written: set[str] = set()
        for layer, ref in zip(canvas.layers, refs, strict=True):
            if ref not in written:
                # Already-compressed formats are stored, PNG deflate gains little; keep it simple: store all.
                zf.writestr(zipfile.ZipInfo(ref, date_time=(2020, 1, 1, 0, 0, 0)), layer.image.data,
                            compress_type=zipfile.ZIP_STORED)
                written.add(ref)
    return buf.getvalue()


def save_canvas(canvas: Canvas, path: str | os.PathLike[str]) -> Path:
    """Save a canvas; `.lcz` writes a bundle, anything else JSON with images under `images/` beside it.

    Files are written to a temporary name and renamed, so a failure leaves no half-written canvas.
    """
    path = Path(path)
    canvas.validate(str(path))
    if path.suffix.lower() == ".lcz":
        write_atomic(path, save_bundle_bytes(canvas))
        return path
    base = path.parent

    def taken(name: str, image: LayerImage) -> bool:
        # A file of that name is free to (re)use only if it holds exactly these bytes.
        target = base / name
        return target.exists() and target.read_bytes() != image.data

    refs = list(_image_names(canvas, "images/", taken))
    for layer, ref in zip(canvas.layers, refs, strict=True):
        target = base / ref
        if not target.exists():
            write_atomic(target, layer.image.data)
    write_atomic(path, (json.dumps(canvas_to_dict(canvas, refs), indent=2) + "\n").encode())
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to `path` through a temporary file in the same folder and an atomic rename.

    The file gets the mode an ordinary `open(path, "w")` would give it: an existing file keeps its mode, a
    new one gets 0666 less the umask; a symlink at `path` is written through (its target is replaced), not
    replaced by a regular file."""
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it where /proc allows (os.umask would race other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
