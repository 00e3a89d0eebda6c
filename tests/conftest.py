"""Shared fixtures: real workloads, reaped children, and guards against stopped or traced
leftovers and stray coldsnap temporary directories."""
from __future__ import annotations

import ctypes
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from procs import build_workload, end_child, proc_state  # noqa: F401  (fixtures below; tests import procs)

PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    # The machine's PID 1 reaps orphans slowly: adopt them ourselves so tests can reap them.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


_become_subreaper()

# no test hands its commands to a `coldsnap service` by accident (one running on the default
# address, say): those of tests/service start their own and set COLDSNAP_SERVICE themselves
os.environ["COLDSNAP_SERVICE"] = ""

# The temporary directory of this run alone (TMPDIR, inherited by every coldsnap a test
# starts): the stray-directory check below looks there, so that suites running at the same
# time (several people on one machine) never take each other's live work directories for
# strays and remove them. pytest's own tmp_path stays where it was.
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
_RUN_TMP = tempfile.mkdtemp(prefix="cs-tests.")
os.chmod(_RUN_TMP, 0o1777)      # as /tmp: services the tests start as their own users (postgres, nginx) write there
os.environ["TMPDIR"] = _RUN_TMP
tempfile.tempdir = None


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_RUN_TMP, ignore_errors=True)


def _our_descendants() -> list[int]:
    me = os.getpid()
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [me]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stopped_or_traced() -> list[str]:
    bad = []
    for pid in _our_descendants():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid_entry in tids:
            state, tracer = proc_state(pid, int(tid_entry))
            if state in ("t", "T") or tracer:
                bad.append(f"{pid}/{tid_entry} state={state} tracer={tracer}")
    return bad


def reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _alive_descendants() -> list[int]:
    return [p for p in _our_descendants() if proc_state(p)[0] not in ("", "Z")]


def _coldsnap_temp_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("coldsnap-*"))


@pytest.fixture(autouse=True)
def no_stray_temp_dirs():
    """Fail any test after which a coldsnap-* directory it made stays in the temporary
    directory (a killed migrate's work directory once filled the disk this way)."""
    before = _coldsnap_temp_dirs()
    yield
    deadline = time.monotonic() + 2
    stray = _coldsnap_temp_dirs() - before
    while stray and time.monotonic() < deadline:   # a process on its way out removes its own
        time.sleep(0.05)
        stray = _coldsnap_temp_dirs() - before
    for d in stray:  # clean up, but still fail
        shutil.rmtree(d, ignore_errors=True)
    assert not stray, f"left in {tempfile.gettempdir()}: {sorted(map(str, stray))}"


@pytest.fixture(autouse=True)
def no_leftovers():
    """Fail any test that leaves a process stopped, traced or unreaped behind."""
    yield
    deadline = time.monotonic() + 2
    bad = _stopped_or_traced()
    while bad and time.monotonic() < deadline:
        time.sleep(0.05)
        bad = _stopped_or_traced()
    reap_zombies()
    alive = _alive_descendants()
    while alive and time.monotonic() < deadline + 2:
        # a workload's own children may still be on their way out (a kill chain through
        # PDEATHSIG takes a scheduling round per level): only what stays alive is a leftover
        time.sleep(0.05)
        reap_zombies()
        alive = _alive_descendants()
    for pid in alive:  # clean up, but still fail: a test must reap what it started
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.05)
    reap_zombies()
    assert not bad, f"left stopped or traced: {bad}"
    assert not alive, f"left running: {alive}"


class Workload:
    """A started process that is killed and reaped when the test ends."""

    def __init__(self, argv: list[str], ready_line: bool = True, **kw):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kw)
        self.pid = self.proc.pid
        self.ready = self.proc.stdout.readline().decode().strip() if ready_line else ""

    def send(self, line: str) -> str:
        """Write one command line to the workload and return its one-line answer."""
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def stop(self) -> None:
        """Kill and reap the workload, bounded in time whatever state a failed test left it
        in (stopped, traced, frozen: procs.end_child)."""
        if self.proc.returncode is None:
            end_child(self.pid)
            self.proc.returncode = -9
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture
def spawn():
    """spawn(argv) -> Workload; every workload is killed and reaped at the end of the test."""
    started: list[Workload] = []

    def start(argv, **kw) -> Workload:
        w = Workload([str(a) for a in argv], **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def workload_bin():
    return build_workload


@pytest.fixture
def python_exe() -> str:
    return sys.executable
