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


def parse_json(text: str, where: str, error: type[LayerComposerError] = LayerComposerError) -> Any:
    """The JSON document in `text`, or `error` with one line naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise error(f"{where}: not valid JSON ({exc})") from None


def read_json_file(path: Path, error: type[LayerComposerError] = LayerComposerError) -> Any:
    """The JSON document in `path`, or `error` with one line: the file is missing, unreadable or not JSON."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read ({exc})") from None
    return parse_json(text, str(path), error)
