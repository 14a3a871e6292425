import gzip
import shutil

import numpy as np
import pytest

from edgecc import data
from edgecc.datasets import load_arrays
from edgecc.errors import DataError


def idx_images(n: int) -> bytes:
    return bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(n * 784)


def idx_labels(labels: list[int]) -> bytes:
    return bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big") + bytes(labels)


def test_real_dataset_loads():
    x, y = data.load_split("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
    xt, yt = data.load_split("train")
    assert xt.shape == (60000, 28, 28) and np.bincount(yt).tolist() == [6000] * 10


def test_shipped_sample_is_the_start_of_the_real_test_set():
    xs, ys = data.load_sample()
    x, y = data.load_split("test")
    assert xs.shape == (1000, 28, 28)
    assert np.array_equal(xs, x[:1000]) and np.array_equal(ys, y[:1000])


def test_plain_and_gzipped_files(tmp_path):
    for name, payload in [("t10k-images-idx3-ubyte", idx_images(3)), ("t10k-labels-idx1-ubyte", idx_labels([1, 2, 3]))]:
        (tmp_path / name).write_bytes(payload)
    x, y = data.load_split("test", tmp_path)
    assert x.shape == (3, 28, 28) and y.tolist() == [1, 2, 3]
    gz = tmp_path / "gz"
    gz.mkdir()
    for f in tmp_path.glob("t10k-*"):
        (gz / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    x2, y2 = data.load_split("test", gz)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b[:-100], "truncated"),
    (lambda b: b + b"\x00", "truncated or padded"),
    (lambda b: b[:2], "too short"),
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "not an IDX file of unsigned bytes"),
    (lambda b: b"GARBAGE!" + b[8:], "not an IDX file"),
    (lambda b: b[:10], "truncated header"),
])
def test_garbled_image_files_are_rejected(tmp_path, mutate, match):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(mutate(idx_images(3)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels([1, 2, 3]))
    with pytest.raises(DataError, match=match):
        data.load_split("test", tmp_path)


def test_truncated_real_gzip_is_rejected(tmp_path):
    src = data.resolve_dir() / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(src.read_bytes()[:2000])
    shutil.copy(data.resolve_dir() / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(DataError, match="corrupt gzip"):
        data.load_split("test", tmp_path)


def test_label_count_and_range_checked(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_images(3))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels([1, 2]))
    with pytest.raises(DataError, match="2 labels for 3 images"):
        data.load_split("test", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels([1, 2, 12]))
    with pytest.raises(DataError, match="label 12 out of range"):
        data.load_split("test", tmp_path)


def test_missing_dataset_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        data.load_split("train")


def test_npz_image_source(tmp_path):
    x, y = data.load_sample()
    np.savez(tmp_path / "imgs.npz", images=x[:5], labels=y[:5])
    x2, y2 = load_arrays(str(tmp_path / "imgs.npz"))
    assert np.array_equal(x2, x[:5])
    np.savez(tmp_path / "bad.npz", images=x[:5, :20], labels=y[:5])
    with pytest.raises(DataError, match=r"takes 1×28×28 images .* gives 1×20×28"):
        load_arrays(str(tmp_path / "bad.npz"))
    with pytest.raises(DataError, match="unknown image source 'no-such-source'"):
        load_arrays("no-such-source")
