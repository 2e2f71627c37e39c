"""Safe image decoding: size limits are checked from the header, before any pixel is decoded."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CanvasError

MAX_IMAGE_PIXELS = 40_000_000
"""Largest image accepted anywhere (docs/DESIGN.md section 2): 40 megapixels."""

MAX_IMAGE_BYTES = 256 * 1024 * 1024
"""Largest encoded image file accepted (a 40 MP PNG is far below this)."""

HEADER_BYTES = 1024 * 1024
"""Enough of a file to read its format and size (what `probe_image` needs)."""


def max_encoded_bytes(width: int, height: int) -> int:
    """The most bytes a file of `width` x `height` pixels can need: 16-bit RGBA stored raw, plus 4 MiB of
    metadata (ICC profile, EXIF, thumbnails). Anything longer carries data that is not the picture."""
    return min(MAX_IMAGE_BYTES, 8 * width * height + 4 * 1024 * 1024)


def probe_image(head: bytes, where: str) -> tuple[str, int, int]:
    """(format, width, height) from the start of an image file, checked against the pixel limit; nothing is
    decoded. `head` may be only the first `HEADER_BYTES` of the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(head))
            width, height = im.size
            fmt = im.format or "PNG"
    except UnidentifiedImageError:
        raise CanvasError(f"{where}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise CanvasError(f"{where}: refused as a decompression bomb ({exc})") from None
    except Exception as exc:  # a damaged header: Pillow raises many kinds
        raise CanvasError(f"{where}: cannot read the image header ({type(exc).__name__})") from None
    if width <= 0 or height <= 0:
        raise CanvasError(f"{where}: image has an empty size {width}x{height}")
    if width * height > MAX_IMAGE_PIXELS:
        raise CanvasError(
            f"{where}: image is {width}x{height} ({width * height / 1e6:.1f} MP), above the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit (refused before decoding)"
        )
    return fmt, width, height


def check_encoded_size(data: bytes, fmt: str, width: int, height: int, where: str) -> None:
    """Refuse a file longer than its pixels can need, and data after a PNG's IEND chunk."""
    if len(data) > max_encoded_bytes(width, height):
        raise CanvasError(f"{where}: {len(data) >> 10} KiB is more than a {width}x{height} image can need "
                          "(data appended to the picture?)")
    if fmt == "PNG":
        end = _png_end(data)  # None: no IEND (truncated), which the decoder reports
        if end is not None and end != len(data):
            raise CanvasError(f"{where}: {len(data) - end} bytes after the PNG's IEND chunk (refused)")


def _png_end(data: bytes) -> int | None:
    """Offset just past the IEND chunk of a PNG, walking its chunks; None when there is none."""
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            return pos if pos <= n else None
    return None


def decode_image(data: bytes, where: str) -> Image.Image:
    """Decode encoded image bytes to RGBA, refusing non-images and decompression bombs before decoding.

    `where` names the file and field for the one-line error (e.g. ``"canvas.json: layers[2].image 'a.png'"``).
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise CanvasError(f"{where}: file is {len(data) / 2**20:.0f} MiB, above the {MAX_IMAGE_BYTES >> 20} MiB limit")
    fmt, width, height = probe_image(data, where)
    check_encoded_size(data, fmt, width, height, where)
    try:
        with warnings.catch_warnings():
            # Pillow warns (or raises) on bombs itself; we check the header size first with our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.size != (width, height):
                raise CanvasError(f"{where}: image header is inconsistent")
            im.seek(0)  # first frame of an animation
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return _to_rgba(im)
    except CanvasError:
        raise
    except UnidentifiedImageError:
        raise CanvasError(f"{where}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise CanvasError(f"{where}: refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CanvasError(f"{where}: cannot decode image ({exc})") from None
    except Exception as exc:  # Pillow's decoders raise more than they document on damaged files
        raise CanvasError(f"{where}: cannot decode image ({type(exc).__name__})") from None


def _to_rgba(im: Image.Image) -> Image.Image:
    """Convert any mode to straight-alpha RGBA; images without alpha become fully opaque."""
    if im.mode == "RGBA":
        return im
    if im.mode == "P" and "transparency" in im.info:
        return im.convert("RGBA")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clipping.
        im = im.point(lambda v: v / 257).convert("L")
    if im.mode == "CMYK":
        im = im.convert("RGB")
    return im.convert("RGBA")


def encode_png(im: Image.Image) -> bytes:
    """PNG-encode an image losslessly."""
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
