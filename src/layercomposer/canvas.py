"""The layered canvas: data model, file format v1 (JSON and `.lcz` bundle), rendering and flattening.

DESIGN.md section 2 is the contract. Coordinates are pixels, origin top-left, y down. ``x, y`` place the
top-left corner of the scaled, unrotated image; ``rotation`` is in degrees counter-clockwise about the centre
of the scaled image. Layers are ordered back to front.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import posixpath
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from .errors import CanvasError
from .imageio import MAX_IMAGE_BYTES, decode_image, encode_png

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

    __slots__ = ("_data", "_digest", "_rgba", "ext", "source_name")

    def __init__(self, data: bytes | None, rgba: Image.Image, ext: str, source_name: str | None = None) -> None:
        self._data = data  # None: encode to PNG when first needed (saving), not on every construction
        self.ext = ext
        self.source_name = source_name
        self._rgba = rgba
        self._digest: str | None = None

    @classmethod
    def from_bytes(cls, data: bytes, where: str, source_name: str | None = None) -> LayerImage:
        """Decode `data` (any format Pillow reads) with the limits of section 2."""
        rgba = decode_image(data, where)
        fmt = Image.open(io.BytesIO(data)).format or "PNG"
        return cls(data, rgba, _FORMAT_EXT.get(fmt, ".png"), source_name)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], where: str | None = None) -> LayerImage:
        """Read and decode an image file; a missing or unreadable file is a one-line error."""
        path = Path(path)
        where = where or str(path)
        try:
            size = path.stat().st_size
            if size > MAX_IMAGE_BYTES:
                raise CanvasError(
                    f"{where}: file is {size / 2**20:.0f} MiB, above the {MAX_IMAGE_BYTES >> 20} MiB limit"
                )
            data = path.read_bytes()
        except FileNotFoundError:
            raise CanvasError(f"{where}: file not found") from None
        except IsADirectoryError:
            raise CanvasError(f"{where}: is a directory, not an image file") from None
        except OSError as exc:
            raise CanvasError(f"{where}: cannot read ({exc.strerror or exc})") from None
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
        """The decoded pixels, straight-alpha RGBA."""
        return self._rgba

    @property
    def size(self) -> tuple[int, int]:
        return self._rgba.size

    @property
    def digest(self) -> str:
        """SHA-256 of the decoded pixels and size: the content key of the latent cache."""
        if self._digest is None:
            h = hashlib.sha256()
            h.update(f"{self._rgba.size}".encode())
            h.update(self._rgba.tobytes())
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
        """Check the limits of DESIGN.md section 2 on an in-memory canvas; returns self."""
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
            f"{where}: version: unsupported canvas version {version!r} (this build reads {CANVAS_VERSION})"
        )
    width = _require(data, "width", where)
    height = _require(data, "height", where)
    _check_side(width, f"{where}: width")
    _check_side(height, f"{where}: height")
    prompt = data.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise CanvasError(f"{where}: prompt: must be a string or null")
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
    name = raw.get("name", posixpath.splitext(posixpath.basename(image))[0])
    if not isinstance(name, str) or not name.strip():
        raise CanvasError(f"{at}.name: must be a non-empty string")
    kind = raw.get("kind", "subject")
    if kind not in _KINDS:
        raise CanvasError(f"{at}.kind: must be one of {list(_KINDS)}, got {kind!r}")
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
            raise CanvasError(f"{at}.{key}: must be true or false, got {value!r}")
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
    return meta


def _check_side(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CanvasError(f"{where}: must be an integer number of pixels, got {value!r}")
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise CanvasError(f"{where}: {value} is outside {MIN_SIDE}..{MAX_SIDE}")


def _check_number(value: Any, where: str, bound: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CanvasError(f"{where}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise CanvasError(f"{where}: must be finite, got {value!r}")
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
    if path.suffix.lower() == ".lcz" or zipfile.is_zipfile(path):
        return load_bundle(path.read_bytes(), str(path))
    try:
        size = path.stat().st_size
        if size > MAX_CANVAS_JSON_BYTES:
            raise CanvasError(f"{path}: {size >> 20} MiB is too large for a canvas JSON file")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CanvasError(f"{path}: not a canvas (neither UTF-8 JSON nor an .lcz bundle)") from None
    except OSError as exc:
        raise CanvasError(f"{path}: cannot read ({exc.strerror or exc})") from None
    data = _parse_json(text, str(path))
    base = path.parent

    def resolve(ref: str, where: str) -> LayerImage:
        image = LayerImage.from_file(base / ref, where)
        image.source_name = ref
        return image

    return canvas_from_dict(data, resolve, str(path))


def load_bundle(data: bytes, where: str = "bundle") -> Canvas:
    """Load a `.lcz` bundle from bytes: `canvas.json` at the root, images read only from inside the zip."""
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
        text = _read_member(zf, members["canvas.json"], MAX_CANVAS_JSON_BYTES, f"{where}: canvas.json")
        try:
            doc = _parse_json(text.decode("utf-8"), f"{where}: canvas.json")
        except UnicodeDecodeError:
            raise CanvasError(f"{where}: canvas.json: not UTF-8 text") from None

        def resolve(ref: str, at: str) -> LayerImage:
            name = _safe_member_name(ref, at)
            if name not in members:
                raise CanvasError(f"{at}: not found in the bundle")
            blob = _read_member(zf, members[name], MAX_IMAGE_BYTES, at)
            return LayerImage.from_bytes(blob, at, source_name=posixpath.basename(name))

        return canvas_from_dict(doc, resolve, f"{where}: canvas.json")


def _safe_member_name(ref: str, where: str) -> str:
    """Normalise a path inside a bundle, refusing absolute paths and anything that climbs out."""
    if "\\" in ref or ref.startswith("/") or (len(ref) > 1 and ref[1] == ":") or "\x00" in ref:
        raise CanvasError(f"{where}: must be a relative path inside the bundle")
    norm = posixpath.normpath(ref)
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        raise CanvasError(f"{where}: path leaves the bundle")
    return norm


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, where: str) -> bytes:
    if info.file_size > limit:
        raise CanvasError(f"{where}: {info.file_size >> 20} MiB uncompressed, above the {limit >> 20} MiB limit")
    try:
        with zf.open(info) as fh:
            blob = fh.read(limit + 1)  # never trust the header alone
    except (zipfile.BadZipFile, OSError, NotImplementedError, EOFError) as exc:
        raise CanvasError(f"{where}: cannot read from the bundle ({exc})") from None
    if len(blob) > limit:
        raise CanvasError(f"{where}: larger than the {limit >> 20} MiB limit")
    return blob


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CanvasError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


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
    """Write bytes to `path` through a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
