"""Helpers for the dump/restore tests: workloads that talk through a log file, coldsnap runs
whose output never sits in a pipe, and reaping of originals and restored processes.

A workload's stdin is /dev/null and its stdout+stderr one log file opened O_APPEND: a
regular file survives a restore (by path and offset) where a pipe to the test would not.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from coldsnap.kernel.procfs import Stat, read_stat

from procs import Run, coldsnap  # noqa: F401  (re-exported: the one runner of the command)

WORKLOADS_DIR = Path(__file__).resolve().parent.parent / "workloads"
C_WORKLOADS = ("rst_memory", "rst_threads", "rst_signals", "rst_files", "rst_clock")
ALL_WORKLOADS = C_WORKLOADS + ("rst_python",)

TICK_RE = re.compile(r"^tick (\d+) ok\b")


# ---------------------------------------------------------------- processes

def _stat(pid: int) -> Optional[Stat]:
    try:
        return read_stat(pid)
    except (OSError, ValueError, IndexError):
        return None


def ppid_of(pid: int) -> Optional[int]:
    st = _stat(pid)
    return st.ppid if st else None


def state_of(pid: int) -> str:
    st = _stat(pid)
    return st.state if st else ""


def start_time_of(pid: int) -> Optional[int]:
    st = _stat(pid)
    return st.starttime if st else None


def alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    return state_of(pid) not in ("", "Z")


def running(pid: int) -> bool:
    """Alive, or a zombie leader whose other threads go on (it ended with pthread_exit)."""
    return alive(pid) or (state_of(pid) == "Z" and len(tids(pid)) > 1)


def exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def tids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def our_children() -> set[int]:
    """Every process (zombies included) whose parent is this test process."""
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and ppid_of(int(entry)) == me:
            out.add(int(entry))
    return out


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while exists(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"/proc/{pid} still there after {timeout} s (state {state_of(pid)!r})")
        time.sleep(0.005)


def reap(pid: int, timeout: float = 5.0) -> int:
    """waitpid a child of ours with a timeout; returns the raw wait status."""
    deadline = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"child {pid} did not end within {timeout} s (state {state_of(pid)!r})")
        time.sleep(0.005)


def kill_and_reap(pid: int) -> None:
    """SIGKILL and reap a process of ours, if it is still there; never touches strangers."""
    if ppid_of(pid) != os.getpid():
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        reap(pid)
    except ChildProcessError:
        pass
    wait_gone(pid)


# ---------------------------------------------------------------- coldsnap

def assert_one_line_error(run: Run) -> None:
    assert run.returncode != 0, f"{' '.join(run.argv[2:])} succeeded: {run.stdout}"
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line: {run.stderr!r}"
    assert lines[0].startswith("coldsnap:"), f"stderr: {run.stderr!r}"


# ---------------------------------------------------------------- workloads

def wait_adopted(pid: int, timeout: float = 3.0) -> None:
    """After `restore -d`: process PID exists again and is reparented to us (a subreaper)."""
    deadline = time.monotonic() + timeout
    while ppid_of(pid) != os.getpid():
        assert exists(pid), f"restored process {pid} does not exist"
        if time.monotonic() > deadline:
            raise AssertionError(f"restored {pid} has parent {ppid_of(pid)}, not the test ({os.getpid()})")
        time.sleep(0.005)


class LogWorkload:
    """A workload writing "ready", "tick N ok ..." and "FAIL ..." lines into a log file.

    `pid` stays the process's PID across dump and restore; `original` is the Popen of the
    first incarnation (reaped by reap_dumped), later incarnations are reparented children.
    """

    def __init__(self, argv: list, log: Path, cwd: Optional[Path] = None):
        self.log = Path(log)
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            self.original: Optional[subprocess.Popen] = subprocess.Popen(
                [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                start_new_session=True, cwd=cwd)
        finally:
            os.close(fd)
        self.pid = self.original.pid
        self.restored = False   # the live incarnation (if any) is a restored one

    # -- the log
    def lines(self) -> list[str]:
        """Complete lines so far (a line still being written is left out)."""
        try:
            text = self.log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return []
        return text.split("\n")[:-1]

    def ticks(self) -> list[int]:
        return [int(m.group(1)) for m in map(TICK_RE.match, self.lines()) if m]

    def failures(self) -> list[str]:
        return [ln for ln in self.lines()
                if ln.startswith("FAIL") or ln.startswith("Traceback") or "Exception in thread" in ln]

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.lines()[-n:])

    def wait_for(self, what: str, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if not running(self.pid):
                raise AssertionError(f"{self.pid} died while waiting for {what} "
                                     f"(state {state_of(self.pid)!r}); log:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s; log:\n{self.tail()}")
            time.sleep(0.01)

    def wait_ready(self, timeout: float = 10.0) -> None:
        self.wait_for("ready line", lambda: any(ln.startswith("ready") for ln in self.lines()),
                      timeout)

    def wait_ticks(self, more: int, timeout: float = 5.0) -> int:
        """Wait for `more` tick lines beyond those logged now; returns the new count."""
        want = len(self.ticks()) + more
        self.wait_for(f"{more} more ticks", lambda: len(self.ticks()) >= want, timeout)
        return len(self.ticks())

    def count_lines(self, prefix: str) -> int:
        return sum(1 for ln in self.lines() if ln.startswith(prefix))

    def wait_line(self, line: str, timeout: float = 5.0) -> None:
        self.wait_for(repr(line), lambda: line in self.lines(), timeout)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    # -- checks
    def assert_healthy(self) -> None:
        """No FAIL line anywhere, and tick numbers 1, 2, 3, ... without a gap or restart."""
        bad = self.failures()
        assert not bad, "workload reported:\n" + "\n".join(bad[:20])
        ticks = self.ticks()
        assert ticks, f"no ticks; log:\n{self.tail()}"
        want = list(range(1, len(ticks) + 1))
        if ticks != want:
            first = next(i for i, (a, b) in enumerate(zip(ticks, want)) if a != b)
            raise AssertionError(f"tick numbers do not continue: ... {ticks[max(0, first - 3):first + 3]}")

    # -- lifecycle
    def reap_dumped(self, timeout: float = 5.0) -> None:
        """After a dump without --leave-running: the task was SIGKILLed; reap it."""
        if self.original is not None:
            try:
                rc = self.original.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"dumped task {self.pid} still runs (state {state_of(self.pid)!r})")
            self.original = None
            assert rc == -signal.SIGKILL, f"the dumped task ended with {rc}, not SIGKILL"
        else:
            status = reap(self.pid, timeout)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
                f"the dumped task ended with wait status {status:#x}, not SIGKILL"
        wait_gone(self.pid)
        self.restored = False

    def adopt_restored(self, timeout: float = 3.0) -> None:
        """After `restore -d`: the process is back under its PID and reparented to us."""
        wait_adopted(self.pid, timeout)
        self.restored = True

    def __enter__(self) -> "LogWorkload":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill and reap whatever incarnation is alive (for finally blocks; `with` does it)."""
        if self.original is not None:
            if self.original.poll() is None:
                self.original.kill()
            self.original.wait()
            self.original = None
        kill_and_reap(self.pid)


def reap_quietly(pid: int) -> None:
    """SIGKILL and reap PID if it is still there (a lazy restore's guardian, ours as a subreaper)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def end_lazy_restore(w: "LogWorkload | None", res: dict | None) -> None:
    """The finally of a lazy restore's test: the workload (every incarnation) killed and
    reaped, then the restore's guardian (RES: its --json result, if it came that far)."""
    if w is not None:
        w.stop()
    if res:
        reap_quietly(res["lazy_guardian"])


def end_migration(w: "LogWorkload", migrate: "subprocess.Popen | None" = None) -> None:
    """The finally of a migration's test: a `coldsnap migrate` still running killed and
    reaped, then the source process if it was not dumped (the one over there is its host's)."""
    if migrate is not None and migrate.poll() is None:
        migrate.kill()
        migrate.wait()
    if w.original is not None:
        w.original.kill()
        w.original.wait()


def workload_argv(name: str, build: Callable[[str], Path], python_exe: str, tmp: Path) -> list:
    if name == "rst_python":
        return [python_exe, WORKLOADS_DIR / "rst_python.py"]
    argv = [build(name)]
    if name == "rst_files":
        d = tmp / "files"
        d.mkdir(exist_ok=True)
        argv.append(d)
    return argv


def start_workload(name: str, build: Callable[[str], Path], python_exe: str, tmp: Path,
                   ticks: int = 3) -> LogWorkload:
    """Start a workload and wait for "ready" and `ticks` tick lines."""
    w = LogWorkload(workload_argv(name, build, python_exe, tmp), tmp / f"{name}.log")
    try:
        w.wait_ready()
        if ticks:
            w.wait_ticks(ticks)
    except BaseException:
        w.stop()
        raise
    return w


# ---------------------------------------------------------------- signals each workload answers

def poke(name: str, w: LogWorkload, round_: int) -> None:
    """Send a workload the signals it answers and wait for the answer; `round_` counts the
    pokes so far (1 for the first). Workloads without a trigger just tick."""
    if name == "rst_signals":
        w.signal(signal.SIGUSR1)
        w.wait_line(f"usr1 {round_} on altstack")
        if round_ == 1:
            w.signal(signal.SIGUSR2)        # blocked: stays pending, across restores too
            w.wait_line("usr2 pending")
    elif name == "rst_files":
        w.signal(signal.SIGUSR1)            # drain the pipe and compare its bytes
        w.wait_line(f"drained {3000 + round_ - 1} ok")
    elif name == "rst_threads":
        w.signal(signal.SIGUSR1)            # one connection to the listening socket
        w.wait_line(f"accept {round_}")
