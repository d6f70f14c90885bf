"""Progress people can read: a rich bar with bytes, rate and time left, shown only
on a terminal (a log or a pipe gets the plain lines and no bar).

:func:`byte_bar` is the bar; :func:`esptool_progress` routes esptool's own output
and its write progress through it while ``mpota flash`` runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from esptool.logger import EsptoolLogger, TemplateLogger, log
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def console(stream: TextIO | None = None) -> Console:
    """A console for plain lines: no colour guessing, no emoji, no wrapping of long lines."""
    return Console(file=stream if stream is not None else sys.stdout, highlight=False,
                   emoji=False, soft_wrap=True)


def byte_bar(out: Console | None = None, enabled: bool | None = None) -> Progress:
    """A progress display for byte counts: description, bar, done/total, rate, time left.

    Disabled (draws nothing) when not on a terminal unless ``enabled`` says otherwise.
    Use as a context manager; ``add_task(description, total=n)`` then ``update``.
    """
    out = out or console()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=out,
        disable=not (out.is_terminal if enabled is None else enabled),
        transient=False,
    )


class _EsptoolLog(TemplateLogger):  # type: ignore[misc]  # esptool is untyped
    """esptool's logger while mpota drives it (esptool's documented custom-logger
    interface): its lines printed plainly, its write progress drawn as one bar per
    written region."""

    def __init__(self, bar: Progress, labels: list[str]) -> None:
        self.bar = bar
        self.out = bar.console
        self.labels = list(labels)
        self._task: TaskID | None = None
        self._last = (0, 0)

    def _line(self, *args: Any, end: str = "\n") -> None:
        text = " ".join(str(a) for a in args)
        self.out.print(text, end=end, markup=False, highlight=False, soft_wrap=True)

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._line(*args, end=kwargs.get("end", "\n"))

    def note(self, message: str) -> None:
        self._line(message)

    def warning(self, message: str) -> None:
        self._line(f"warning: {message}")

    def error(self, message: str) -> None:
        self._line(message)

    def stage(self, finish: bool = False) -> None:
        return

    def set_verbosity(self, verbosity: str) -> None:
        return

    def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "",
                     suffix: str = "", bar_length: int = 30) -> None:
        # one esptool progress per region: a new one starts when the total changes or
        # the count goes back
        last_cur, last_total = self._last
        if self._task is None or total_iters != last_total or cur_iter < last_cur:
            label = self.labels.pop(0) if self.labels else prefix.strip()
            self._task = self.bar.add_task(label, total=total_iters)
        self._last = (cur_iter, total_iters)
        self.bar.update(self._task, completed=cur_iter)


@contextmanager
def esptool_progress(out: Console | None = None, enabled: bool | None = None,
                     labels: list[str] | None = None) -> Iterator[Progress]:
    """Within this block esptool prints through ``out`` and draws its write progress
    as a bar (bytes sent, rate, time left) when on a terminal, one per region, named
    by ``labels`` in order; esptool's own logger is put back afterwards."""
    bar = byte_bar(out, enabled)
    set_logger = log.set_logger  # esptool's own logger's method: ours has none
    set_logger(_EsptoolLog(bar, labels or []))
    try:
        with bar:
            yield bar
    finally:
        set_logger(EsptoolLogger())  # esptool's own (a singleton)
