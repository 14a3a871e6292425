"""Fashion-MNIST from IDX files (gzipped or not), and the small real sample shipped in the package.

Where the data is looked for, in order: an explicit `data_dir`, $EDGECC_DATA_DIR, then
/usr/share/datasets/fashion-mnist (Debian package `dataset-fashion-mnist`).
"""

from __future__ import annotations

import gzip
import os
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import DataError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "EDGECC_DATA_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SAMPLE = "fashion-mnist-sample.npz"
SIZES = {"train": 60_000, "test": 10_000}  # images per split of the real dataset
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
INSTALL_HINT = (
    "install it with `apt-get install -y dataset-fashion-mnist` (Debian, Ubuntu, Raspberry Pi OS), "
    f"or put the four IDX files in a folder and pass --data-dir or set ${ENV_VAR}"
)


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzip is detected by its magic number)."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{name}: corrupt gzip stream ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{name}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    if not 1 <= ndim <= 3:
        raise DataError(f"{name}: unexpected number of dimensions {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(f"{name}: truncated or padded: {len(raw)} bytes, header {shape} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def resolve_dir(data_dir: str | os.PathLike | None = None) -> Path:
    d = data_dir or os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(d)


def _read(folder: Path, stem: str) -> np.ndarray:
    for name in (stem + ".gz", stem):
        path = folder / name
        if path.is_file():
            return parse_idx(path.read_bytes(), str(path))
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {folder}: {INSTALL_HINT}")


def load_split(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28) uint8 and labels (n,) uint8 of the 'train' or 'test' split."""
    if split not in FILES:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    folder = resolve_dir(data_dir)
    images, labels = (_read(folder, stem) for stem in FILES[split])
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{folder}: images have shape {images.shape}, expected (n, 28, 28)")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{folder}: {labels.shape[0]} labels for {images.shape[0]} images")
    if labels.size and labels.max() > 9:
        raise DataError(f"{folder}: label {int(labels.max())} out of range 0..9")
    return images, labels


def load_sample() -> tuple[np.ndarray, np.ndarray]:
    """The real Fashion-MNIST test images shipped in the package (the first 1,000 of the test split)."""
    with resources.files("edgecc.assets").joinpath(SAMPLE).open("rb") as f:
        with np.load(f, allow_pickle=False) as z:
            return z["images"].copy(), z["labels"].copy()


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (the scheme's input scaling)."""
    return images.astype(np.float32) / 255.0
