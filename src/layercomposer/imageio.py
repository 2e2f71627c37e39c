"""Safe image decoding: size limits are checked from the header, before any pixel is decoded."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CanvasError

MAX_IMAGE_PIXELS = 40_000_000
"""Largest image accepted anywhere (DESIGN.md section 2): 40 megapixels."""

MAX_IMAGE_BYTES = 256 * 1024 * 1024
"""Largest encoded image file accepted (a 40 MP PNG is far below this)."""


def decode_image(data: bytes, where: str) -> Image.Image:
    """Decode encoded image bytes to RGBA, refusing non-images and decompression bombs before decoding.

    `where` names the file and field for the one-line error (e.g. ``"canvas.json: layers[2].image 'a.png'"``).
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise CanvasError(f"{where}: file is {len(data) / 2**20:.0f} MiB, above the {MAX_IMAGE_BYTES >> 20} MiB limit")
    try:
        with warnings.catch_warnings():
            # Pillow warns (or raises) on bombs itself; we check the header size first with our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width <= 0 or height <= 0:
                raise CanvasError(f"{where}: image has an empty size {width}x{height}")
            if width * height > MAX_IMAGE_PIXELS:
                raise CanvasError(
                    f"{where}: image is {width}x{height} ({width * height / 1e6:.1f} MP), above the "
                    f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit (refused before decoding)"
                )
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
