"""Worker bundles: what a worker needs for its placement, as plain named arrays (numpy only).

A bundle is a safetensors file whose metadata holds the scheme, the kind of model, and a SHA-256
digest over the arrays (names, dtypes, shapes, bytes). Workers verify the digest on load, and the
master uses it to skip resending arrays a worker already holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from .errors import ModelFileError
from .modelfile import atomic_write

FORMAT = "edgecc-bundle"
VERSION = 1


def digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_bundle(path: str | os.PathLike, info: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    from safetensors.numpy import save

    d = digest(arrays)
    meta = {"format": FORMAT, "version": str(VERSION), "info": json.dumps(info, sort_keys=True), "sha256": d}
    atomic_write(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=meta))
    return d


def load_bundle(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """(info, arrays, digest); raises ModelFileError if the file is not a bundle or fails its checksum."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        arrays = load_file(str(path))
    except FileNotFoundError:
        raise ModelFileError(f"bundle not found: {path}") from None
    except Exception as e:
        raise ModelFileError(f"{path}: not a valid bundle ({e})") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an edgecc worker bundle (format {meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise ModelFileError(f"{path}: bundle version {meta.get('version')!r} is not supported (this edgecc reads {VERSION})")
    actual = digest(arrays)
    if actual != meta.get("sha256"):
        raise ModelFileError(f"{path}: checksum mismatch (file says {meta.get('sha256')}, contents hash to {actual}); "
                             "the bundle was modified or corrupted")
    try:
        info = json.loads(meta["info"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: corrupt bundle metadata ({e})") from None
    return info, arrays, actual
