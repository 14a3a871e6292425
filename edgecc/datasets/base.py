"""`ImageSet`: uint8 images (n, C, H, W), integer labels (n,), and the names of the classes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError

MAX_SIDE = 4096  # pixels per side; larger images are refused rather than allocated


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (n, C, H, W) uint8, C in (1, 3)
    labels: np.ndarray  # (n,) int64, each < len(classes)
    classes: tuple[str, ...]
    source: str  # the source string it was read from, for messages

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"{self.source}: images must be uint8 (n, C, H, W) with C = 1 or 3, got {x.dtype} {x.shape}")
        if not (1 <= x.shape[2] <= MAX_SIDE and 1 <= x.shape[3] <= MAX_SIDE):
            raise DataError(f"{self.source}: image size {x.shape[2]}×{x.shape[3]} outside 1..{MAX_SIDE} per side")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"{self.source}: {y.shape} labels for {x.shape[0]} images")
        if not self.classes:
            raise DataError(f"{self.source}: no classes")
        if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
            raise DataError(f"{self.source}: label {int(y.max() if y.max() >= len(self.classes) else y.min())} "
                            f"outside 0..{len(self.classes) - 1} ({len(self.classes)} classes)")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, n: int | None) -> "ImageSet":
        """The first n images (all when n is None)."""
        if n is None:
            return self
        return ImageSet(self.images[:n], self.labels[:n], self.classes, self.source)

    def expect_shape(self, shape: tuple[int, ...], who: str) -> None:
        """DataError naming both shapes, and the source option that would convert, when they differ."""
        shape = tuple(int(d) for d in shape)
        if self.shape != shape:
            c, h, w = shape
            raise DataError(f"{who} takes {c}×{h}×{w} images (C×H×W); {self.source} gives "
                            f"{'×'.join(map(str, self.shape))}: convert it with "
                            f"'{self.source.split('?')[0]}?size={h}x{w}&channels={c}'")
