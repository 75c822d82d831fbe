"""User-facing errors: one line, naming what is wrong and where; the CLI exits 2 on them."""

from __future__ import annotations

import re


class FlSimError(Exception):
    """A problem with the user's input (config, path, data) rather than a bug in fl-sim."""


class ConfigError(FlSimError):
    """An invalid run configuration: names the key and what is wrong with its value."""


class DataError(FlSimError):
    """An unreadable or inconsistent dataset: names the path."""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def error_line(exc: BaseException) -> str:
    """``Name: message``, one line, of the original exception: wrappers that carry a ``cause``
    (Ray's ``RayTaskError``, ``ActorDiedError``) are unwrapped and terminal escape codes removed."""
    seen: set[int] = set()
    while isinstance(getattr(exc, "cause", None), BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.cause  # type: ignore[attr-defined]
    name = _ANSI.sub("", exc.__class__.__name__)
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    return f"{name}: {lines[0]}" if lines else name


_WRAPPERS = ("RayTaskError", "RayActorError", "ClientAppException", "ActorDiedError")
_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Warning)): ?(.*)$")


def reason_line(reason: str) -> str:
    """One line from an error's text as a remote process reported it (Flower's ``Error.reason``, a Ray
    traceback): the last ``Name: message`` line that is not a wrapper's, else the last line; no escape codes."""
    lines = [ln.strip() for ln in _ANSI.sub("", reason).splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = _EXC_LINE.match(ln)
        if m and not any(w in m.group(1) for w in _WRAPPERS):
            return f"{m.group(1)}: {m.group(2).rstrip(chr(39) + '>').strip()}".rstrip(": ")
    for ln in reversed(lines):
        if "Message:" in ln:
            return ln.split("Message:", 1)[1].rstrip("'>").strip() or ln
    return (lines[-1] if lines else "no reason given").rstrip("'>")
