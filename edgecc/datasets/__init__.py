"""Image data sets by name: where the images come from, their shape (C, H, W), labels and class names.

`load(source, split)` is the one place a source string is read (datasets/sources.py); every command
that reads images goes through it. An `ImageSet` carries its shape, so what consumes it (a model,
a worker, the HTTP front end) can say exactly what it expected when the shapes disagree.
"""

from .base import ImageSet
from .sources import KINDS, load, load_arrays, parse_source

__all__ = ["ImageSet", "KINDS", "load", "load_arrays", "parse_source"]
