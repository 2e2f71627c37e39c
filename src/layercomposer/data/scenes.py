"""The training scene format (docs/DESIGN.md section 4): several images of the same subjects, segmented into layers.

```
scenes/<scene_id>/scene.json
{"subjects": ["s0", "s1"],
 "images": [{"file": "img0.png", "prompt": "...",
             "layers": {"s0": "layers/img0/s0.png", "s1": "layers/img0/s1.png",
                        "background": "layers/img0/background.png"}}, ...]}
```

Layers are full-frame RGBA images (the size of their picture), the subject where it stands, unoccluded.
Optional per-image `order` (back to front, `background` first) gives the z-order of the picture; without
it the subjects' order in `layers` is used. Other keys are kept in `extra` and otherwise ignored, so the
sprites world, the photo scene builder and hand-made data all load through this one reader.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import LayerComposerError, read_json_file
from ..imageio import decode_image

BACKGROUND = "background"


class SceneError(LayerComposerError):
    """A scene directory does not follow the format."""


@dataclass(frozen=True)
class SceneImage:
    """One picture of a scene, its prompt and its layers (paths resolved, pixels loaded on demand)."""

    scene: str
    index: int
    file: Path
    prompt: str
    layers: dict[str, Path]
    """subject id (or "background") -> full-frame RGBA layer file."""
    order: tuple[str, ...]
    """Back-to-front z-order of the picture (background first when present)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    size: int | None = None
    """Train at this square size: pictures and layers are resized to cover it and centre-cropped alike."""

    @property
    def subjects(self) -> list[str]:
        """Subjects present in this picture, back to front."""
        return [name for name in self.order if name != BACKGROUND]

    @property
    def has_background(self) -> bool:
        return BACKGROUND in self.layers

    def picture(self) -> Image.Image:
        """The picture as RGB."""
        return cover_square(load_rgba(self.file), self.size).convert("RGB")

    def layer(self, name: str) -> Image.Image:
        """A full-frame RGBA layer (the same pixel grid as the picture)."""
        return cover_square(load_rgba(self.layers[name]), self.size)


@dataclass(frozen=True)
class Scene:
    """A scene: its id, its subjects and its pictures."""

    id: str
    root: Path
    subjects: tuple[str, ...]
    images: tuple[SceneImage, ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def images_with(self, subject: str) -> list[SceneImage]:
        return [im for im in self.images if subject in im.layers]


def cover_square(image: Image.Image, size: int | None) -> Image.Image:
    """Resize to cover a size x size square and centre-crop (premultiplied, so edges do not fringe)."""
    if size is None or image.size == (size, size):
        return image
    w, h = image.size
    scale = max(size / w, size / h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    resized = image.convert("RGBa").resize((rw, rh), Image.Resampling.LANCZOS).convert("RGBA")
    left, top = (rw - size) // 2, (rh - size) // 2
    return resized.crop((left, top, left + size, top + size))


def load_rgba(path: Path) -> Image.Image:
    """Decode a scene image file with the project's limits (RGBA)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SceneError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(path))


def load_scene(root: str | Path, size: int | None = None) -> Scene:
    """Read and check one `<scene_id>/scene.json` (files must exist; pixels are not decoded here)."""
    root = Path(root)
    path = root / "scene.json"
    where = str(path)
    doc = read_json_file(path, SceneError)
    if not isinstance(doc, dict):
        raise SceneError(f"{where}: the top level must be an object")
    subjects = doc.get("subjects")
    if not isinstance(subjects, list) or not all(isinstance(s, str) and s for s in subjects):
        raise SceneError(f"{where}: subjects: must be a list of non-empty strings")
    if BACKGROUND in subjects or len(set(subjects)) != len(subjects):
        raise SceneError(f"{where}: subjects: must be unique and not named {BACKGROUND!r}")
    raw_images = doc.get("images")
    if not isinstance(raw_images, list) or not raw_images:
        raise SceneError(f"{where}: images: must be a non-empty list")
    images = []
    for i, raw in enumerate(raw_images):
        at = f"{where}: images[{i}]"
        if not isinstance(raw, dict):
            raise SceneError(f"{at}: must be an object")
        file = _member(root, raw.get("file"), f"{at}.file")
        prompt = raw.get("prompt", "")
        if not isinstance(prompt, str):
            raise SceneError(f"{at}.prompt: must be a string")
        raw_layers = raw.get("layers")
        if not isinstance(raw_layers, dict) or not raw_layers:
            raise SceneError(f"{at}.layers: must be a non-empty object")
        layers = {}
        for name, ref in raw_layers.items():
            if name != BACKGROUND and name not in subjects:
                raise SceneError(f"{at}.layers: {name!r} is not one of the scene's subjects")
            layers[name] = _member(root, ref, f"{at}.layers.{name}")
        order = raw.get("order")
        if order is None:
            order = ([BACKGROUND] if BACKGROUND in layers else []) + [n for n in layers if n != BACKGROUND]
        if not isinstance(order, list) or sorted(order) != sorted(layers):
            raise SceneError(f"{at}.order: must list exactly the image's layers")
        if BACKGROUND in order and order[0] != BACKGROUND:
            raise SceneError(f"{at}.order: the background must come first")
        extra = {k: v for k, v in raw.items() if k not in ("file", "prompt", "layers", "order")}
        images.append(SceneImage(root.name, i, file, prompt, layers, tuple(order), extra, size))
    extra = {k: v for k, v in doc.items() if k not in ("subjects", "images")}
    return Scene(root.name, root, tuple(subjects), tuple(images), extra)


def _member(root: Path, ref: Any, where: str) -> Path:
    if not isinstance(ref, str) or not ref:
        raise SceneError(f"{where}: must be a relative path")
    norm = posixpath.normpath(ref)
    if norm.startswith("../") or norm == ".." or posixpath.isabs(norm) or "\\" in ref:
        raise SceneError(f"{where}: {ref!r} leaves the scene folder")
    path = root / norm
    if not path.is_file():
        raise SceneError(f"{where}: {ref!r} not found")
    return path


@dataclass
class SceneSet:
    """Every scene under a folder (one sub-folder per scene), sorted by id for a stable order."""

    root: Path
    scenes: list[Scene]

    @classmethod
    def load(cls, root: str | Path, size: int | None = None) -> SceneSet:
        """Load every scene; `size` makes every picture and layer a size x size square (cover + crop)."""
        root = Path(root)
        if not root.is_dir():
            raise SceneError(f"{root}: not a folder of scenes")
        if size is not None and (size % 16 or not 64 <= size <= 4096):
            raise SceneError(f"resolution {size}: must be a multiple of 16 in 64..4096")
        scenes = [load_scene(d, size) for d in sorted(root.iterdir()) if (d / "scene.json").is_file()]
        if not scenes:
            raise SceneError(f"{root}: no <scene>/scene.json found")
        return cls(root, scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    @cached_property
    def image_count(self) -> int:
        return sum(len(s.images) for s in self.scenes)
