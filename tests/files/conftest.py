"""Fixtures of the fd-table tests: a scriptable workload and a rebuild in a forked child."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from coldsnap.files.registry import TaskFiles  # noqa: E402
from coldsnap.restore.fdtable import rebuild_fds  # noqa: E402

from helpers import collect_files  # noqa: E402
from procs import end_child  # noqa: E402

HERE = Path(__file__).parent
REPORT_FD = 1000      # the child's channel back to the test, far above dumped fds


@pytest.fixture
def pyload(spawn, python_exe):
    """pyload() -> a Python workload; .run(code) execs one line there, returns eval(repr(out))."""
    def start():
        # stderr: pytest's capture file is deleted, which the dumper rightly refuses.
        w = spawn([python_exe, str(HERE / "files_exec.py")], stderr=subprocess.DEVNULL)
        assert w.ready == "ready"

        def run(code: str):
            answer = w.send(code)
            if answer.startswith("ERR "):
                raise AssertionError(f"workload: {answer}")
            return eval(answer)  # noqa: S307 - our own workload's repr
        w.run = run
        return w
    return start


class Rebuilt:
    """A forked child that ran rebuild_fds and now just sleeps."""

    def __init__(self, pid: int, report: str):
        self.pid, self.report = pid, report

    def snapshot(self) -> TaskFiles:
        return collect_files(self.pid, shell_job=True)

    def stop(self) -> None:
        if self.pid == 0:
            return
        end_child(self.pid)                 # still our unreaped child: the pid is not reused
        self.pid = 0


def _child(snap: TaskFiles, w: int, shell_job: bool, tty: int | None) -> None:
    try:
        if tty is not None:     # stand-in for the terminal a shell gives the restorer
            for fd in (0, 1, 2):
                os.dup2(tty, fd)
        rebuild_fds(snap, shell_job=shell_job, keep_fds={w})
        os.write(w, b"ok")
    except BaseException:
        os.write(w, traceback.format_exc().encode())
    finally:
        os.close(w)     # leave exactly the rebuilt table open
        try:
            time.sleep(60)
        finally:
            os._exit(0)


@pytest.fixture
def rebuild():
    """rebuild(snap) -> Rebuilt child; killed and reaped at the end of the test."""
    kids: list[Rebuilt] = []

    def go(snap: TaskFiles, *, shell_job: bool = False, tty: int | None = None) -> Rebuilt:
        r, w0 = os.pipe()
        w = fcntl.fcntl(w0, fcntl.F_DUPFD_CLOEXEC, REPORT_FD)
        os.close(w0)
        pid = os.fork()
        if pid == 0:
            _child(snap, w, shell_job, tty)
        os.close(w)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        os.close(r)
        kid = Rebuilt(pid, b"".join(chunks).decode())
        kids.append(kid)
        return kid

    yield go
    for k in kids:
        k.stop()
