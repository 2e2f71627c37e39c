"""`python -m layercomposer` runs the CLI."""

from .cli import console

console()
