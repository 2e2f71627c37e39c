"""The canvas file format v1: parsing and checking JSON, loading canvas files and `.lcz` bundles, saving."""

from __future__ import annotations

import io
import json
import lzma
import os
import posixpath
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import CanvasError, parse_json
from ..imageio import (
    HEADER_BYTES,
    check_encoded_size,
    max_encoded_bytes,
    probe_image,
)
from .checks import (
    _KINDS,
    _LAYER_KEYS,
    _TOP_KEYS,
    CANVAS_VERSION,
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_INFLATED_BYTES,
    MAX_BUNDLE_MEMBERS,
    MAX_CANVAS_JSON_BYTES,
    MAX_LAYERS,
    MAX_META_BYTES,
    MAX_NAME_LENGTH,
    MAX_PROMPT_LENGTH,
    _check_number,
    _check_side,
    _short,
    check_json_value,
    check_text,
    read_regular_file,
)
from .model import Canvas, Layer, LayerImage

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
    data = parse_json(text, str(path), CanvasError)
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
            doc = parse_json(text.decode("utf-8"), f"{where}: canvas.json", CanvasError)
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
