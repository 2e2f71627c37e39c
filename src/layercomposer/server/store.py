"""Content-addressed store of uploaded layer images (the editor uploads each image once, then refers to it).

Ids are ``<sha256 of the bytes>.<ext>``; only ids of that exact shape are ever turned into paths, so no
request can name a file outside the store.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..canvas import LayerImage, write_atomic
from ..errors import CanvasError

IMAGE_ID = re.compile(r"^[0-9a-f]{64}\.(png|jpg|webp|gif|bmp|tif)$")


class ImageStore:
    """Uploaded images on disk under `root`, decoded (and size-checked) on the way in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, LayerImage] = {}

    def put(self, data: bytes, where: str = "upload") -> tuple[str, LayerImage]:
        """Check and store image bytes; returns (id, decoded image)."""
        image = LayerImage.from_bytes(data, where)  # refuses non-images and bombs before decoding
        image_id = f"{hashlib.sha256(data).hexdigest()}{image.ext}"
        path = self.root / image_id
        if not path.exists():
            write_atomic(path, data)
        image.source_name = image_id
        self._cache[image_id] = image
        return image_id, image

    def path(self, image_id: str) -> Path:
        if not IMAGE_ID.match(image_id):
            raise CanvasError(f"image {image_id!r}: not an image id of this server")
        return self.root / image_id

    def get(self, image_id: str, where: str = "image") -> LayerImage:
        """The decoded image of an id; a clear error when it is unknown."""
        if image_id in self._cache:
            return self._cache[image_id]
        path = self.path(image_id)
        if not path.is_file():
            raise CanvasError(f"{where}: unknown image {image_id!r} (upload it to /api/images first)")
        image = LayerImage.from_bytes(path.read_bytes(), where, source_name=image_id)
        self._cache[image_id] = image
        return image
