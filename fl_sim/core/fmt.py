"""Numbers as every table, line and markdown file prints them: one formatter for figures, one for intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def number(value: Any, nd: int = 3, *, nonfinite: str | None = "-") -> str:
    """A float with ``nd`` decimals, anything else as ``str``; ``-`` when absent.

    A non-finite float prints as ``nonfinite`` (``None``: as Python writes it, ``nan`` or ``inf``).
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isfinite(value):
            return f"{value:.{nd}f}"
        return str(value) if nonfinite is None else nonfinite
    return str(value)


def format_ci(value: float | None, ci: Sequence[float] | None, nd: int = 2) -> str:
    """A figure with its interval as printed everywhere, e.g. ``0.88 [0.75, 0.97]``; ``-`` when absent."""
    if value is None or not np.isfinite(value):
        return "-"
    if not ci:
        return f"{value:.{nd}f}"
    return f"{value:.{nd}f} [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


def json_safe(value: Any) -> Any:
    """The same structure with NaN and infinities as None, recursively (strict JSON readers reject them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
