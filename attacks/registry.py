"""Named parts of the attacks library (methods, priors) with help texts; imports nothing of the project."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Called, in order, when a name is not found: a host program (fl-sim) hooks its plugin loader in
# here, so a part registered by a plugin is found in any process that looks it up.
MISS_HOOKS: list[Callable[[], None]] = []

_ORIGIN = ["builtin"]


def set_origin(origin: str) -> str:
    """Stamp parts registered from now on with ``origin`` (a plugin's name); returns the previous one."""
    previous, _ORIGIN[0] = _ORIGIN[0], origin
    return previous


class DuplicateError(ValueError):
    """A name registered twice with different objects: a mistake, not an override."""


@dataclass(frozen=True)
class Part(Generic[T]):
    """One registered part: its name, the object, a one-line help text and who registered it."""

    name: str
    obj: T
    help: str
    origin: str


class Named(Mapping[str, T]):
    """A read-only mapping name -> part of one kind, plus help texts and origins; ``add`` registers."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._parts: dict[str, Part[T]] = {}

    def add(self, name: str, obj: T, help: str = "") -> T:
        """Register ``obj`` under ``name``; raises :class:`DuplicateError` on a second, different one."""
        old = self._parts.get(name)
        if old is not None and old.obj is not obj:
            raise DuplicateError(f"{self.kind} {name!r} is registered twice ({old.origin} and {_ORIGIN[0]})")
        self._parts[name] = Part(name, obj, help, _ORIGIN[0])
        return obj

    def _find(self, name: str) -> Part[T] | None:
        if name not in self._parts:
            for hook in MISS_HOOKS:
                hook()
        return self._parts.get(name)

    def part(self, name: str) -> Part[T]:
        """The registered part (help and origin included); KeyError naming the known ones."""
        found = self._find(name)
        if found is None:
            raise KeyError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return found

    def __getitem__(self, name: str) -> T:
        return self.part(name).obj

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._parts))

    def __len__(self) -> int:
        return len(self._parts)

    def names(self) -> list[str]:
        return sorted(self._parts)

    def parts(self) -> list[Part[T]]:
        """Every part, by name."""
        return [self._parts[n] for n in self.names()]
