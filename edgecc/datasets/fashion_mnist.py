"""Fashion-MNIST, the default source: the Debian package's IDX files, or the sample shipped in the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import data


def load(location: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    images, labels = data.load_split(split, location)
    return images[:, None], labels, data.CLASSES


def load_sample_set(location: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The shipped sample, whatever the split: it is all there is without the dataset installed."""
    images, labels = data.load_sample()
    return images[:, None], labels, data.CLASSES
