"""Image sources (edgecc/datasets): real Fashion-MNIST images written by the test in every on-disk
format a source reads — IDX (raw and gzipped), CIFAR-10/100 binary records, a folder of PNG/JPEG
files, .npz in each layout — read back exactly, and a clear error for every way a source can be wrong."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from edgecc.data import CLASSES, load_sample
from edgecc.datasets import ImageSet, load, parse_source
from edgecc.errors import DataError

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def real():
    """40 real Fashion-MNIST test images (the shipped sample) and an RGB 32×32 version of them."""
    x, y = load_sample()
    x, y = x[:40], y[:40]
    rgb = np.stack([np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BILINEAR))
                              for im in x])] * 3, axis=1)
    rgb[:, 0] = 255 - rgb[:, 0]  # channels that differ, so a channel-order mistake shows
    return x, y, rgb


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def test_source_strings_parse_with_their_options():
    assert parse_source("cifar10:/d/c10?size=28x28&channels=1") == ("cifar10", "/d/c10", {"size": "28x28", "channels": "1"})
    assert parse_source("test") == ("fashion-mnist", "", {"split": "test"})
    assert parse_source("/tmp/x.npz") == ("npz", "/tmp/x.npz", {})
    assert parse_source("fashion-mnist") == ("fashion-mnist", "", {})
    with pytest.raises(DataError, match="the kinds are fashion-mnist, sample, idx, cifar10, cifar100, folder, npz"):
        parse_source("imagenet:/data")
    with pytest.raises(DataError, match="cifar10 needs a location"):
        parse_source("cifar10")
    with pytest.raises(DataError, match="unknown option.*colour"):
        parse_source("sample?colour=3")
    with pytest.raises(DataError, match="size must read HxW"):
        load("sample?size=big")
    with pytest.raises(DataError, match="channels must be 1"):
        load("sample?channels=2")


def test_the_default_source_is_the_real_dataset_with_its_class_names():
    s = load()
    assert s.shape == (1, 28, 28) and len(s) == 10_000 and s.classes == CLASSES
    np.testing.assert_array_equal(s.images[:1000, 0], load_sample()[0])


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folders_of_any_mnist_family(tmp_path, real, gz):
    x, y, _ = real
    names = {"emnist-letters-train-images-idx3-ubyte": x[:30], "emnist-letters-train-labels-idx1-ubyte": y[:30],
             "emnist-letters-test-images-idx3-ubyte": x[30:], "emnist-letters-test-labels-idx1-ubyte": y[30:]}
    for name, a in names.items():
        (tmp_path / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(_idx(a)) if gz else _idx(a))
    train, test = load(f"idx:{tmp_path}", "train"), load(f"idx:{tmp_path}", "test")
    np.testing.assert_array_equal(train.images[:, 0], x[:30])
    np.testing.assert_array_equal(test.labels, y[30:])
    assert test.classes == tuple(str(i) for i in range(int(y[30:].max()) + 1))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    assert load(f"idx:{tmp_path}").classes == CLASSES


def test_idx_errors_name_what_was_expected(tmp_path, real):
    x, y, _ = real
    with pytest.raises(DataError, match="expected one test images file .* found none"):
        load(f"idx:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(x)[:-5])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(y))
    with pytest.raises(DataError, match="truncated"):
        load(f"idx:{tmp_path}")
    with pytest.raises(DataError, match="not a folder"):
        load(f"idx:{tmp_path}/missing")


def test_cifar10_binary_records_read_channel_by_channel(tmp_path, real):
    _, y, rgb = real
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    records = np.concatenate([y[:, None].astype(np.uint8), rgb.reshape(len(y), -1)], axis=1)
    for i in range(5):
        (folder / f"data_batch_{i + 1}.bin").write_bytes(records[i * 6:(i + 1) * 6].tobytes())
    (folder / "test_batch.bin").write_bytes(records[30:].tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    train, test = load(f"cifar10:{tmp_path}", "train"), load(f"cifar10:{folder}", "test")
    assert train.shape == (3, 32, 32) and len(train) == 30 and len(test) == 10
    np.testing.assert_array_equal(train.images, rgb[:30])
    np.testing.assert_array_equal(test.labels, y[30:])
    assert test.classes[3] == "class3"
    (folder / "test_batch.bin").write_bytes(records[30:].tobytes()[:-7])
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        load(f"cifar10:{folder}")
    with pytest.raises(DataError, match="binary version"):
        load(f"cifar10:{tmp_path / 'nothing'}")


def test_cifar100_fine_and_coarse_labels(tmp_path, real):
    _, y, rgb = real
    fine = (y.astype(np.uint8) * 7) % 100
    coarse = fine // 5
    records = np.concatenate([coarse[:, None], fine[:, None], rgb.reshape(len(y), -1)], axis=1).astype(np.uint8)
    (tmp_path / "train.bin").write_bytes(records[:30].tobytes())
    (tmp_path / "test.bin").write_bytes(records[30:].tobytes())
    s = load(f"cifar100:{tmp_path}")
    np.testing.assert_array_equal(s.labels, fine[30:])
    assert len(s.classes) == 100
    c = load(f"cifar100:{tmp_path}?labels=coarse", "train")
    np.testing.assert_array_equal(c.labels, coarse[:30])
    assert len(c.classes) == 20
    np.testing.assert_array_equal(c.images, rgb[:30])
    with pytest.raises(DataError, match="labels= applies to cifar100 only"):
        load("sample?labels=coarse")


def test_a_folder_of_pngs_and_jpegs_one_subfolder_per_class(tmp_path, real):
    x, y, rgb = real
    for split, rows in (("train", range(30)), ("test", range(30, 40))):
        for i in rows:
            d = tmp_path / split / CLASSES[y[i]].replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb[i].transpose(1, 2, 0)).save(d / f"{i:03d}.png")
    test = load(f"folder:{tmp_path}")
    assert test.shape == (3, 32, 32) and len(test) == 10
    order = sorted(range(30, 40), key=lambda i: (CLASSES[y[i]].replace("/", "-"), i))
    np.testing.assert_array_equal(test.images, rgb[order])  # PNG is lossless
    assert [test.classes[c] for c in test.labels] == [CLASSES[y[i]].replace("/", "-") for i in order]
    gray = load(f"folder:{tmp_path}?size=28x28&channels=1", "train")
    assert gray.shape == (1, 28, 28) and len(gray) == 30
    # JPEG, and gray images of two sizes: refused without a size, read with one
    flat = tmp_path / "flat"
    for i in range(6):
        d = flat / ("even" if i % 2 == 0 else "odd")
        d.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(x[i]) if i < 3 else Image.fromarray(x[i]).resize((40, 40))
        im.save(d / f"{i}.jpg", quality=95)
    with pytest.raises(DataError, match=r"images of 2 sizes .*\?size=HxW"):
        load(f"folder:{flat}")
    s = load(f"folder:{flat}?size=28x28")
    assert s.shape == (1, 28, 28) and s.classes == ("even", "odd") and len(s) == 6
    assert np.abs(s.images[0, 0].astype(int) - x[0].astype(int)).mean() < 4  # JPEG at quality 95: close
    (flat / "odd" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png: not a readable PNG or JPEG"):
        load(f"folder:{flat}?size=28x28")


@pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc", "legacy"])
def test_npz_in_every_layout(tmp_path, real, layout):
    x, y, rgb = real
    path = tmp_path / "set.npz"
    if layout == "nhw":
        np.savez(path, x=x, y=y)
    elif layout == "nchw":
        np.savez(path, x=rgb, y=y, classes=np.array(CLASSES))
    elif layout == "nhwc":
        np.savez(path, x=rgb.transpose(0, 2, 3, 1), y=y.astype(np.int32))
    else:
        np.savez(path, images=x, labels=y)
    s = load(f"npz:{path}") if layout != "legacy" else load(str(path))
    np.testing.assert_array_equal(s.images, x[:, None] if layout in ("nhw", "legacy") else rgb)
    np.testing.assert_array_equal(s.labels, y)
    if layout == "nchw":
        assert s.classes == CLASSES


def test_npz_errors(tmp_path, real):
    x, y, _ = real
    np.savez(tmp_path / "f.npz", x=x.astype(np.float32), y=y)
    with pytest.raises(DataError, match="must be uint8"):
        load(f"npz:{tmp_path / 'f.npz'}")
    np.savez(tmp_path / "o.npz", x=x, y=np.array([object()] * len(y), dtype=object))
    with pytest.raises(DataError, match="without pickled objects"):
        load(f"npz:{tmp_path / 'o.npz'}")
    np.savez(tmp_path / "n.npz", pixels=x)
    with pytest.raises(DataError, match="no array 'x' or 'images'"):
        load(f"npz:{tmp_path / 'n.npz'}")
    with pytest.raises(DataError, match="no such file"):
        load(f"npz:{tmp_path / 'absent.npz'}")


def test_conversions_match_pillow_and_shape_mismatches_say_how_to_convert():
    s = load("sample?size=32x32&channels=3")
    x, _ = load_sample()
    assert s.shape == (3, 32, 32)
    want = np.asarray(Image.fromarray(x[0]).resize((32, 32), Image.Resampling.BILINEAR))
    for c in range(3):
        np.testing.assert_array_equal(s.images[0, c], want)
    back = load("sample?channels=1&size=32x32")
    np.testing.assert_array_equal(back.images[:, 0], s.images[:, 0])
    with pytest.raises(DataError, match=r"takes 1×28×28 images .* gives 3×32×32: convert it with 'sample\?size=28x28&channels=1'"):
        s.expect_shape((1, 28, 28), "the shipped model")


def test_an_image_set_checks_itself():
    with pytest.raises(DataError, match="uint8"):
        ImageSet(np.zeros((2, 1, 4, 4), np.float32), np.zeros(2, np.int64), ("a",), "t")
    with pytest.raises(DataError, match="outside 0..1"):
        ImageSet(np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 2]), ("a", "b"), "t")
