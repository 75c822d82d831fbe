"""Datasets of users who each hold photos of one person: a registry keyed by spec prefix."""

from __future__ import annotations

from typing import Callable

from fl_sim.core.data.base import FaceDataset, UserData, UserRecord, choose_users, select_users
from fl_sim.core.errors import DataError
from fl_sim.core.plugins import Parts

__all__ = ["FaceDataset", "UserData", "UserRecord", "open_dataset", "register_dataset", "select_users", "choose_users",
           "DATASETS", "DatasetFactory"]

DatasetFactory = Callable[[str | None], FaceDataset]  # the argument after the colon, or None

# Each help text starts with the spec's form ("folder:PATH"), then " — " and what the data is.
DATASETS: Parts[DatasetFactory] = Parts("dataset", "data.dataset")


def register_dataset(name: str, help: str = "") -> Callable[[DatasetFactory], DatasetFactory]:
    """Register a dataset factory under ``name`` (the part of a spec before the colon)."""
    return DATASETS.register(name, help)


def _needs_arg(kind: str, arg: str | None) -> str:
    if not arg:
        raise DataError(f"dataset spec '{kind}:' needs a path, e.g. {kind}:/data/{kind}")
    return arg


@register_dataset("synthfaces", "synthfaces[:SPLIT] — embedded generated faces, gender/age labels (users | prior)")
def _synthfaces(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.synthfaces import open_synthfaces

    return open_synthfaces(arg or "users")


@register_dataset("synthshift", "synthshift — embedded identities farther from the mean face (users only)")
def _synthshift(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.synthshift import open_synthshift

    if arg:
        raise DataError(f"synthshift has no splits (got 'synthshift:{arg}'): it holds users only")
    return open_synthshift()


@register_dataset("synthfaces-split", "synthfaces-split:K — each embedded identity split into K users of disjoint "
                                     "photos (100·K users; for cost benches only: users of one identity look alike)")
def _split(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.split import open_split

    if not arg or not arg.isdigit():
        raise DataError(f"dataset spec 'synthfaces-split:{arg or ''}' needs K, a whole number, e.g. synthfaces-split:10")
    return open_split(int(arg))


@register_dataset("folder", "folder:PATH — PATH/<user>/<images>, optional PATH/attributes.csv")
def _folder(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.folders import FolderFaces

    return FolderFaces(_needs_arg("folder", arg))


@register_dataset("lfw", "lfw:PATH — Labeled Faces in the Wild, one folder per person")
def _lfw(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.folders import LfwFaces

    return LfwFaces(_needs_arg("lfw", arg))


@register_dataset("celeba", "celeba:PATH — CelebA with identity_CelebA.txt and list_attr_celeba.txt")
def _celeba(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.folders import CelebAFaces

    return CelebAFaces(_needs_arg("celeba", arg))


@register_dataset("hf", "hf:NAME[:ID_COLUMN] — a Hugging Face dataset with an identity column")
def _hf(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.hf import load_hf

    name, _, id_col = _needs_arg("hf", arg).partition(":")
    return load_hf(name, id_col or "identity")


@register_dataset("mnist", "mnist[:test] — MNIST digits, one user per class (no faces)")
def _mnist(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.mnist import open_mnist

    return open_mnist(arg)


@register_dataset("fashion-mnist", "fashion-mnist[:test] — Fashion-MNIST, one user per class (no faces)")
def _fashion_mnist(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.mnist import open_fashion_mnist

    return open_fashion_mnist(arg)


def open_dataset(spec: str) -> FaceDataset:
    """Open a dataset from its spec, e.g. ``synthfaces``, ``synthshift``, ``folder:/data/me``, ``celeba:/data/celeba``."""
    kind, _, arg = spec.partition(":")
    if kind not in DATASETS:
        raise DataError(f"unknown dataset {kind!r} in spec {spec!r} (known: {', '.join(DATASETS.names())})")
    return DATASETS.get(kind)(arg or None)
