"""layercomposer: interactive multi-subject personalized image generation on a layered canvas."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .canvas import Canvas, Layer, LayerImage
    from .pipeline import LayerComposerPipeline

# Lazy exports: `import layercomposer` must not import torch (the `tokens` and `flatten` commands don't need it).
_EXPORTS = {
    "Canvas": "canvas",
    "Layer": "canvas",
    "LayerImage": "canvas",
    "LayerComposerPipeline": "pipeline",
}

__all__ = ["Canvas", "Layer", "LayerComposerPipeline", "LayerImage", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'layercomposer' has no attribute {name!r}")
