"""Content-addressed store of uploaded layer images (the editor uploads each image once, then refers to it).

Ids are ``<sha256 of the bytes>.<ext>``; only ids of that exact shape are ever turned into paths, so no
request can name a file outside the store.

Images in memory are bounded by bytes, not by count: an LRU of `LayerImage`s, each counted at its encoded
size plus its decoded RGBA size (`LayerImage.nbytes`), whether or not it has been decoded yet; an image
read back from disk is decoded only when its pixels are first needed.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from pathlib import Path

from ..canvas import LayerImage, write_atomic
from ..errors import CanvasError

IMAGE_ID = re.compile(r"[0-9a-f]{64}\.(png|jpg|webp|gif|bmp|tif)")
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


class ImageStore:
    """Uploaded images on disk under `root`, checked on the way in, kept in a byte-bounded LRU in memory."""

    def __init__(self, root: Path, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, LayerImage] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    @property
    def cached_bytes(self) -> int:
        """What the images in the cache may hold (encoded plus decoded size), at most `cache_bytes`."""
        return self._cached_bytes

    def put(self, data: bytes, where: str = "upload") -> tuple[str, LayerImage]:
        """Check and store image bytes; returns (id, image). Bytes already stored are not decoded again."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            for image_id, image in self._cache.items():
                if image_id.startswith(digest):
                    self._cache.move_to_end(image_id)
                    return image_id, image
        image = LayerImage.from_bytes(data, where)  # refuses non-images and bombs before decoding
        return self.put_image(image, digest)

    def put_image(self, image: LayerImage, digest: str | None = None) -> tuple[str, LayerImage]:
        """Store an image already checked (a bundle's layer); returns (id, image)."""
        data = image.data
        image_id = f"{digest or hashlib.sha256(data).hexdigest()}{image.ext}"
        path = self.root / image_id
        if not path.exists():
            write_atomic(path, data)
        image.source_name = image_id
        self._remember(image_id, image)
        return image_id, image

    def path(self, image_id: str) -> Path:
        if not IMAGE_ID.fullmatch(image_id):
            raise CanvasError(f"image {image_id[:80]!r}: not an image id of this server")
        return self.root / image_id

    def get(self, image_id: str, where: str = "image") -> LayerImage:
        """The image of an id (decoded when its pixels are first used); a clear error when it is unknown."""
        with self._lock:
            image = self._cache.get(image_id)
            if image is not None:
                self._cache.move_to_end(image_id)
                return image
        path = self.path(image_id)
        if not path.is_file():
            raise CanvasError(f"{where}: unknown image {image_id!r} (upload it to /api/images first)")
        image = LayerImage.from_bytes(path.read_bytes(), where, source_name=image_id, lazy=True)
        self._remember(image_id, image)
        return image

    def _remember(self, image_id: str, image: LayerImage) -> None:
        cost = image.nbytes
        with self._lock:
            old = self._cache.pop(image_id, None)
            if old is not None:
                self._cached_bytes -= old.nbytes
            if cost > self.cache_bytes:
                return  # too big to keep: the caller's reference is the only one
            self._cache[image_id] = image
            self._cached_bytes += cost
            while self._cached_bytes > self.cache_bytes:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= dropped.nbytes
