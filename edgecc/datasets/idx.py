"""MNIST-format IDX files in a folder (MNIST, Fashion-MNIST, KMNIST, EMNIST ...), gzipped or not.

A split's files are found by name: the images file has 'images' or 'idx3' in its name, the labels
file 'labels' or 'idx1'; the train split's names contain 'train', the test split's 't10k' or 'test'.
Class names come from `classes.txt` (one per line) when the folder has one, else the label numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import parse_idx
from ..errors import DataError

SPLIT_WORDS = {"train": ("train",), "test": ("t10k", "test")}


def _find(folder: Path, split: str, what: tuple[str, ...]) -> Path:
    hits = sorted(p for p in folder.iterdir() if p.is_file()
                  and any(w in p.name.lower() for w in SPLIT_WORDS[split])
                  and any(w in p.name.lower() for w in what))
    if len(hits) != 1:
        listing = ", ".join(sorted(p.name for p in folder.iterdir())[:20]) or "nothing"
        raise DataError(f"idx:{folder}: expected one {split} {what[0]} file (a name with "
                        f"{' or '.join(repr(w) for w in SPLIT_WORDS[split])} and {what[0]!r}), found "
                        f"{', '.join(p.name for p in hits) if hits else 'none'}; the folder holds {listing}")
    return hits[0]


def class_names(folder: Path, n_labels: int, file: str = "classes.txt") -> tuple[str, ...]:
    path = folder / file
    if path.is_file():
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if len(names) < n_labels:
            raise DataError(f"{path}: {len(names)} class names for labels up to {n_labels - 1}")
        return names
    return tuple(str(i) for i in range(n_labels))


def load(location: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if not location.is_dir():
        raise DataError(f"idx:{location}: not a folder")
    images = parse_idx(_find(location, split, ("images", "idx3")).read_bytes(), f"idx:{location}")
    labels = parse_idx(_find(location, split, ("labels", "idx1")).read_bytes(), f"idx:{location}")
    if images.ndim != 3:
        raise DataError(f"idx:{location}: the {split} images file has shape {images.shape}, expected (n, H, W)")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"idx:{location}: {labels.shape[0] if labels.ndim == 1 else labels.shape} labels for "
                        f"{images.shape[0]} {split} images")
    n_labels = int(labels.max()) + 1 if labels.size else 1
    return images[:, None], labels, class_names(location, n_labels)
