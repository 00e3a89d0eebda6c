"""Per-process state of a restored tree: pending signals (the process's shared queue and a
thread's own), a child's PR_SET_PDEATHSIG, the parent's `wait` of a child, process names
(comm) and /proc/PID/cmdline."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from procs import coldsnap
from tree_helpers import kill_tree, reap_orphans

# the root blocks SIGUSR1/SIGUSR2 and names itself; child A asks for SIGUSR1 when its parent
# dies and names itself; child B waits to be reaped. Once the file `go` exists, the root logs
# what is pending, unblocks it (its handlers log), lets B exit 5, reaps it and exits: then A
# gets its death signal, logs it and exits.
ROOT = r"""
import ctypes, os, signal, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
log = open(sys.argv[1], "a", buffering=1)
go = sys.argv[1] + ".go"
libc.prctl(15, b"cs-root", 0, 0, 0)
kid = lambda *a: subprocess.Popen([sys.executable, "-c", CHILD, *a], stdin=subprocess.DEVNULL)
a, b = kid(sys.argv[1], "child-marker-a", "a"), kid(sys.argv[1], "child-marker-b", "b")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})     # not inherited by A, B
signal.signal(signal.SIGUSR1, lambda s, f: log.write("root got 10\n"))
signal.signal(signal.SIGUSR2, lambda s, f: log.write("root got 12\n"))
log.write(f"ready {a.pid} {b.pid}\n")
while not os.path.exists(go):
    time.sleep(0.005)
log.write(f"root pending {sorted(int(s) for s in signal.sigpending())}\n")
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1, signal.SIGUSR2})
open(go + "-b", "w").close()
pid, status = os.waitpid(b.pid, 0)
log.write(f"root reaped {pid} {os.waitstatus_to_exitcode(status)}\n")
"""
CHILD = r"""
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
log = open(sys.argv[1], "a", buffering=1)
me = sys.argv[3]
libc.prctl(15, f"cs-child-{me}".encode(), 0, 0, 0)
if me == "a":
    signal.signal(signal.SIGUSR1, lambda s, f: (log.write("a pdeath 10\n"), os._exit(0)))
    libc.prctl(1, signal.SIGUSR1, 0, 0, 0)
    log.write("a armed\n")
    while True:
        time.sleep(1)
while not os.path.exists(sys.argv[1] + ".go-b"):
    time.sleep(0.005)
os._exit(5)
"""


def wait_log(log: Path, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in (got := log.read_text()):
        assert time.monotonic() < deadline, got
        time.sleep(0.01)
    return got


def status_mask(pid: int, field: str) -> int:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1], 16)


def test_tree_keeps_pending_signals_pdeathsig_wait_names_and_cmdline(tmp_path):
    log = tmp_path / "log"
    log.touch()
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", f"CHILD = {CHILD!r}\n" + ROOT, log, "root-marker"],
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    pids: list[int] = []
    restored = False
    try:
        a, b = map(int, wait_log(log, "ready ").split("ready ")[1].split()[:2])
        pids = [proc.pid, a, b]
        libc = ctypes.CDLL(None, use_errno=True)
        os.kill(proc.pid, signal.SIGUSR1)                             # the process's shared queue
        assert libc.syscall(234, proc.pid, proc.pid, signal.SIGUSR2) == 0     # tgkill: the leader's own
        deadline = time.monotonic() + 10
        while Path(f"/proc/{a}/comm").read_text() != "cs-child-a\n" or \
                Path(f"/proc/{b}/comm").read_text() != "cs-child-b\n":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        wait_log(log, "a armed\n")              # A has set its death signal
        before = {p: (Path(f"/proc/{p}/comm").read_text(), Path(f"/proc/{p}/cmdline").read_bytes()) for p in pids}
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", check=True)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        assert {p: (Path(f"/proc/{p}/comm").read_text(), Path(f"/proc/{p}/cmdline").read_bytes())
                for p in pids} == before
        assert b"child-marker-a" in before[a][1] and before[proc.pid][0] == "cs-root\n"
        assert status_mask(proc.pid, "ShdPnd") == 1 << (signal.SIGUSR1 - 1)
        assert status_mask(proc.pid, "SigPnd") == 1 << (signal.SIGUSR2 - 1)
        Path(f"{log}.go").touch()
        text = wait_log(log, "a pdeath 10\n")
        assert "root pending [10, 12]\n" in text
        assert "root got 10\n" in text and "root got 12\n" in text
        assert f"root reaped {b} 5\n" in text
        reap_orphans(pids=pids)
        assert not any(os.path.exists(f"/proc/{p}") for p in pids)
    finally:
        kill_tree(proc, pids, restored)
