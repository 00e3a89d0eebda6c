"""Zombies in a dumped tree: a child that exited (status 7) and one killed by SIGTERM, both
unreaped, come back as zombies with the same pid and parent, and the restored parent's
waitpid() gets the very status each had."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from procs import build_workload, coldsnap
from tree_helpers import kill_tree, reap_orphans

READY = re.compile(r"^ready (\d+) (\d+) (\d+)$", re.M)
TICK = re.compile(r"^tick (\d+) ok$", re.M)
REAPED = re.compile(r"^reaped (-?\d+) (-?\d+)$", re.M)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of PID, None when gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return f[0], int(f[1])


def _until(cond, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return got


def test_zombies_come_back_with_their_status(tmp_path):
    log = tmp_path / "parent.log"
    proc = subprocess.Popen([str(build_workload("tree_zombies")), str(tmp_path)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pids: list[int] = [proc.pid]
    restored = False
    try:
        m = _until(lambda: READY.search(log.read_text()) if log.exists() else None, "ready")
        parent, z7, zterm = map(int, m.groups())
        pids += [z7, zterm]
        _until(lambda: all(_stat(z) == ("Z", parent) for z in (z7, zterm)), "two zombies")
        coldsnap("dump", "-t", parent, "-D", tmp_path / "img", check=True)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)             # the old zombies went to us with their parent's death
        last = max(int(n) for n in TICK.findall(log.read_text()))
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        assert _stat(z7) == ("Z", parent) and _stat(zterm) == ("Z", parent)
        _until(lambda: max(int(n) for n in TICK.findall(log.read_text())) > last + 3, "ticks")
        ticks = [int(n) for n in TICK.findall(log.read_text())]
        assert ticks == list(range(1, len(ticks) + 1))      # the counter went on, no restart
        os.kill(parent, signal.SIGUSR1)
        reaped = _until(lambda: REAPED.findall(log.read_text()) if len(REAPED.findall(log.read_text())) == 2
                        else None, "the parent's waitpid")
        got = {int(p): int(s) for p, s in reaped}
        assert os.WIFEXITED(got[z7]) and os.WEXITSTATUS(got[z7]) == 7, got
        assert os.WIFSIGNALED(got[zterm]) and os.WTERMSIG(got[zterm]) == signal.SIGTERM, got
        assert _stat(z7) is None and _stat(zterm) is None
    finally:
        kill_tree(proc, pids, restored)


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except OSError:
        return None


def test_zombie_below_the_root_leading_a_group(tmp_path, python_exe):
    """A zombie that is a grandchild and leads the group of a living sibling comes back
    with its group (the sibling joins it again) and its exit status."""
    workload = Path(__file__).parent.parent / "workloads" / "tree_zombie_group.py"
    proc = subprocess.Popen([python_exe, str(workload), str(tmp_path)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pids: list[int] = [proc.pid]
    restored = False
    try:
        ready = tmp_path / "ready"
        middle, z, s = map(int, _until(lambda: ready.exists() and ready.read_text().split(), "ready"))
        pids += [middle, z, s]
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", check=True)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        assert _stat(z) == ("Z", middle) and _pgid(z) == z and _pgid(s) == z
        (tmp_path / "reap").touch()
        reaped = tmp_path / "reaped"
        pid, status = map(int, _until(lambda: reaped.exists() and reaped.read_text().split(), "reaped"))
        assert pid == z and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 5
    finally:
        kill_tree(proc, pids, restored)
