"""Shape changes a source may ask for (`?size=HxW`, `?channels=1|3`), with Pillow, image by image."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def parse_size(text: str, source: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    try:
        size = (int(h), int(w)) if sep else (int(h), int(h))
    except ValueError:
        raise DataError(f"{source!r}: size must read HxW (e.g. size=32x32), got {text!r}") from None
    if not all(1 <= s <= 4096 for s in size):
        raise DataError(f"{source!r}: size {text!r} outside 1..4096 per side")
    return size


def parse_channels(text: str, source: str) -> int:
    if text not in ("1", "3"):
        raise DataError(f"{source!r}: channels must be 1 (gray) or 3 (RGB), got {text!r}")
    return int(text)


def convert(images: np.ndarray, size: tuple[int, int] | None, channels: int | None, source: str) -> np.ndarray:
    """(n, C, H, W) uint8 resized to `size` and converted to `channels` where asked and different."""
    n, c, h, w = images.shape
    if channels is not None and channels != c:
        if channels == 3:  # gray to RGB: the same value in every channel
            images = np.repeat(images, 3, axis=1)
        else:  # RGB to gray: ITU-R 601 luma, as Pillow's "L" conversion computes it
            luma = images[:, 0] * 299 + images[:, 1] * 587 + images[:, 2] * 114
            images = ((luma + 500) // 1000).astype(np.uint8)[:, None]
        c = channels
    if size is not None and size != (h, w):
        try:
            from PIL import Image
        except ImportError:
            raise DataError(f"{source!r}: resizing needs Pillow (pip install 'edgecc[serve]' or Pillow)") from None
        out = np.empty((n, c, *size), np.uint8)
        for i in range(n):
            for ch in range(c):  # per channel in mode "L": the same filter for gray and colour
                im = Image.fromarray(images[i, ch]).resize((size[1], size[0]), Image.Resampling.BILINEAR)
                out[i, ch] = np.asarray(im)
        images = out
    return np.ascontiguousarray(images)
