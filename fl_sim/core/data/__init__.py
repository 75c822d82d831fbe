"""Datasets of users who each hold photos of one person: a registry keyed by spec prefix."""

from __future__ import annotations

from typing import Callable

from fl_sim.core.data.base import FaceDataset, UserData, UserRecord, choose_users, select_users
from fl_sim.core.errors import DataError

__all__ = ["FaceDataset", "UserData", "UserRecord", "open_dataset", "register_dataset", "select_users", "choose_users", "DATASETS"]

# name -> factory(argument after the colon, or None)
DATASETS: dict[str, Callable[[str | None], FaceDataset]] = {}


def register_dataset(name: str) -> Callable[[Callable[[str | None], FaceDataset]], Callable[[str | None], FaceDataset]]:
    """Register a dataset factory under ``name`` (the part of a spec before the colon)."""

    def deco(fn: Callable[[str | None], FaceDataset]) -> Callable[[str | None], FaceDataset]:
        DATASETS[name] = fn
        return fn

    return deco


def _needs_arg(kind: str, arg: str | None) -> str:
    if not arg:
        raise DataError(f"dataset spec '{kind}:' needs a path, e.g. {kind}:/data/{kind}")
    return arg


@register_dataset("synthfaces")
def _synthfaces(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.synthfaces import open_synthfaces

    return open_synthfaces(arg or "users")


@register_dataset("synthshift")
def _synthshift(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.synthshift import open_synthshift

    if arg:
        raise DataError(f"synthshift has no splits (got 'synthshift:{arg}'): it holds users only")
    return open_synthshift()


@register_dataset("folder")
def _folder(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.folders import FolderFaces

    return FolderFaces(_needs_arg("folder", arg))


@register_dataset("lfw")
def _lfw(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.folders import LfwFaces

    return LfwFaces(_needs_arg("lfw", arg))


@register_dataset("celeba")
def _celeba(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.folders import CelebAFaces

    return CelebAFaces(_needs_arg("celeba", arg))


@register_dataset("hf")
def _hf(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.hf import load_hf

    name, _, id_col = _needs_arg("hf", arg).partition(":")
    return load_hf(name, id_col or "identity")


@register_dataset("mnist")
def _mnist(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.mnist import open_mnist

    return open_mnist(arg)


@register_dataset("fashion-mnist")
def _fashion_mnist(arg: str | None) -> FaceDataset:
    from fl_sim.core.data.mnist import open_fashion_mnist

    return open_fashion_mnist(arg)


def open_dataset(spec: str) -> FaceDataset:
    """Open a dataset from its spec, e.g. ``synthfaces``, ``synthshift``, ``folder:/data/me``, ``celeba:/data/celeba``."""
    kind, _, arg = spec.partition(":")
    if kind not in DATASETS:
        raise DataError(f"unknown dataset {kind!r} in spec {spec!r} (known: {', '.join(sorted(DATASETS))})")
    return DATASETS[kind](arg or None)
