"""Helpers for the seize tests: thread states, waiting, and a holder process script."""
from __future__ import annotations

import os
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def thread_states(pid: int) -> dict[int, tuple[str, int]]:
    """{tid: (state letter, tracer pid)} of every thread of PID."""
    out = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        out[int(entry)] = (fields["State"].split()[0], int(fields["TracerPid"]))
    return out


def assert_frozen_by_us(pid: int, tids: list[int]) -> None:
    states = thread_states(pid)
    assert sorted(states) == tids
    assert all(s == ("t", os.getpid()) for s in states.values()), states


def assert_running_untraced(pid: int) -> None:
    states = thread_states(pid)
    assert states
    assert all(st not in ("t", "T") and tracer == 0 for st, tracer in states.values()), states


def wait_until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def syscall_nr(pid: int, tid: int | None = None) -> int | None:
    """The syscall the thread sleeps in (from /proc/.../syscall), or None when running."""
    path = f"/proc/{pid}/syscall" if tid is None else f"/proc/{pid}/task/{tid}/syscall"
    first = Path(path).read_text().split()[0]
    return None if first == "running" else int(first)


HOLDER = """
import os, sys, time
sys.path.insert(0, {src!r})
from coldsnap.seize.freezer import freeze
from coldsnap.seize.remote import RemoteCalls
from coldsnap.kernel.libc import SYS
pid, calls = int(sys.argv[1]), sys.argv[2] == "calls"
with freeze(pid) as task:
    if calls:
        with RemoteCalls(task) as rc:
            rc.write_scratch(b"x")
            rc.call(SYS.getpid)
    print("frozen", flush=True)
    time.sleep(30)
print("not reached", flush=True)
"""


def holder_script(path: Path) -> Path:
    path.write_text(HOLDER.format(src=SRC))
    return path
