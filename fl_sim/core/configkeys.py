"""Every leaf key of the run config with its documentation or its bounds: what `config show` documents and what the
bad-input tests walk."""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from fl_sim.core.config import RunConfig, is_section
from fl_sim.core.fields import doc_text


def documented_keys(cfg: Any | None = None, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, doc) for every leaf key."""
    cfg = cfg if cfg is not None else RunConfig()
    out = []
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if is_section(hints[f.name]):
            out.extend(documented_keys(value, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", value, doc_text(f.metadata)))
    return out


BOUNDS = ("min", "max", "min_exclusive", "choices")


def key_bounds(cfg: Any | None = None, prefix: str = "") -> list[tuple[str, Any, dict[str, Any]]]:
    """(dotted key, default, bounds) for every leaf key that has a bound (min, max, min_exclusive, choices)."""
    cfg = cfg if cfg is not None else RunConfig()
    out: list[tuple[str, Any, dict[str, Any]]] = []
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if is_section(hints[f.name]):
            out.extend(key_bounds(value, f"{prefix}{f.name}."))
        elif bounds := {k: v for k, v in f.metadata.items() if k in BOUNDS}:
            out.append((f"{prefix}{f.name}", value, bounds))
    return out
