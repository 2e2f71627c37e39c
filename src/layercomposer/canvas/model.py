"""The canvas data model (layer images, layers, the canvas) and rendering."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import CanvasError
from ..imageio import (
    MAX_IMAGE_BYTES,
    check_encoded_size,
    decode_image,
    encode_png,
    probe_image,
)
from .checks import (
    _FORMAT_EXT,
    _KINDS,
    MAX_LAYERS,
    MAX_NAME_LENGTH,
    MAX_OFFSET,
    MAX_SCALE,
    TOKEN_PX,
    LayerKind,
    _check_number,
    _check_side,
    read_regular_file,
)

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
        from .files import load_canvas

        return load_canvas(path)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save as JSON (images beside it) or, for a `.lcz` path, as a bundle."""
        from .files import save_canvas

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
