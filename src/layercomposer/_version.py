"""The package version, in a leaf module: what records it (pipeline folders, the server, the CLI) imports it
from here, never from the package `__init__` that lazily exports those modules."""

__version__ = "0.1.0"
