"""The blind spots of write tracking (docs: linux-notes, "Pre-dumps without freezing, and
the blind spots of write tracking"): memory that changes without a write fault through the
target's own page tables. Each test shows coldsnap never restores a stale page there.

- shared anonymous memory written by another process, and MADV_REMOVE on shared memory:
  pre-dumps never save shared memory; the final dump saves it whole from the object itself
  (no PE_PARENT), so a restore shows what the memory holds at the dump;
- io_uring: tracking is refused (tests/tracking/test_tracking.py::
  test_io_uring_target_is_refused_and_the_series_tracks_none covers the pre-dump side);
  `coldsnap dump` refuses the target outright and leaves it running, untraced.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coldsnap.dump.dump import dump
from coldsnap.dump.iterate import pre_dump_tracked
from coldsnap.images.chain import PageChain
from coldsnap.images.directory import ImageDir
from coldsnap.images.pages import PE_PARENT, PagemapReader
from coldsnap.kernel.procfs import read_maps, read_status
from coldsnap.memory.tracking import uffd_fds
from coldsnap.memory.vma import Kind, classify_all

sys.path.insert(0, str(Path(__file__).parents[1] / "restore"))
from restore_helpers import LogWorkload, coldsnap, kill_and_reap, ppid_of  # noqa: E402

PG = 4096
PAGES = 256
GOLDEN = 0x9E3779B97F4A7C15


def region_sum(data: bytes) -> int:
    """The workloads' checksum: sum of word[j] * (2j + 1) mod 2^64."""
    w = np.frombuffer(data, dtype=np.uint64)
    return int((w * (2 * np.arange(len(w), dtype=np.uint64) + np.uint64(1))).sum(dtype=np.uint64))


def pattern(gen: int, pages: int = PAGES) -> bytes:
    j = np.arange(pages * PG // 8, dtype=np.uint64)
    return ((j * np.uint64(GOLDEN)) ^ np.uint64(gen)).tobytes()


class Shared:
    """blind_shared under a LogWorkload: the target, its writing child, the region."""

    def __init__(self, workload_bin, tmp: Path):
        self.w = LogWorkload([workload_bin("blind_shared"), PAGES], tmp / "blind_shared.log")
        self.w.wait_ready()
        ready = next(ln for ln in self.w.lines() if ln.startswith("ready"))
        kv = dict(x.split("=") for x in ready.split()[1:])
        self.pid, self.child = self.w.pid, int(kv["child"])
        self.addr, self.first_sum = int(kv["shm"], 16), int(kv["sum"], 16)
        shm = [v for v in classify_all(read_maps(self.pid)) if v.kind is Kind.ANON_SHARED]
        assert len(shm) == 1 and shm[0].start == self.addr and shm[0].size == PAGES * PG
        self.shmid, self.pgoff = shm[0].inode, shm[0].pgoff

    def ask(self, who: int, sig: int, prefix: str) -> str:
        """Signal the target or the child and wait for its next line starting with prefix."""
        n = self.w.count_lines(prefix)
        os.kill(who, sig)
        self.w.wait_for(repr(prefix), lambda: self.w.count_lines(prefix) > n)
        return [ln for ln in self.w.lines() if ln.startswith(prefix)][-1]

    def child_writes(self) -> int:
        line = self.ask(self.child, signal.SIGUSR1, "child wrote")
        return int(line.split()[-1], 16)

    def target_sum(self) -> tuple[int, int]:
        _, s, _, zero = self.ask(self.pid, signal.SIGUSR1, "sum ").split()
        return int(s, 16), int(zero)

    def memory(self) -> bytes:
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
            return os.pread(mem.fileno(), PAGES * PG, self.addr)

    def reap_after_dump(self) -> None:
        """The dump SIGKILLed the target; its writer (outside its tree, adopted by us): kill, reap both."""
        self.w.reap_dumped()
        kill_and_reap(self.child)
        assert not os.path.exists(f"/proc/{self.child}")

    def stop(self) -> None:
        self.w.stop()
        if ppid_of(self.child) == os.getpid():
            kill_and_reap(self.child)


@pytest.fixture
def shared(workload_bin, tmp_path):
    made = []

    def start() -> Shared:
        s = Shared(workload_bin, tmp_path)
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


def no_shmem_images(d: Path) -> bool:
    return not list(d.glob("pagemap-shmem-*.img"))


def shmem_runs(d: Path, shmid: int) -> list[tuple[int, int, int]]:
    with PagemapReader(ImageDir.open(d, follow_parent=False), shmid, shmem=True) as r:
        return [(run.vaddr, run.nr_pages, run.flags) for run in r.runs()]


def restore_and_sum(s: Shared, images: Path) -> tuple[int, int]:
    coldsnap("restore", "-D", images, "-d").check()
    s.w.adopt_restored()
    return s.target_sum()


# -- shared memory written by another process ------------------------------------------------

def test_shared_memory_written_by_another_process_is_saved_whole_and_restored(shared, tmp_path):
    s = shared()
    assert s.first_sum == region_sum(pattern(1))
    pre_dump_tracked(s.pid, tmp_path / "1")
    assert s.child_writes() == region_sum(pattern(2))        # no write fault in the target
    st2 = pre_dump_tracked(s.pid, tmp_path / "2", prev_images_dir=tmp_path / "1")
    assert st2.track_backend == "uffd" and st2.frozen_time == 0
    last = s.child_writes()                                   # again, after the last pre-dump
    assert last == region_sum(pattern(3))
    # pre-dumps hold no shared page at all: nothing stale to take from them
    for d in ("1", "2"):
        assert no_shmem_images(tmp_path / d)
        with PageChain(tmp_path / d, s.pid) as chain:
            covered = chain.covered_ranges().pairs()
        assert not any(lo < s.addr + PAGES * PG and s.addr < hi for lo, hi in covered)
    want = s.memory()
    assert want == pattern(3) and s.target_sum() == (last, 0)
    stats = dump(s.pid, tmp_path / "3", prev_images_dir=tmp_path / "2")
    assert stats.track_backend == "uffd" and stats.pages_skipped_parent > 0
    s.reap_after_dump()
    runs = shmem_runs(tmp_path / "3", s.shmid)
    assert runs and not any(f & PE_PARENT for _, _, f in runs)
    assert sum(n for _, n, _ in runs) == PAGES
    with PageChain(tmp_path / "3", s.shmid, shmem=True) as chain:
        assert chain.lookup(s.pgoff, PAGES) == want
    # the restored target reads what the child wrote last
    assert restore_and_sum(s, tmp_path / "3") == (last, 0)


# -- MADV_REMOVE ---------------------------------------------------------------------------

def test_hole_punched_shared_pages_restore_as_zero(shared, tmp_path):
    s = shared()
    assert s.child_writes() == region_sum(pattern(2))
    pre_dump_tracked(s.pid, tmp_path / "1")
    assert s.ask(s.pid, signal.SIGUSR2, "removed") == f"removed {PAGES // 2}"
    # (nothing reads the punched pages before the dump: a read fault would allocate zeroed
    # shmem pages there again, which the dump then saves as present zero pages)
    dump(s.pid, tmp_path / "2", prev_images_dir=tmp_path / "1")
    s.reap_after_dump()
    assert no_shmem_images(tmp_path / "1")
    half = PAGES // 2 * PG
    want = bytes(half) + pattern(2)[half:]
    runs = shmem_runs(tmp_path / "2", s.shmid)
    # the punched pages are absent (they hold no data), the rest present, none from a parent
    assert runs == [(s.pgoff + half, PAGES // 2, runs[0][2])] and not runs[0][2] & PE_PARENT
    with PageChain(tmp_path / "2", s.shmid, shmem=True) as chain:
        assert chain.lookup(s.pgoff + half, PAGES // 2) == want[half:]
    assert restore_and_sum(s, tmp_path / "2") == (region_sum(want), PAGES // 2)
    assert region_sum(want) != region_sum(pattern(2))


def test_hole_punched_shared_pages_read_since_are_saved_as_zero(shared, tmp_path):
    s = shared()
    assert s.child_writes() == region_sum(pattern(2))
    pre_dump_tracked(s.pid, tmp_path / "1")
    assert s.ask(s.pid, signal.SIGUSR2, "removed") == f"removed {PAGES // 2}"
    punched_sum, zero = s.target_sum()        # its reads fault fresh zero pages in
    want = s.memory()
    half = PAGES // 2 * PG
    assert want == bytes(half) + pattern(2)[half:] and zero == PAGES // 2
    assert punched_sum == region_sum(want)
    dump(s.pid, tmp_path / "2", prev_images_dir=tmp_path / "1")
    s.reap_after_dump()
    runs = shmem_runs(tmp_path / "2", s.shmid)
    assert not any(f & PE_PARENT for _, _, f in runs)
    with PageChain(tmp_path / "2", s.shmid, shmem=True) as chain:
        for lo, hi in chain.covered_ranges().pairs():
            assert chain.lookup(lo, (hi - lo) // PG) == want[lo - s.pgoff:hi - s.pgoff]
    assert restore_and_sum(s, tmp_path / "2") == (punched_sum, PAGES // 2)


# -- io_uring ------------------------------------------------------------------------------

@pytest.mark.parametrize("mapped", [True, False], ids=["ring-mapped", "instance-only"])
def test_dump_refuses_an_io_uring_target_and_leaves_it_running(mapped, spawn, workload_bin, tmp_path):
    w = spawn([workload_bin("blind_uring"), "map" if mapped else "nomap"], stderr=subprocess.DEVNULL)
    m = re.fullmatch(r"ready fd=(\d+) ring=(0x[0-9a-f]+|0)", w.ready)
    assert m, w.ready
    fd, ring = int(m.group(1)), int(m.group(2), 16)
    assert os.readlink(f"/proc/{w.pid}/fd/{fd}") == "anon_inode:[io_uring]"
    # a tracked pre-dump first: tracking is refused, nothing is parked in the target
    r = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "1", "--track-mem", "uffd")
    assert r.returncode == 0, r.stderr
    assert uffd_fds(w.pid) == []
    r = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "2", "--prev-images-dir", tmp_path / "1")
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coldsnap: "), r.stderr
    if mapped:
        assert f"mapping {ring:#x}-" in lines[0] and "io_uring ring is not supported" in lines[0], lines
    else:
        assert f"fd {fd}" in lines[0] and "io_uring" in lines[0], lines
    assert not (tmp_path / "2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    status = read_status(w.pid)
    assert status["State"][:1] in ("S", "R") and int(status["TracerPid"]) == 0
    assert w.send("ping") == "alive"
