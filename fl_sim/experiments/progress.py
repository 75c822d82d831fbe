"""Progress bars for long steps (attack drain, audit, sweep, benches, prior evaluation).

On a terminal a rich bar with counts, elapsed time and ETA; on anything else (a pipe, a log, a
test) no bar at all: the lines said through the bar come out exactly as plain ``console.print``
would print them, so captured output stays what it was. The bar lives on a stderr console and
never touches stdout (tables and JSON stay byte-identical).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn,
                           TimeElapsedColumn)
from rich.text import Text


def live(console: Console) -> bool:
    """Whether a bar is drawn on this console: only on a real (or forced) terminal."""
    return console.is_terminal and not console.is_dumb_terminal


class _Eta(ProgressColumn):
    """Time left, counting down from the last count's estimate (the caller's, or the pace since the bar began)."""

    def render(self, task: Task) -> Text:
        at = task.fields.get("eta_at")
        left = None if at is None else max(0.0, at - time.monotonic())
        if task.finished:
            left = 0.0
        return Text("-:--:--" if left is None else str(timedelta(seconds=int(left))), style="progress.remaining")


class Bar:
    """``with Bar(console, "attacks") as bar: bar.update(done, total); bar.say("a line")``.

    ``say`` prints a line above the bar (on a plain console: just the line, as before); ``update``
    moves the bar (on a plain console: nothing). ``step`` is ``update`` as a plain callback.
    """

    def __init__(self, console: Console, label: str, total: int | None = None, *,
                 print_kwargs: dict[str, Any] | None = None) -> None:
        self.console, self.label = console, label
        self.print_kwargs = print_kwargs or {}
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._total = total
        self._done: int | None = None  # the last count, when given before the bar started
        self._fields: dict[str, Any] = {}
        self._entered = False
        self._t0: float | None = None  # when the bar began counting, and from which count
        self._base = 0
        self._fresh = True  # the first count may start past 0: it is where the bar begins, not speed

    def __enter__(self) -> Bar:
        """The bar appears with the first count (``update``), so it never shows an unknown total."""
        self._entered = True
        if self._total is not None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if self._progress is not None or not live(self.console):
            return
        # stdout is never redirected through the bar: scripts read tables and JSON there.
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"),
                                  _Eta(), console=self.console, redirect_stdout=False,
                                  refresh_per_second=4)
        self._task = self._progress.add_task(self.label, total=self._total, completed=self._done or 0,
                                             **self._fields)
        self._t0, self._base = time.monotonic(), self._done or 0
        self._fresh = self._done is None
        self._progress.start()

    def stop(self) -> None:
        self._entered = False
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()
            self._progress = None

    def update(self, done: int, total: int | None = None, eta: float | None = None) -> None:
        """``done`` of ``total``; ``eta``: the caller's own estimate of the seconds left (else the pace since the bar began)."""
        if total is not None:
            self._total = total
        now = time.monotonic()
        if eta is None and self._t0 is not None and not self._fresh and done > self._base and self._total is not None:
            eta = (now - self._t0) / (done - self._base) * (self._total - done)  # the pace since the bar began
        fields: dict[str, Any] = {} if eta is None else {"eta_at": now + eta}
        if self._progress is None:
            self._done, self._fields = done, fields
            if self._entered:
                self.start()
                return
        if self._progress is not None and self._task is not None:
            if self._fresh:
                self._fresh = False
                self._progress.reset(self._task, completed=done, total=self._total, **fields)
                self._t0, self._base = now, done
            else:
                self._progress.update(self._task, completed=done, total=self._total, **fields)

    def describe(self, label: str) -> None:
        """A new label beside the bar."""
        self.label = label
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=label)

    @property
    def step(self) -> Callable[[int, int], None]:
        return self.update

    def say(self, message: str) -> None:
        self.console.print(message, **self.print_kwargs)
