"""Helpers of the shared-memory tests: tests/workloads/shm_family.c (a parent and two
children sharing memory of the kinds asked for) started, read, and cleaned up (its SysV
objects and /dev/shm file outlive its processes)."""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import build_workload
from tree_helpers import reap_orphans, wait_for_ticks

ROLES = ("p", "a", "b")
READY = re.compile(r"^ready (\d+)$", re.M)
TICK = re.compile(r"^tick (\d+)((?: \w+=\d+,\d+,\d+)*)$", re.M)


@dataclass
class Family:
    """The running shm_family: its processes by role and what they logged."""
    proc: subprocess.Popen
    logdir: Path
    kinds: tuple[str, ...]
    name: str               # the /dev/shm name (shm_open)
    key: int                # the SysV key of its segment and semaphore set
    pids: dict[str, int] = field(default_factory=dict)

    def log(self, role: str) -> str:
        p = self.logdir / f"{role}.log"
        return p.read_text() if p.exists() else ""

    def ticks(self, role: str) -> list[tuple[int, dict[str, tuple[int, ...]]]]:
        """(tick, kind -> the three slots as ROLE read them) per complete line."""
        out = []
        for m in TICK.finditer(self.log(role)):
            views = {}
            for item in m.group(2).split():
                kind, vals = item.split("=")
                views[kind] = tuple(int(v) for v in vals.split(","))
            out.append((int(m.group(1)), views))
        return out

    def fails(self) -> list[str]:
        return [ln for r in ROLES for ln in self.log(r).splitlines() if ln.startswith("FAIL")]

    def wait_ticks(self, more: int = 3, timeout: float = 10.0) -> None:
        wait_for_ticks(self, ROLES, more, timeout)

    def cleanup(self, restored: bool) -> None:
        """Kill and reap every process, remove the SysV objects and the /dev/shm file."""
        for pid in self.pids.values():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if not restored:
            self.proc.wait(timeout=10)
        reap_orphans(pids=list(self.pids.values()))
        remove_ipc(self.key)
        try:
            os.unlink(f"/dev/shm/{self.name.lstrip('/')}")
        except FileNotFoundError:
            pass


def remove_ipc(key: int) -> None:
    """Remove the SysV segment and semaphore set of KEY, if any."""
    for flag in ("-M", "-S"):
        subprocess.run(["ipcrm", flag, hex(key)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_family(logdir: Path, *kinds: str) -> Family:
    """shm_family with KINDS, in a session of its own; returns once the three are ready."""
    logdir.mkdir(parents=True, exist_ok=True)
    binary = build_workload("shm_family")
    name, key = f"/cs-shm-{os.getpid()}-{time.monotonic_ns()}", 0x5C000000 | (os.getpid() & 0xFFFFFF)
    remove_ipc(key)
    proc = subprocess.Popen([str(binary), str(logdir), ",".join(kinds), name, hex(key)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    fam = Family(proc, logdir, kinds, name, key)
    deadline = time.monotonic() + 10
    while len(fam.pids) < len(ROLES):
        if proc.poll() is not None:
            fam.cleanup(restored=False)
            raise AssertionError(f"shm_family exited {proc.returncode}: {fam.log('p')}")
        assert time.monotonic() < deadline, "shm_family did not get ready"
        for r in ROLES:
            m = READY.search(fam.log(r))
            if m:
                fam.pids[r] = int(m.group(1))
        time.sleep(0.01)
    return fam


def shared_inodes(pid: int) -> dict[str, int]:
    """path -> inode of every shared mapping of PID (s in the flags)."""
    out = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split(maxsplit=5)
        if len(f) == 6 and f[1][3] == "s":
            out[f[5]] = int(f[4])
    return out
