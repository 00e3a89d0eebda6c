"""The cgroup freezer, v1 (`freezer.state`) and v2 (`cgroup.freeze`): thin and policy-free.

    fz = CgroupFreezer.open("/sys/fs/cgroup/freezer/app")   # or a v2 directory
    fz.freeze(timeout)      # write the request, wait until every task of it is frozen
    fz.pids()               # processes of the cgroup and its descendants (tgids)
    fz.thaw()

v1 says FREEZING until every task is in the refrigerator, then FROZEN; v2 says `frozen 1`
in cgroup.events. Both include child cgroups. A task forked while the cgroup freezes is
born in it and frozen too, so the listing of a frozen cgroup is final.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from coldsnap.errors import CsError, TargetError


@dataclass(eq=False, repr=False)
class CgroupFreezer:
    """A freezer cgroup directory and its version (1: freezer.state, 2: cgroup.freeze)."""
    path: Path
    version: int                  # 1 or 2

    @classmethod
    def open(cls, path: str | os.PathLike) -> "CgroupFreezer":
        p = Path(path)
        if (p / "freezer.state").exists():
            return cls(p, 1)
        if (p / "cgroup.freeze").exists():
            return cls(p, 2)
        if not p.is_dir():
            raise CsError(f"--freeze-cgroup {p}: no such cgroup directory")
        raise CsError(f"--freeze-cgroup {p}: not a freezer cgroup (no freezer.state nor cgroup.freeze; "
                      f"a v2 root cannot be frozen)")

    def _write(self, name: str, text: str) -> None:
        fd = os.open(self.path / name, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        except OSError as e:
            raise CsError(f"cannot write {text!r} to {self.path / name}: {e.strerror}") from None
        finally:
            os.close(fd)

    def frozen(self) -> bool:
        if self.version == 1:
            return (self.path / "freezer.state").read_text().strip() == "FROZEN"
        return "frozen 1" in (self.path / "cgroup.events").read_text().splitlines()

    def freeze(self, timeout: float = 10.0) -> None:
        """Ask the kernel to freeze the cgroup and wait until it says it is."""
        self._write("freezer.state" if self.version == 1 else "cgroup.freeze",
                    "FROZEN" if self.version == 1 else "1")
        deadline = time.monotonic() + timeout
        naps = 0
        while not self.frozen():
            if time.monotonic() > deadline:
                raise TargetError(f"cgroup {self.path} did not freeze within {timeout:g}s")
            naps += 1
            time.sleep(0 if naps < 20 else 0.0005)

    def thaw(self) -> None:
        self._write("freezer.state" if self.version == 1 else "cgroup.freeze",
                    "THAWED" if self.version == 1 else "0")

    def pids(self) -> list[int]:
        """The processes (thread group leaders) of the cgroup and of every cgroup below it."""
        out: set[int] = set()
        for d, _, files in os.walk(self.path):
            if "cgroup.procs" in files:
                out.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
        return sorted(out)


def directories(cgroups: str, mounts: list, skip: str = "") -> list[Path]:
    """The directory of each cgroup that CGROUPS (a /proc/PID/cgroup text) names, through
    MOUNTS (procfs.cgroup_mounts); hierarchies whose line is also in SKIP (another process's
    text: where that one is already) are left out. CsError for one not mounted where a
    directory for it can be found."""
    out = []
    same = set(skip.splitlines())
    for line in cgroups.splitlines():
        if not line or line in same:
            continue
        hid, controllers, path = line.split(":", 2)
        names = set(filter(None, controllers.split(",")))
        where = next((m for m in mounts if (m.version == 2 if hid == "0" else m.version == 1 and names <= m.options)
                      and (path + "/").startswith(m.root.rstrip("/") + "/")), None)
        if where is None:
            raise CsError(f"cgroup {line}: its hierarchy is not mounted here")
        out.append(Path(where.point, path[len(where.root.rstrip("/")):].lstrip("/")))
    return out


def move_into(pid: int, directory: Path) -> None:
    """Move process PID, every thread of it, into the cgroup DIRECTORY (v1 or v2)."""
    fd = os.open(directory / "cgroup.procs", os.O_WRONLY)
    try:
        os.write(fd, b"%d" % pid)
    finally:
        os.close(fd)
