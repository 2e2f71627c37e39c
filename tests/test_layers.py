"""Import arrows run down (issue 32 item 5): a lower module, imported alone in a fresh interpreter, loads none of
the higher ones, and no module takes a name from the package `__init__` (which lazily exports the pipeline)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "layercomposer"

ABOVE_MODELS = ["layercomposer.pipeline", "layercomposer.world", "layercomposer.training", "layercomposer.eval",
                "layercomposer.photo", "layercomposer.cli", "layercomposer.server"]
ABOVE_PIPELINE = ABOVE_MODELS[1:]

# module -> packages or modules that importing it must not load
FORBIDDEN = {
    "layercomposer.canvas": ["layercomposer.conditioning", "layercomposer.models", *ABOVE_MODELS],
    "layercomposer.conditioning": ["layercomposer.models", *ABOVE_MODELS],
    "layercomposer.models.registry": ABOVE_MODELS,
    "layercomposer.models.cost": ABOVE_MODELS,
    "layercomposer.pipeline": ABOVE_PIPELINE,
    # Canvas sampling from scenes is a data concern: the world, the examples and the evaluation use it without
    # the trainer.
    "layercomposer.data.canvas_sampling": ["layercomposer.training", *ABOVE_PIPELINE],
    "layercomposer.world.examples": ["layercomposer.training", "layercomposer.eval", "layercomposer.cli"],
    "layercomposer.eval.sprites": ["layercomposer.training", "layercomposer.cli", "layercomposer.server"],
}

PROBE = "import importlib, json, sys; importlib.import_module(sys.argv[1]); print(json.dumps(sorted(sys.modules)))"


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_importing_a_module_loads_nothing_above_it(module):
    out = subprocess.run([sys.executable, "-c", PROBE, module], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    loaded = json.loads(out)
    assert module in loaded  # the probe imported what it says
    above = [m for m in loaded for f in FORBIDDEN[module] if m == f or m.startswith(f + ".")]
    assert not above, f"importing {module} loads {above}"


def test_no_module_imports_from_the_package_init():
    """`from . import __version__` in a top-level module (or `from .. import X` one level down, or
    `from layercomposer import X`) would make it depend on the package `__init__`; submodules are fine."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        depth = len(path.relative_to(SRC).parts)  # 1: a top-level module, 2: inside a sub-package
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            from_top = (node.module is None and node.level == depth) or (node.level == 0 and node.module ==
                                                                         "layercomposer")
            if not from_top:
                continue
            for alias in node.names:
                if not ((SRC / f"{alias.name}.py").is_file() or (SRC / alias.name / "__init__.py").is_file()):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} imports {alias.name}")
    assert not offenders


def test_demo_tokenizer_words_are_the_world_vocabulary_then_the_basic_words():
    """The registry no longer reads the world at import time; the demo's tokenizer keeps the same words in the
    same order (ids matter: the shipped weights use them)."""
    from layercomposer.models.registry import BASIC_VOCABULARY, DEMO_BASE, TINY_RANDOM
    from layercomposer.world import VOCABULARY

    words = DEMO_BASE.tokenizer_words()
    assert words[: len(VOCABULARY)] == tuple(VOCABULARY)
    assert set(words) == set(VOCABULARY) | set(BASIC_VOCABULARY) and len(words) == len(set(words))
    assert TINY_RANDOM.tokenizer_words() == BASIC_VOCABULARY


def test_the_package_version_is_one_value():
    import tomllib

    import layercomposer
    from layercomposer import _version

    assert layercomposer.__version__ is _version.__version__
    project = tomllib.loads((SRC.parent.parent / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"]["attr"] == "layercomposer._version.__version__"


# The layers, lowest first (DESIGN.md, "Where each part lives"): a module may import its own package and any
# lower rank, never a higher or an equal one. Every import counts, those inside functions too.
RANK = {
    "_version": 0, "errors": 0, "settings": 1, "imageio": 1, "flow": 1, "sampler": 2,
    "canvas": 2, "data": 3, "conditioning": 3, "world": 4,
    "models": 5, "modelcheck": 6,
    "pipeline": 7, "photo": 8, "refine": 8,
    "training": 9, "eval": 9,
    "server": 10, "cli": 11,  # `layercomposer serve` starts the server
    "__init__": 12, "__main__": 12,
}


def _imports(text: str, where: Path) -> list[tuple[str, int]]:
    """The top-level layercomposer modules that the source `text` of the module at `where` (under src/) imports,
    relatively or absolutely, at any depth, with their line numbers."""
    package = list(where.relative_to(SRC).with_suffix("").parts)[:-1]
    found = []
    for node in ast.walk(ast.parse(text, str(where))):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[1:] for a in node.names if a.name.startswith("layercomposer.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module is None or not (node.module + ".").startswith("layercomposer."):
                continue
            names = [node.module.split(".")[1:] or [a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1]
            names = [base + node.module.split(".")] if node.module else [[*base, a.name] for a in node.names]
        else:
            continue
        found += [(name[0], node.lineno) for name in names if name]
    return found


def test_every_import_runs_down_the_layers():
    wrong, unplaced = [], set()
    for path in sorted(SRC.rglob("*.py")):
        mine = path.relative_to(SRC).with_suffix("").parts[0]
        for theirs, line in _imports(path.read_text(), path):
            if mine == theirs:
                continue
            if mine not in RANK or theirs not in RANK:
                unplaced |= {m for m in (mine, theirs) if m not in RANK}
            elif RANK[theirs] >= RANK[mine]:
                wrong.append(f"{path.relative_to(SRC)}:{line}: {mine} imports {theirs}")
    assert not unplaced, f"give these modules a rank: {sorted(unplaced)}"
    assert not wrong


def test_the_layer_check_sees_a_wrong_arrow():
    """The check above reads relative, absolute and lazy imports: planted upward imports are caught."""
    text = ("import numpy\nfrom . import model\n\n\ndef f():\n    from ..pipeline import LayerComposerPipeline\n"
            "    import layercomposer.server.app\n    from layercomposer import cli\n")
    found = _imports(text, SRC / "canvas" / "files.py")
    assert found == [("canvas", 2), ("pipeline", 6), ("server", 7), ("cli", 8)]
