"""A folder of images, one sub-folder per class (`DIR/cat/001.png`, `DIR/dog/002.jpg`), read with Pillow.

When DIR has `train/` and `test/` sub-folders, each split reads its own; otherwise DIR is the only
split and serves both. Classes are the sub-folders' names in sorted order. Images keep their size
unless `size=HxW` is given (then they are resized as they are read, so a folder of large photos
never sits in memory at full size); images of different sizes need it. Gray images stay one
channel unless `channels=3` or the folder also holds colour images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_IMAGES = 2_000_000


def _split_root(location: Path, split: str) -> Path:
    if (location / "train").is_dir() and (location / "test").is_dir():
        return location / split
    return location


def load(location: Path, split: str, size: tuple[int, int] | None = None,
         channels: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError(f"folder:{location}: reading image files needs Pillow (pip install Pillow)") from None
    if not location.is_dir():
        raise DataError(f"folder:{location}: not a folder")
    root = _split_root(location, split)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"folder:{root}: no class sub-folders (expected {root}/CLASS/IMAGE.png)")
    files = [(c, p) for c, name in enumerate(classes) for p in sorted((root / name).iterdir())
             if p.is_file() and p.suffix.lower() in SUFFIXES]
    if not files:
        raise DataError(f"folder:{root}: no PNG or JPEG files in its class sub-folders")
    if len(files) > MAX_IMAGES:
        raise DataError(f"folder:{root}: {len(files)} images, more than {MAX_IMAGES}")
    empty = [name for c, name in enumerate(classes) if not any(fc == c for fc, _ in files)]
    if empty:
        raise DataError(f"folder:{root}: class folder(s) without images: {', '.join(empty)}")
    headers = []  # (mode, (width, height)) from each file's header: nothing is decoded yet
    for _, p in files:
        try:
            with Image.open(p) as im:
                headers.append((im.mode, im.size))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"folder:{p}: not a readable PNG or JPEG ({e})") from None
    if channels is None:
        channels = 1 if all(mode in ("L", "1", "I;16", "I") for mode, _ in headers) else 3
    sizes = {wh for _, wh in headers}
    if size is None and len(sizes) > 1:
        shown = ", ".join(f"{w}×{h}" for w, h in sorted(sizes)[:5])
        raise DataError(f"folder:{root}: images of {len(sizes)} sizes ({shown} ...): give one with ?size=HxW")
    h, w = size if size is not None else next(iter(sizes))[::-1]
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), channels, h, w), np.uint8)
    for i, (_, p) in enumerate(files):  # decoded one at a time, straight to the stated size
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(im)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"folder:{p}: not a readable PNG or JPEG ({e})") from None
        out[i] = a[None] if channels == 1 else a.transpose(2, 0, 1)
    labels = np.array([c for c, _ in files], np.int64)
    return out, labels, tuple(classes)
