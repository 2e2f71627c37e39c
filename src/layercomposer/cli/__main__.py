"""`python -m layercomposer.cli` runs the CLI."""

from . import console

console()
