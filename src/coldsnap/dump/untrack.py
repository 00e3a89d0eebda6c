"""`coldsnap untrack PID`: close the write tracking coldsnap parked in a process."""
from __future__ import annotations

from ..memory.tracking import untrack as _untrack
from ..seize.remote import frozen_calls


def untrack(pid: int) -> list[int]:
    """Close every userfaultfd coldsnap parked in PID (in one short freeze); their fd numbers."""
    return _untrack(pid, lambda: frozen_calls(pid))
