"""Helpers of the process-tree tests: tests/workloads/tree_counters.c (four processes, one
log each) started, waited for and reaped."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import build_workload

ROLES = ("m", "a", "a1", "b")
READY = re.compile(r"^ready (\d+) (\d+) (\d+) (\d+)$", re.M)
TICK = re.compile(r"^tick (\d+) ok$", re.M)


@dataclass
class Ids:
    pid: int
    ppid: int
    pgid: int
    sid: int


def tids_now(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def ids_now(pid: int) -> Ids | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = stat.rsplit(")", 1)[1].split()
    if f[0] == "Z":
        return None
    return Ids(pid, int(f[1]), int(f[2]), int(f[3]))


@dataclass
class CounterTree:
    """The running tree_counters workload: role -> ids as each process reported them."""
    proc: subprocess.Popen
    logdir: Path
    ids: dict[str, Ids] = field(default_factory=dict)

    def log(self, role: str) -> str:
        p = self.logdir / f"{role}.log"
        return p.read_text() if p.exists() else ""

    def ticks(self, role: str) -> list[int]:
        return [int(n) for n in TICK.findall(self.log(role))]

    def fails(self) -> list[str]:
        return [ln for r in ROLES for ln in self.log(r).splitlines() if ln.startswith("FAIL")]

    def wait_ticks(self, more: int = 3, timeout: float = 10.0) -> None:
        """Until every process logged MORE ticks past what it has now."""
        wait_for_ticks(self, ROLES, more, timeout)

    @property
    def pids(self) -> list[int]:
        return [self.ids[r].pid for r in ROLES]

    def kill_all(self) -> None:
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_for_ticks(workload, roles, more: int, timeout: float) -> None:
    """Until each of ROLES logged MORE ticks past what it has now (workload.ticks(role) and
    workload.log(role), the latter for the message when time runs out)."""
    base = {r: len(workload.ticks(r)) for r in roles}
    deadline = time.monotonic() + timeout
    while any(len(workload.ticks(r)) < base[r] + more for r in roles):
        assert time.monotonic() < deadline, {r: workload.log(r)[-300:] for r in roles}
        time.sleep(0.02)


def start_counter_tree(logdir: Path) -> CounterTree:
    """tree_counters in a session of its own (the root leads its session and group)."""
    logdir.mkdir(parents=True, exist_ok=True)
    binary = build_workload("tree_counters")
    proc = subprocess.Popen([str(binary), str(logdir)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, start_new_session=True)
    tree = CounterTree(proc, logdir)
    deadline = time.monotonic() + 10
    while len(tree.ids) < len(ROLES):
        assert time.monotonic() < deadline, "tree_counters did not get ready"
        for r in ROLES:
            m = READY.search(tree.log(r))
            if m:
                tree.ids[r] = Ids(*map(int, m.groups()))
        time.sleep(0.01)
    return tree


def wait_for_log(path: Path, pattern: str, timeout: float = 15.0) -> str:
    """The log's whole text once one of its complete lines matches PATTERN (a regular
    expression; ^ and $ match at each line); an assertion naming the pattern after TIMEOUT
    seconds. A line still being written is not looked at: `^ready ` could match it, and its
    numbers be cut short."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        text = text[:text.rfind("\n") + 1]
        if re.search(pattern, text, re.M):
            return text
        assert time.monotonic() < deadline, f"no {pattern!r} in {text[-600:]!r}"
        time.sleep(0.01)


def reap_orphans(timeout: float = 5.0, pids=()) -> None:
    """Reap (we are a subreaper) until none of PIDS exists any more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not any(os.path.exists(f"/proc/{p}") for p in pids) or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def kill_tree(proc: subprocess.Popen, pids, restored: bool) -> None:
    """Kill every process PIDS of a test's tree (restored or not) and reap them; PROC, the
    root the test started, is waited for when it was not restored."""
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not restored:
        proc.wait(timeout=10)
    reap_orphans(pids=pids)


def in_session(sid: int) -> list[int]:
    """Living processes of session SID (zombies left out)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[3]) == sid and fields[0] not in "ZX":
            out.append(int(d))
    return out
