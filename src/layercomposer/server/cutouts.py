"""The editor's "Cut out" button: person segmentation or GrabCut on a stored image, the result stored as a new one.

The photo tools (`layercomposer.photo.cutout`, the `photo` extra) do the work; this module adapts them to the
API: the box is checked against the image with one message, the CLI's wording ("--box") becomes the editor's
("Cut out (box)"), an image that already has transparency keeps it (the cut-out's alpha is multiplied by the
source's), and a missing package is told apart from a photo that has no person in it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from ..imageio import encode_png
from .store import IMAGE_ID, ImageStore

MIN_BOX = 8
"""A box must be at least this many image pixels wide and high (as for the CLI's --box)."""


class CutoutFailed(Exception):
    """A cut-out that cannot be made: `status` is the HTTP status (422 for the photo, 501 for the install)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class CutoutResult:
    image_id: str
    width: int
    height: int
    offset: tuple[int, int]
    method: str
    source_size: tuple[int, int]
    seconds: float


def check_box(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box as whole pixels inside the image, or CutoutFailed(422) with one message saying what a box must be."""
    w, h = size
    rule = (f"box {list(box)}: expected [x0, y0, x1, y1] in the image's pixels with 0 <= x0 < x1 <= {w}, "
            f"0 <= y0 < y1 <= {h}, at least {MIN_BOX}x{MIN_BOX} pixels")
    if len(box) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
        raise CutoutFailed(422, rule)
    x0, y0, x1, y1 = (round(v) for v in box)
    if min(x0, y0) < 0 or x1 > w or y1 > h or x1 - x0 < MIN_BOX or y1 - y0 < MIN_BOX:
        raise CutoutFailed(422, rule)
    return x0, y0, x1, y1


def _editor_message(message: str) -> str:
    """The photo tools speak to the CLI (--box); say it in the editor's words."""
    if message.startswith("no person"):
        return ("no person found in this image (no face detected): for an object, or a person seen from behind, "
                'use "Cut out (box)" and drag a box around it')
    if message.startswith("nothing found"):
        return 'nothing found in the box: try "Cut out (box)" again with a tighter box around the subject'
    return message.replace("--box x0,y0,x1,y1", 'a box ("Cut out (box)")').replace("--box", "the box")


def cut_out(store: ImageStore, image_id: str, mode: Literal["person", "box"],
            box: Sequence[float] | None) -> CutoutResult:
    """Cut the subject out of a stored image and store the RGBA layer (cropped to its content).

    Blocking (about a second on a 512 px photo): run it in a worker thread. Raises KeyError for an unknown
    image, CutoutFailed for a bad box, a photo without a person (422) or a missing photo extra (501).
    """
    from ..photo import INSTALL_HINT, PhotoError

    started = time.perf_counter()
    if not IMAGE_ID.fullmatch(image_id) or not store.path(image_id).is_file():
        raise KeyError(image_id)
    source = store.get(image_id, f"image {image_id}")
    rgba = source.rgba
    pixels = None if box is None else check_box(box, rgba.size)
    if mode == "box" and pixels is None:
        raise CutoutFailed(422, 'box: mode "box" needs a box [x0, y0, x1, y1] in the image\'s pixels')
    try:
        from ..photo.cutout import cutout

        result = cutout(rgba.convert("RGB"), box=pixels, method="grabcut" if mode == "box" else "person")
    except PhotoError as exc:
        message = str(exc)
        if INSTALL_HINT in message:
            raise CutoutFailed(501, message) from None
        raise CutoutFailed(422, _editor_message(message)) from None
    layer, (x0, y0, _, _) = result.layer, result.box
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.min() < 255:
        # The source was already partly transparent: what was not there is not cut out either.
        crop = alpha[y0 : y0 + layer.height, x0 : x0 + layer.width].astype(np.uint16)
        arr = np.array(layer)
        arr[..., 3] = (arr[..., 3].astype(np.uint16) * crop // 255).astype(np.uint8)
        arr[arr[..., 3] == 0] = 0
        layer = Image.fromarray(arr, "RGBA")
        bbox = layer.getchannel("A").getbbox()
        if bbox is None:
            raise CutoutFailed(422, "nothing found: the subject lies where the image is transparent")
        layer = layer.crop(bbox)
        x0, y0 = x0 + bbox[0], y0 + bbox[1]
    new_id, image = store.put(encode_png(layer), f"cut-out of {image_id}")
    return CutoutResult(new_id, image.size[0], image.size[1], (x0, y0), result.method, rgba.size,
                        time.perf_counter() - started)
