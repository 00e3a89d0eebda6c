"""Helpers shared by test files: compiled workloads, /proc process states, and the one way
to run the coldsnap command and CRIU's crit.

A module of its own (not conftest.py) so that any test file can import it by name, whichever
directory-level conftest pytest loaded first.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

WORKLOADS = Path(__file__).parent / "workloads"
BIN = WORKLOADS / "bin"


def build_workload(name: str, *extra: str) -> Path:
    """Compile tests/workloads/NAME.c (once per source change) and return the binary."""
    src = WORKLOADS / f"{name}.c"
    BIN.mkdir(exist_ok=True)
    out = BIN / name
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O1", "-g", "-pthread", "-o", str(out), str(src), *extra], check=True)
    return out


def proc_state(pid: int, tid: int | None = None) -> tuple[str, int]:
    """(state letter, tracer pid) of a process or one of its threads, or ('', 0) when gone."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    try:
        status = Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "", 0
    state = tracer = ""
    for line in status.splitlines():
        if line.startswith("State:"):
            state = line.split()[1]
        elif line.startswith("TracerPid:"):
            tracer = line.split()[1]
    return state, int(tracer or 0)


# -- ending a workload, bounded ----------------------------------------------------------------

CGROUP_ROOTS = {"freezer": Path("/sys/fs/cgroup/freezer"), "": Path("/sys/fs/cgroup/unified")}


def thaw_cgroups_of(pid: int) -> None:
    """Thaw the freezer cgroups (v1 and v2) that hold PID: a task of a frozen v1 cgroup does
    not die of SIGKILL until thawed. Errors are ignored: this only helps a teardown along."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        root = CGROUP_ROOTS.get(controllers)
        if root is None or path == "/":
            continue
        knob, value = ("freezer.state", "THAWED") if controllers else ("cgroup.freeze", "0")
        try:
            (root / path.lstrip("/") / knob).write_text(value)
        except OSError:
            pass


def end_child(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL and reap a child of this process within TIMEOUT seconds, never blocking for
    ever: a child that does not die (in a frozen cgroup, held in a D state) has its
    freezer cgroups thawed once; still there after that, an AssertionError names its state."""
    import signal
    import time
    thawed = False
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            got, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if got == pid:
            return
        if time.monotonic() > deadline:
            if thawed:
                raise AssertionError(f"child {pid} did not end within {2 * timeout} s of SIGKILL "
                                     f"(state, tracer: {proc_state(pid)})")
            thaw_cgroups_of(pid)
            thawed, deadline = True, time.monotonic() + timeout
        time.sleep(0.005)


# -- the coldsnap command ------------------------------------------------------------------

def coldsnap_argv(*args) -> list[str]:
    """argv of `python -m coldsnap ARGS`, for the tests that need a Popen (signals, terminals)."""
    return [sys.executable, "-m", "coldsnap", *map(str, args)]


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> "Run":
        assert self.returncode == 0, (f"{' '.join(self.argv[2:])} exited {self.returncode}\n"
                                      f"stderr: {self.stderr}\nstdout: {self.stdout}")
        return self


def coldsnap(*args, check: bool = False, timeout: float = 60.0, env: dict | None = None) -> Run:
    """Run `python -m coldsnap ARGS` to the end. stdin is /dev/null and stdout/stderr go to
    files, never pipes, so that a restored process that kept one cannot hang the test.
    env: the environment (default: this one)."""
    argv = coldsnap_argv(*args)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout, env=env)
        out.seek(0)
        err.seek(0)
        run = Run(argv, proc.returncode, out.read().decode(errors="replace"),
                  err.read().decode(errors="replace"))
    return run.check() if check else run


# -- CRIU's crit ------------------------------------------------------------------------------

CRIT = "/usr/bin/crit"


def need_crit() -> None:
    """Skip the calling test where crit (Debian package criu) is not installed."""
    if not os.path.exists(CRIT):
        import pytest
        pytest.skip("crit (Debian package criu) is not installed")


def crit(*args, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`crit ARGS` to the end, text output captured."""
    return subprocess.run([CRIT, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def crit_decode_all(paths) -> dict:
    """`crit decode` of every file at once; {path: (returncode, stdout, stderr)}."""
    procs = {p: subprocess.Popen([CRIT, "decode", "-i", str(p)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for p in paths}
    out = {}
    for p, proc in procs.items():
        so, se = proc.communicate(timeout=60)
        out[p] = (proc.returncode, so, se)
    return out


def crit_decode_each(paths) -> dict:
    """{path: decoded JSON} of every image, asserting crit took each one."""
    out = {}
    for p, (rc, so, se) in crit_decode_all(paths).items():
        assert rc == 0, f"crit decode {p}: {se}"
        out[p] = json.loads(so)
    return out


def crit_decode(path) -> dict:
    """The decoded JSON of one image, asserting crit took it."""
    return crit_decode_each([path])[path]


def stopped_after_syscall(argv: list, numbers: tuple[int, ...], then, **popen) -> subprocess.Popen:
    """Start ARGV traced from its exec (ptrace), follow its system calls to the return of the
    first one of NUMBERS, call THEN(the Popen) while it stands there, and let it go: what
    THEN does happens right after that call (a signal, a file swapped), as it could by chance."""
    import ctypes
    from coldsnap.kernel import ptrace
    libc = ctypes.CDLL(None, use_errno=True)
    proc = subprocess.Popen(argv, preexec_fn=lambda: libc.ptrace(0, 0, 0, 0), **popen)   # PTRACE_TRACEME
    try:
        ptrace.wait_stop(proc.pid)                 # SIGTRAP at the exec
        ptrace.set_options(proc.pid, ptrace.PTRACE_O_TRACESYSGOOD | ptrace.PTRACE_O_EXITKILL)
        entering, pending = True, 0
        while True:
            ptrace.syscall_step(proc.pid, pending)
            stop = ptrace.wait_stop(proc.pid)
            assert not stop.exited, stop
            if not stop.is_syscall_stop:
                pending = stop.sig                 # a signal of its own: delivered
                continue
            pending = 0
            if ptrace.get_regs(proc.pid).orig_rax in numbers and not entering:
                then(proc)
                ptrace.detach(proc.pid)
                return proc
            entering = not entering
    except BaseException:
        proc.kill()
        proc.wait()
        raise
