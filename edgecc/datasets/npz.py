"""Images and labels in one .npz (read with allow_pickle=False: object arrays are refused).

Arrays: `x` (or `images`) uint8 of shape (n, H, W) (gray), (n, C, H, W) or (n, H, W, C) with C in
1 or 3 (a layout is read as channels-first when its second axis is 1 or 3 and its last is not);
`y` (or `labels`) integers (n,); optional `classes`, an array of strings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError


def _pick(z, names: tuple[str, ...], path: Path):
    for n in names:
        if n in z.files:
            return z[n]
    raise DataError(f"npz:{path}: no array {' or '.join(repr(n) for n in names)} (it has {', '.join(z.files) or 'none'})")


def load(location: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if not location.is_file():
        raise DataError(f"npz:{location}: no such file")
    try:
        with np.load(location, allow_pickle=False) as z:
            x, y = _pick(z, ("x", "images"), location), _pick(z, ("y", "labels"), location)
            classes = z["classes"] if "classes" in z.files else None
    except (ValueError, OSError) as e:
        raise DataError(f"npz:{location}: not a readable .npz without pickled objects ({e})") from None
    if x.dtype != np.uint8:
        raise DataError(f"npz:{location}: images must be uint8 pixels 0..255, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
        pass
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"npz:{location}: images of shape {x.shape}; expected (n,H,W), (n,C,H,W) or (n,H,W,C) with C 1 or 3")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
        raise DataError(f"npz:{location}: labels {y.dtype} {y.shape} do not match {x.shape[0]} images (integers, shape (n,))")
    if y.size and y.min() < 0:
        raise DataError(f"npz:{location}: negative label {int(y.min())}")
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US":
            raise DataError(f"npz:{location}: classes must be a 1-D array of strings, got {classes.dtype} {classes.shape}")
        names = tuple(str(c) for c in classes)
    else:
        names = tuple(str(i) for i in range(int(y.max()) + 1 if y.size else 1))
    return np.ascontiguousarray(x), y.astype(np.int64), names
