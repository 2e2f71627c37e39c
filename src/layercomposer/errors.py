"""User-facing errors: one line, naming the file and the field, no traceback at the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class LayerComposerError(Exception):
    """An error caused by the user's input or environment; its message is one line meant for people."""

    def __init__(self, message: str) -> None:
        # Collapse anything multi-line (e.g. a wrapped library message) so the CLI prints exactly one line.
        super().__init__(" ".join(str(message).split()))


class CanvasError(LayerComposerError):
    """A canvas file, bundle or layer image is malformed or breaks a limit of docs/DESIGN.md section 2."""


class ModelError(LayerComposerError):
    """A model name or directory cannot be resolved or loaded."""


def read_json_file(path: Path, error: type[LayerComposerError] = LayerComposerError) -> Any:
    """The JSON document in `path`, or `error` with one line: the file is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
