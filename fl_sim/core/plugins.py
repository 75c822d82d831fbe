"""Plugins: modules from outside the repo that register parts (config key ``plugins``, entry points, FL_SIM_PLUGINS)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import attacks.registry
from fl_sim.core.errors import ConfigError
from fl_sim.core.registry import Entry, Registry

T = TypeVar("T")

ENV = "FL_SIM_PLUGINS"  # comma-separated plugin references every process of a run imports on demand
ENTRY_POINT_GROUP = "fl_sim.plugins"
# fl-sim's own parts, imported (by name: they import this module) before any plugin, so they count as built-in
BUILTIN_MODULES = ("fl_sim.core.data", "fl_sim.core.models", "fl_sim.core.defenses", "fl_sim.core.adversary",
                   "fl_sim.core.priors", "attacks.methods")

_loaded: dict[str, ModuleType] = {}  # reference (as resolved) -> its module
_entry_points_done = False
_origin = ["builtin"]


@contextmanager
def _registering(origin: str) -> Iterator[None]:
    """Stamp every part registered inside with ``origin``, in fl-sim's registries and the attacks library's."""
    previous, _origin[0] = _origin[0], origin
    previous_attacks = attacks.registry.set_origin(origin)
    try:
        yield
    finally:
        _origin[0] = previous
        attacks.registry.set_origin(previous_attacks)


class Parts(Registry[T]):
    """A :class:`Registry` that knows plugins: parts are stamped with the plugin that registered them,
    and a name it does not know first makes it import the pending plugins (entry points, FL_SIM_PLUGINS),
    so a lookup in a fresh process (a Ray actor) finds what the driver's plugins registered."""

    def add(self, name: str, obj: T, help: str = "") -> T:
        self.origin = _origin[0]
        return super().add(name, obj, help)

    def get(self, name: str) -> T:
        if not super().__contains__(name):
            load_pending()
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        if not super().__contains__(name):
            load_pending()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[Entry[T]]:
        load_pending()
        return super().__iter__()

    def names(self) -> list[str]:
        load_pending()
        return super().names()

    def registered(self) -> Iterator[Entry[T]]:
        """The parts registered so far, importing nothing (what a module may read while it is imported)."""
        return super().__iter__()


def _split(ref: str) -> tuple[str, str | None]:
    """``module``, ``module:callable``, ``path/to/file.py[:callable]`` or ``path/to/package[:callable]``."""
    target, sep, fn = ref.rpartition(":")
    if sep and fn.isidentifier() and target:
        return target, fn
    return ref, None


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import_path(ref: str, path: Path) -> ModuleType:
    """Import a .py file or a package folder as a top-level module named after it."""
    if not path.exists():
        raise ConfigError(f"plugin {ref!r}: no such file or folder {path}")
    init = path / "__init__.py" if path.is_dir() else path
    if path.is_dir() and not init.exists():
        raise ConfigError(f"plugin {ref!r}: folder {path} is not a package (no __init__.py)")
    name = path.stem if path.is_file() else path.name
    if not name.isidentifier():
        raise ConfigError(f"plugin {ref!r}: {name!r} is not a valid module name")
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == init.resolve():
            return existing
        taken = getattr(existing, "__file__", name)
        raise ConfigError(f"plugin {ref!r}: module name {name!r} is already taken by {taken}")
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(path)] if path.is_dir() else None)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugin {ref!r}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _resolve(ref: str) -> str:
    """The reference with a relative path made absolute (what other processes are told to import)."""
    target, fn = _split(ref.strip())
    if _is_path(target):
        target = str(Path(target).expanduser().resolve())
    return f"{target}:{fn}" if fn else target


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def load_plugin(ref: str, origin: str | None = None) -> ModuleType:
    """Import one plugin (and call its ``:callable``, if named) once per process; a ConfigError on any failure."""
    key = _resolve(ref)
    if key in _loaded:
        return _loaded[key]
    load_builtins()
    target, fn = _split(key)
    try:
        with _registering(origin or ref.strip()):
            if _is_path(target):
                module = _import_path(ref, Path(target))
            else:
                try:
                    module = importlib.import_module(target)
                except ModuleNotFoundError as exc:
                    if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
                        raise ConfigError(f"plugin {ref!r}: no module named {exc.name!r}") from None
                    raise
            if fn is not None:
                call = getattr(module, fn, None)
                if not callable(call):
                    raise ConfigError(f"plugin {ref!r}: module {module.__name__!r} has no callable {fn!r}")
                call()
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(f"plugin {ref!r}") else f"plugin {ref!r}: {msg}") from None
    except Exception as exc:  # noqa: BLE001 - a plugin's own failure, reported in one line
        raise ConfigError(f"plugin {ref!r}: {exc.__class__.__name__}: {_one_line(exc)}") from None
    _loaded[key] = module
    return module


def _remember(keys: list[str]) -> None:
    """Add ``keys`` to FL_SIM_PLUGINS, which the processes a run starts (Ray actors) inherit."""
    have = [k for k in os.environ.get(ENV, "").split(",") if k]
    new = [k for k in keys if k not in have]
    if new:
        os.environ[ENV] = ",".join(have + new)


def ensure_plugins(refs: list[str]) -> None:
    """Import the entry points and ``refs`` (config key ``plugins``); pass ``refs`` on to child processes."""
    load_pending()
    for ref in refs:
        load_plugin(ref)
    _remember([_resolve(r) for r in refs])


def load_entry_points(refresh: bool = False) -> None:
    """Import every plugin installed under the ``fl_sim.plugins`` entry-point group (once per process)."""
    global _entry_points_done
    if _entry_points_done and not refresh:
        return
    _entry_points_done = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        load_plugin(ep.value, origin=f"entry point {ep.name} ({ep.value})")


def load_builtins() -> None:
    """Register fl-sim's own parts (the embedded priors with the attacks library among them)."""
    for name in BUILTIN_MODULES:
        if name not in sys.modules:
            with _registering("builtin"):
                importlib.import_module(name)


def load_pending() -> None:
    """Every part this process should know: the built-in priors, installed entry points, FL_SIM_PLUGINS."""
    load_builtins()
    load_entry_points()
    for ref in os.environ.get(ENV, "").split(","):
        if ref.strip():
            load_plugin(ref.strip())

