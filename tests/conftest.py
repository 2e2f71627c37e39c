"""Shared fixtures: small images and canvases drawn by hand, and one tiny random pipeline per session."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from layercomposer.canvas import Canvas, Layer, LayerImage


def solid(w: int, h: int, rgba: tuple[int, int, int, int] = (255, 0, 0, 255)) -> Image.Image:
    """A w x h image of one colour."""
    return Image.new("RGBA", (w, h), rgba)


def layer(name: str, image: Image.Image, **kw) -> Layer:
    return Layer(name=name, image=LayerImage.from_pil(image, source_name=f"{name}.png"), **kw)


def alpha(image: Image.Image) -> np.ndarray:
    return np.asarray(image.getchannel("A"))


@pytest.fixture
def make_canvas():
    def make(width: int = 128, height: int = 128, layers: list[Layer] | None = None, prompt: str | None = None):
        return Canvas(width=width, height=height, layers=list(layers or []), prompt=prompt)

    return make


@pytest.fixture(scope="session")
def tiny_pipe():
    from layercomposer.pipeline import LayerComposerPipeline

    return LayerComposerPipeline.from_pretrained("tiny-random")


def cli(*args):
    """The command in this process (its stderr captured): the import cost of a fresh process is paid once."""
    from layercomposer.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stderr=err.getvalue())


def console(*args):
    """The command as users run it, `python -m layercomposer` in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "layercomposer", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), int)


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps one process-wide state (mixed precision included): start from none, and leave none, so
    trainings in this process with other settings (a bf16 one, say) do not meet."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
