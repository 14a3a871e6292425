"""CIFAR-10 and CIFAR-100 from their *binary* distributions: fixed-size records of label bytes then
3,072 pixel bytes (1,024 red, 1,024 green, 1,024 blue, row-major 32×32). The pickled "python
version" is never read: unpickling a downloaded file runs whatever code it carries."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

PIXELS = 3 * 32 * 32
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _folder(location: Path, inner: str, marker: str) -> Path:
    """The folder holding the .bin files: LOCATION itself, or the archive's folder inside it."""
    for d in (location, location / inner):
        if (d / marker).is_file() or any(d.glob("*.bin")):
            return d
    raise DataError(f"{location}: no CIFAR binary files ({marker}, ...) here or in {inner}/; "
                    "download the binary version (cifar-*-binary.tar.gz), not the python one")


def _records(paths: list[Path], label_bytes: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    size = label_bytes + PIXELS
    chunks = []
    for p in paths:
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size == 0 or raw.size % size:
            raise DataError(f"{source}: {p.name} holds {raw.size} bytes, not a whole number of {size}-byte records")
        chunks.append(raw.reshape(-1, size))
    rec = np.concatenate(chunks)
    return rec[:, label_bytes:].reshape(-1, 3, 32, 32), rec[:, :label_bytes]


def _names(path: Path, default: tuple[str, ...]) -> tuple[str, ...]:
    if path.is_file():
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if len(names) >= len(default):
            return names
    return default


def load_cifar10(location: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    d = _folder(location, "cifar-10-batches-bin", "test_batch.bin")
    paths = sorted(d.glob("data_batch_*.bin")) if split == "train" else [d / "test_batch.bin"]
    if not paths or not all(p.is_file() for p in paths):
        raise DataError(f"cifar10:{location}: no {split} files (data_batch_1..5.bin for train, test_batch.bin for test)")
    images, labels = _records(paths, 1, f"cifar10:{location}")
    labels = labels[:, 0]
    if labels.max() >= 10:
        raise DataError(f"cifar10:{location}: label {int(labels.max())} out of range 0..9: is this CIFAR-100?")
    return images, labels, _names(d / "batches.meta.txt", CIFAR10_CLASSES)


def load_cifar100(location: Path, split: str, labels: str = "fine") -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if labels not in ("fine", "coarse"):
        raise DataError(f"cifar100:{location}: labels must be fine or coarse, got {labels!r}")
    d = _folder(location, "cifar-100-binary", "test.bin")
    path = d / f"{split}.bin"
    if not path.is_file():
        raise DataError(f"cifar100:{location}: {path.name} not found")
    images, both = _records([path], 2, f"cifar100:{location}")
    y = both[:, 0] if labels == "coarse" else both[:, 1]
    n = 20 if labels == "coarse" else 100
    if y.max() >= n:
        raise DataError(f"cifar100:{location}: {labels} label {int(y.max())} out of range 0..{n - 1}")
    return images, y, _names(d / f"{labels}_label_names.txt", tuple(str(i) for i in range(n)))
