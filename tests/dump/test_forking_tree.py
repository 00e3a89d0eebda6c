"""Dumps of a tree that never stops forking and exiting (tests/workloads/forking_tree.py),
held by ptrace alone or through the cgroup freezer (`--freeze-cgroup`, v1 and v2): every
process is caught (a dump that kills the tree leaves nothing running), a child exiting during
the freeze is kept as a zombie, the cgroup is thawed on every exit path, and the tree
restored from the images goes on forking and reaping."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coldsnap.images.directory import ImageDir
from procs import WORKLOADS, coldsnap
from tree_helpers import in_session, kill_tree, reap_orphans

ROOTS = {1: Path("/sys/fs/cgroup/freezer"), 2: Path("/sys/fs/cgroup/unified")}


def reaped(log: Path) -> int:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("reaped ")]
    return int(lines[-1].split()[1]) if lines else 0


def wait_reaped(log: Path, more: int, timeout: float = 30.0) -> None:
    """Until the root has reaped MORE children beyond what the log says now."""
    target = reaped(log) + more
    deadline = time.monotonic() + timeout
    while reaped(log) < target:
        assert time.monotonic() < deadline, log.read_text()[-300:]
        time.sleep(0.01)


def frozen(cg: Path, version: int) -> bool:
    if version == 1:
        return (cg / "freezer.state").read_text().strip() != "THAWED"
    return "frozen 1" in (cg / "cgroup.events").read_text().splitlines()


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def cgroup(request):
    """(version, a new empty freezer cgroup); thawed, emptied and removed afterwards."""
    version = request.param
    cg = ROOTS[version] / f"coldsnap-test-{os.getpid()}-{time.monotonic_ns()}"
    cg.mkdir()
    try:
        yield version, cg
    finally:
        (cg / ("freezer.state" if version == 1 else "cgroup.freeze")).write_text("THAWED" if version == 1 else "0")
        deadline = time.monotonic() + 10
        while pids := (cg / "cgroup.procs").read_text().split():
            for p in pids:
                try:
                    os.kill(int(p), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            reap_orphans(timeout=0.2)
            assert time.monotonic() < deadline, pids
        cg.rmdir()


def start(log: Path, cg: Path | None = None) -> subprocess.Popen:
    def enter() -> None:
        if cg is not None:
            (cg / "cgroup.procs").write_text(str(os.getpid()))
    proc = subprocess.Popen([sys.executable, WORKLOADS / "forking_tree.py", log], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=enter, text=True)
    assert proc.stdout.readline().strip() == "ready"
    wait_reaped(log, 10)
    return proc


def end(proc: subprocess.Popen, restored: bool = False) -> None:
    kill_tree(proc, in_session(proc.pid), restored)


def dumped_pids(images: Path) -> tuple[set[int], set[int]]:
    """(living, zombie) pids of a dump."""
    d = ImageDir.open(images)
    pids = {e.pid for e in d.read("pstree.img")}
    zombies = {p for p in pids if d.read_single(f"core-{p}.img").tc.task_state == 2}
    return pids - zombies, zombies


def dump_restore_forking(tmp_path: Path, proc: subprocess.Popen, log: Path, *freeze: str) -> None:
    """Two dumps leaving the tree running (it forks on), one killing it: nothing of the
    session survives it; the restore goes on reaping with no bad status."""
    for n in range(2):
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / f"run{n}", "--leave-running", *freeze, check=True)
        living, zombies = dumped_pids(tmp_path / f"run{n}")
        assert proc.pid in living and len(living | zombies) >= 2      # children, living or not yet reaped
        wait_reaped(log, 5)
    coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", *freeze, check=True)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    reap_orphans(timeout=1)
    assert in_session(proc.pid) == [], "a process of the tree escaped the freeze"
    coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
    wait_reaped(log, 20)
    assert "bad" not in log.read_text()


def test_plain_freeze_catches_every_fork_of_a_forking_tree(tmp_path):
    log = tmp_path / "log"
    proc = start(log)
    restored = False
    try:
        dump_restore_forking(tmp_path, proc, log)
        restored = True
    finally:
        end(proc, restored)


def test_freeze_cgroup_dumps_a_forking_tree_and_thaws(tmp_path, cgroup):
    version, cg = cgroup
    log = tmp_path / "log"
    proc = start(log, cg)
    restored = False
    try:
        dump_restore_forking(tmp_path, proc, log, "--freeze-cgroup", cg)
        restored = True
        assert not frozen(cg, version)
        pre = coldsnap("pre-dump", "-t", proc.pid, "-D", tmp_path / "pre", "--freeze-cgroup", cg)
        assert pre.returncode != 0 and "is not in cgroup" in pre.stderr      # restored outside it
    finally:
        end(proc, restored)


def test_freeze_cgroup_pre_dump_live_and_frozen(tmp_path, cgroup):
    version, cg = cgroup
    log = tmp_path / "log"
    proc = start(log, cg)
    try:
        for mode in ("live", "frozen"):
            coldsnap("pre-dump", "-t", proc.pid, "-D", tmp_path / mode, "--pre-dump-mode", mode,
                     "--freeze-cgroup", cg, check=True)
            assert not frozen(cg, version)
            assert proc.pid in {e.pid for e in ImageDir.open(tmp_path / mode).read("pstree.img")}
        r = coldsnap("pre-dump", "-t", proc.pid, "-D", tmp_path / "nf", "--pre-dump-mode", "nofreeze",
                     "--freeze-cgroup", cg)
        assert r.returncode == 2 and "--freeze-cgroup holds the tree" in r.stderr
        wait_reaped(log, 5)
        assert "bad" not in log.read_text()
    finally:
        end(proc)


def test_freeze_cgroup_refuses_a_child_outside_and_bad_paths(tmp_path, cgroup):
    """A process below the root that is not in the cgroup would run during the dump: refused
    naming it, the cgroup thawed, the tree untouched; a path that is no freezer cgroup: one
    line, no images."""
    version, cg = cgroup
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint('ready', flush=True)\ntime.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        (kid,) = map(int, Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
        (cg / "cgroup.procs").write_text(str(proc.pid))          # the root only
        r = coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", "--freeze-cgroup", cg)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert f"cannot seize {kid} (child of {proc.pid}): it is not in cgroup {cg}" in r.stderr
        assert not (tmp_path / "img").exists() and not frozen(cg, version)
        for p in (proc.pid, kid):
            assert Path(f"/proc/{p}/status").read_text().count("TracerPid:\t0\n") == 1
        for bad in (tmp_path, tmp_path / "none", ROOTS[version]):
            r = coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", "--freeze-cgroup", bad)
            assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--freeze-cgroup" in r.stderr, r.stderr
            assert not (tmp_path / "img").exists()
    finally:
        os.kill(kid, signal.SIGKILL)
        proc.kill()
        proc.wait()
        reap_orphans()


def test_freeze_cgroup_frozen_before_stays_frozen(tmp_path, cgroup):
    """A cgroup the user froze before is frozen again when coldsnap lets the tree go: the
    dump with --leave-running and a live pre-dump leave every process frozen and untraced
    (nothing is reaped meanwhile), and the tree goes on once the user thaws it."""
    version, cg = cgroup
    log = tmp_path / "log"
    proc = start(log, cg)
    ctl = cg / ("freezer.state" if version == 1 else "cgroup.freeze")
    try:
        ctl.write_text("FROZEN" if version == 1 else "1")
        deadline = time.monotonic() + 10
        while not frozen(cg, version) or (version == 1 and "FREEZING" in ctl.read_text()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = reaped(log)
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", "--leave-running", "--freeze-cgroup", cg, check=True)
        coldsnap("pre-dump", "-t", proc.pid, "-D", tmp_path / "pre", "--pre-dump-mode", "live",
                 "--freeze-cgroup", cg, check=True)
        time.sleep(0.3)
        assert frozen(cg, version) and reaped(log) == before
        for p in in_session(proc.pid):
            assert "TracerPid:\t0\n" in Path(f"/proc/{p}/status").read_text()
        ctl.write_text("THAWED" if version == 1 else "0")
        wait_reaped(log, 5)
        assert "bad" not in log.read_text()
    finally:
        end(proc)
