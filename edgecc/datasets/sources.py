"""Source strings → ImageSets. A source is `KIND[:LOCATION][?OPTION=VALUE&...]`:

    fashion-mnist[:DIR]  the Debian package dataset-fashion-mnist (the default), or its IDX files in DIR
    sample               the 1,000 real Fashion-MNIST test images shipped in the package (every split)
    idx:DIR              any MNIST-format IDX files (MNIST, KMNIST, EMNIST, ...): *train*/*t10k*|*test* images + labels
    cifar10:DIR          CIFAR-10's binary distribution (data_batch_*.bin, test_batch.bin; never the pickled one)
    cifar100:DIR         CIFAR-100's binary distribution (train.bin, test.bin); ?labels=coarse for its 20 superclasses
    folder:DIR           one sub-folder per class of PNG/JPEG files (DIR/train and DIR/test when it has them)
    npz:FILE             arrays x (n,H,W), (n,H,W,C) or (n,C,H,W) uint8 and y (n,); optional classes

Options, for any kind: `size=HxW` resizes every image (bilinear), `channels=1|3` converts gray and
colour; `folder:` images of different sizes need `size`. For compatibility, `test` and `train` name
Fashion-MNIST's splits and a path ending in .npz is `npz:PATH`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl

import numpy as np

from ..errors import DataError
from ..protocol.images import PAPER_IMAGE, dims
from . import cifar, convert, fashion_mnist, folder, idx, npz
from .base import ImageSet

SPLITS = ("train", "test")
OPTIONS = ("size", "channels", "labels")

# kind -> (loader(location, split, options) -> ImageSet, whether it needs a location)
KINDS: dict[str, tuple[Callable[..., ImageSet], bool]] = {
    "fashion-mnist": (fashion_mnist.load, False),
    "sample": (fashion_mnist.load_sample_set, False),
    "idx": (idx.load, True),
    "cifar10": (cifar.load_cifar10, True),
    "cifar100": (cifar.load_cifar100, True),
    "folder": (folder.load, True),
    "npz": (npz.load, True),
}


def parse_source(source: str) -> tuple[str, str, dict[str, str]]:
    """'cifar10:/data/c10?size=28x28' -> ('cifar10', '/data/c10', {'size': '28x28'})."""
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"empty image source; expected one of {', '.join(KINDS)}")
    text = source.strip()
    text, _, query = text.partition("?")
    try:
        options = dict(parse_qsl(query, strict_parsing=True)) if query else {}
    except ValueError:
        raise DataError(f"{source!r}: options must read ?name=value&name=value") from None
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DataError(f"{source!r}: unknown option(s) {', '.join(unknown)}; the options are {', '.join(OPTIONS)}")
    if text in SPLITS:  # the Fashion-MNIST split names of earlier command lines
        return "fashion-mnist", "", {**options, "split": text}
    kind, sep, location = text.partition(":")
    if kind not in KINDS:
        if text.endswith(".npz"):
            return "npz", text, options
        if len(kind) == 1 and sep and os.name == "nt":  # a Windows drive letter, not a kind
            return "npz", text, options
        raise DataError(f"unknown image source {source!r}: the kinds are {', '.join(KINDS)} "
                        f"(KIND:LOCATION, e.g. cifar10:/data/cifar-10-batches-bin)")
    needs_location = KINDS[kind][1]
    if needs_location and not location:
        raise DataError(f"{source!r}: {kind} needs a location: {kind}:PATH")
    if not needs_location and location and kind != "fashion-mnist":
        raise DataError(f"{source!r}: {kind} takes no location")
    return kind, location, options


def load(source: str = "fashion-mnist", split: str = "test", data_dir: str | os.PathLike | None = None) -> ImageSet:
    """The `split` ('train' or 'test') of `source`. `data_dir` is where `fashion-mnist` looks when the
    source names no folder (then $EDGECC_DATA_DIR, then the Debian package's folder)."""
    kind, location, options = parse_source(source)
    split = options.pop("split", split)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    loader, _ = KINDS[kind]
    if kind == "fashion-mnist":
        location = location or (str(data_dir) if data_dir else "")
    label_set = options.pop("labels", None)
    if label_set is not None and kind != "cifar100":
        raise DataError(f"{source!r}: labels= applies to cifar100 only")
    extra = {"labels": label_set} if label_set else {}
    size = convert.parse_size(options.pop("size"), source) if "size" in options else None
    channels = convert.parse_channels(options.pop("channels"), source) if "channels" in options else None
    if kind == "folder":
        extra.update(size=size, channels=channels)
    images, labels, classes = loader(Path(location) if location else None, split, **extra)
    images = convert.convert(images, size, channels, source)
    return ImageSet(images, labels.astype("int64", copy=False), tuple(classes), source)


def load_arrays(source: str, split: str = "test", data_dir: str | os.PathLike | None = None,
                image: tuple[int, int, int] = PAPER_IMAGE) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, *dims) uint8 and labels (n,) of `source`, checked against the (C, H, W) `image` their
    consumer takes (a DataError names both shapes and the option that converts); dims is (H, W) for
    one channel, (C, H, W) for colour (protocol/images.py)."""
    images = load(source, split, data_dir)
    images.expect_shape(image, "this model")
    return images.images.reshape(len(images), *dims(image)), images.labels
