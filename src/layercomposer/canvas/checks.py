"""The canvas limits (docs/DESIGN.md section 2) and the checks that enforce them; size-limited file reads."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any, Literal

from ..errors import CanvasError

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
# Checks


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
# Reading files


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
