"""The progress hook of the long steps: the drain, the frozen copy, the restore's page writer.

    if progress.reporter: progress.reporter("dump", done_bytes, total_bytes)

is the one line each long loop has, once per batch (total 0: not known). Nothing but the CLI
installs a reporter, and only when stderr is a terminal (coldsnap/terminal.py), so by default
the hook costs one test of a module attribute per batch. A reporter may be called from worker
threads, and `done` of one step may arrive out of order from them.
"""
from __future__ import annotations

from typing import Callable

Reporter = Callable[[str, int, int], None]   # (step, done_bytes, total_bytes)

reporter: Reporter | None = None
