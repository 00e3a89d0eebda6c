"""What a person at a terminal sees while a long step runs: a `rich` progress bar on stderr.

Imported by the CLI only when stderr is a terminal, and rich only once a step has lasted
SHOW_AFTER: neither lengthens the start-up of a command, least of all one whose output goes
to a pipe or a file."""
from __future__ import annotations

import os
import threading
import time

from . import progress

SHOW_AFTER = "COLDSNAP_PROGRESS_AFTER"   # seconds: a step that ends sooner leaves the terminal as
                                        # it was (default 0.5; tests set 0)
LATE = 1.0           # seconds after a step ended in which its workers' reports are stale


class TerminalProgress:
    """A progress.Reporter: one transient bar per running step, shown once it lasts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # read here, not at import: a worker of `coldsnap service` takes on its caller's environment
        self._show_after = float(os.environ.get(SHOW_AFTER, "0.5"))
        self._display = None                                            # a rich Progress
        self._steps: dict[str, tuple[float, int, int | None]] = {}      # step -> (start, done, task)
        self._ended: dict[str, tuple[int, float]] = {}                  # step -> (total, when)

    def __call__(self, step: str, done: int, total: int) -> None:
        with self._lock:
            now = time.monotonic()
            if step not in self._steps and self._ended.get(step, (-1, 0))[0] == total \
                    and now - self._ended[step][1] < LATE:
                return                                  # a worker's late report of a finished step
            start, seen, task = self._steps.get(step, (now, 0, None))
            if done < seen:                             # a new round of this step (a series)
                self._finish(step)
                start, seen, task = now, 0, None
            done = max(done, seen)                      # workers may report out of order
            if task is None and now - start >= self._show_after:
                task = self._show().add_task(step, total=total or None)
            if task is not None:
                self._display.update(task, completed=done, total=total or None)
            self._steps[step] = (start, done, task)
            if total and done >= total:
                self._finish(step)

    def _show(self):
        if self._display is None:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TransferSpeedColumn)
            self._display = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=True,
                                     refresh_per_second=5, redirect_stdout=False, redirect_stderr=False)
            self._display.start()
        return self._display

    def _finish(self, step: str) -> None:
        _, done, task = self._steps.pop(step, (0, 0, None))
        self._ended[step] = (done, time.monotonic())
        if task is not None:
            self._display.remove_task(task)
            if not self._display.tasks:     # nothing runs: give the terminal back
                self._stop()

    def _stop(self) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None

    def close(self) -> None:
        with self._lock:
            self._stop()
            self._steps.clear()
        if progress.reporter is self:
            progress.reporter = None


def install() -> TerminalProgress:
    """Make the library report to a terminal display; close() it when the command ends."""
    shown = TerminalProgress()
    progress.reporter = shown
    return shown
