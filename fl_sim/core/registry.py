"""Named parts of one kind (datasets, models, defenses, priors): register, look up, list with help texts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from fl_sim.core.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered part: its name, the object itself, a one-line help text and where it came from."""

    name: str
    obj: T
    help: str
    origin: str  # "builtin" or the plugin module that registered it


class Registry(Generic[T]):
    """A registry of one kind of part; config choices and help texts are read from here, never restated."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind  # e.g. "model"
        self.key = key  # the config key that picks one, e.g. "model.name"
        self._entries: dict[str, Entry[T]] = {}
        self.origin = "builtin"  # set by fl_sim.core.plugins while a plugin module registers its parts

    def add(self, name: str, obj: T, help: str = "") -> T:
        """Register ``obj`` under ``name``; a second registration of one name is a mistake, not an override."""
        if name in self._entries and self._entries[name].obj is not obj:
            raise ConfigError(f"{self.kind} {name!r} is registered twice "
                              f"({self._entries[name].origin} and {self.origin})")
        self._entries[name] = Entry(name, obj, help, self.origin)
        return obj

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj, help)

        return deco

    def get(self, name: str) -> T:
        """The part called ``name``, or a one-line error naming the config key and the known names."""
        if name not in self._entries:
            raise ConfigError(f"config key '{self.key}': unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name].obj

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def choices_doc(self) -> str:
        """``a | b | c`` for a config help text."""
        return " | ".join(self.names())
