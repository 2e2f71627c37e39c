"""Photo tools (issue 6): subject cut-out, face detection and identity, the scene builder, benchmark canvases.

Everything runs offline with models that ship inside the packages of the ``photo`` extra: MediaPipe 0.10.14's
selfie segmentation and face detection (.tflite files in its wheel), OpenCV (GrabCut, inpainting, watershed),
and optionally dlib's face-recognition network from ``face_recognition_models``. They are imported lazily, so the
rest of layercomposer works without the extra; a missing package is a one-line error naming the extra.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

from ..errors import LayerComposerError

INSTALL_HINT = 'pip install "layercomposer[photo]"'


class PhotoError(LayerComposerError):
    """A photo cannot be used (no person, bad box, ...) or a photo-tools package is missing."""


def require(module: str, package: str | None = None) -> ModuleType:
    """Import `module`, or fail with one line naming the package and the extra that installs it."""
    if module == "mediapipe":
        # Quiet the C++ logging of MediaPipe / TFLite (set before the first import only).
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        raise PhotoError(
            f"photo tools need {package or module} ({exc.msg if hasattr(exc, 'msg') else exc}); install them with: "
            f"{INSTALL_HINT}"
        ) from None
