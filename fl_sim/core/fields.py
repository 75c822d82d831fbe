"""Documented, bounded config fields: the metadata `fl-sim config show` prints and `load_config` checks."""

from __future__ import annotations

from dataclasses import field
from collections.abc import Callable
from typing import Any

Doc = str | Callable[[], str]  # a callable doc is read when printed: choices that come from a registry


def doc(text: Doc, **extra: Any) -> dict[str, Any]:
    """Field metadata: the documentation `fl-sim config show` prints, plus optional bounds."""
    return {"doc": text, **extra}


def doc_text(meta: Any) -> str:
    """A field's documentation (a registry-backed one is read now, plugins' parts included)."""
    text = meta.get("doc", "")
    return str(text() if callable(text) else text)


def _f(default: Any, text: Doc, **extra: Any) -> Any:
    """A dataclass field with its documentation (and bounds: min, max, min_exclusive, choices)."""
    if isinstance(default, (list, dict)):
        kind = type(default)
        return field(default_factory=lambda: kind(default), metadata=doc(text, **extra))
    return field(default=default, metadata=doc(text, **extra))
