"""The shape of one image, (C, H, W), and how arrays and frames lay it out.

A one-channel image travels as (H, W) — the layout of the protocol's first version and of every
gray data set — and a colour one as (C, H, W); `dims` gives that layout, `image_of` reads it back.
The paper's Fashion-MNIST images, (1, 28, 28), are the default wherever a model file or a
configuration does not say. Pure Python: the torch-free worker uses it too.
"""

from __future__ import annotations

from typing import Any, Sequence

PAPER_IMAGE = (1, 28, 28)  # Fashion-MNIST, the paper's data: the default shape
PAPER_CLASSES = 10


def dims(image: Sequence[int]) -> tuple[int, ...]:
    """(C, H, W) -> the per-image array shape: (H, W) for one channel, (C, H, W) otherwise."""
    c, h, w = (int(d) for d in image)
    return (h, w) if c == 1 else (c, h, w)


def image_of(shape: Sequence[int]) -> tuple[int, int, int]:
    """A per-image array shape, (H, W) or (C, H, W), -> (C, H, W)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    raise ValueError(f"an image is (H, W) or (C, H, W), got shape {shape}")


def pixels(image: Sequence[int]) -> int:
    c, h, w = (int(d) for d in image)
    return c * h * w


def model_image(info: dict[str, Any]) -> tuple[int, int, int]:
    """The (C, H, W) a model file's networks take: its `image`, or the paper's for files that predate it."""
    image = info.get("image", PAPER_IMAGE)
    if (not isinstance(image, (list, tuple)) or len(image) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 4096 for d in image)
            or image[0] not in (1, 3)):
        raise ValueError(f"a model's image must be [C, H, W] with C 1 or 3, got {image!r}")
    return tuple(image)  # type: ignore[return-value]


def model_classes(info: dict[str, Any]) -> int:
    n = info.get("classes", PAPER_CLASSES)
    n = len(n) if isinstance(n, (list, tuple)) else n
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= 4096:
        raise ValueError(f"a model's classes must be 2..4096 names or a count, got {info.get('classes')!r}")
    return n
