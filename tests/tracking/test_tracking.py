"""userfaultfd write tracking and pre-dump series on real processes."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from coldsnap.dump.dump import dump
from coldsnap.dump.iterate import PreDumpSeries, pre_dump_series, pre_dump_tracked
from coldsnap.images.chain import PageChain
from coldsnap.images.directory import ImageDir
from coldsnap.images.pages import PagemapReader
from coldsnap.kernel import pagemap as pm
from coldsnap.kernel.procfs import read_maps, read_status
from coldsnap.memory.ranges import Ranges
from coldsnap.memory.scan import scan_saved_pages
from coldsnap.memory.tracking import PARK_FD_MIN, PROBE_QUERY, TrackingRefused, UffdTracker, uffd_fds
from coldsnap.memory.vma import classify_all
from coldsnap.seize.freezer import freeze
from coldsnap.seize.remote import RemoteCalls, frozen_calls

sys.path.insert(0, str(Path(__file__).parents[1] / "dump"))
from predump_helpers import PG, image_pages, wait_quiet  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "seize"))
from rseq_mask import live_rseq_areas, masked  # noqa: E402
from seize_helpers import thread_states  # noqa: E402

FILLER = 0x100000000000
NEWMAP = 0x400000000000
UREGION = 0x500000000000
MOVED = 0x700000000000
GOLDEN = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1


def pattern_word(addr: int, gen: int) -> int:
    return ((addr * GOLDEN) & M64) ^ gen


@pytest.fixture
def pattern(spawn, workload_bin):
    def start(filler_pages=4096):
        w = spawn([workload_bin("mem_pattern"), filler_pages, 64])
        wait_quiet(w.pid)
        return w
    return start


@pytest.fixture
def target(spawn, workload_bin):
    def start(filler_pages=1024):
        w = spawn([workload_bin("track_target"), filler_pages])
        wait_quiet(w.pid)
        return w
    return start


def ask(w, line: str) -> str:
    answer = w.send(line)
    wait_quiet(w.pid)
    return answer


def filler_present(images: Path, pid: int, n: int) -> set[int]:
    return {a for a in image_pages(images, pid) if FILLER <= a < FILLER + n * PG}


def uffd_in_fdinfo(pid: int) -> list[int]:
    """fds whose fdinfo is a userfaultfd's (it alone shows an `API:` line)."""
    out = []
    for name in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{name}").read_text()
        except OSError:
            continue
        if any(line.startswith("API:") for line in text.splitlines()):
            out.append(int(name))
    return out


def assert_chain_equals_memory(images: Path, pid: int) -> None:
    """Every page the task would have saved now reads back from the chain unchanged (but
    the bytes of its threads' rseq areas, which the kernel rewrites as a thread changes CPU)."""
    rseq = live_rseq_areas(pid)
    present, _ = scan_saved_pages(pid, classify_all(read_maps(pid)))
    with PageChain(images, pid) as chain, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        covered = chain.covered_ranges()
        assert present.subtract(covered).nr_pages == 0, present.subtract(covered).pairs()[:4]
        for lo, hi in present.merged().pairs():
            mem.seek(lo)
            want = masked(lo, mem.read(hi - lo), rseq)
            got = masked(lo, chain.lookup(lo, (hi - lo) // PG), rseq)
            if got != want:
                bad = [lo + i * PG for i in range((hi - lo) // PG)
                       if got[i * PG:(i + 1) * PG] != want[i * PG:(i + 1) * PG]]
                raise AssertionError(f"{len(bad)} pages differ, first {bad[0]:#x}")


def assert_filler_in_chain(images: Path, pid: int, n: int = 4096) -> None:
    """The N filler pages read back from the chain as they are in memory (the rest of a
    parked tracking's scan shows its markers as pages, and an untrack's injected call
    changes a page of the target: assert_chain_equals_memory cannot follow either)."""
    with PageChain(images, pid) as chain, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(FILLER)
        want = mem.read(n * PG)
        got = chain.lookup(FILLER, n)
    bad = [i for i in range(n) if got[i * PG:(i + 1) * PG] != want[i * PG:(i + 1) * PG]]
    assert not bad, f"{len(bad)} filler pages differ, first {bad[0]}"


def assert_untracked_afterwards(w) -> None:
    assert uffd_fds(w.pid) == [] and uffd_in_fdinfo(w.pid) == []
    # and no WP_ASYNC registration is left on its memory
    fd = pm.open_pagemap(w.pid)
    try:
        with pytest.raises(OSError) as e:
            pm.PagemapScanner(fd, 4).scan(FILLER, FILLER + PG, PROBE_QUERY)
        assert e.value.errno == errno.EPERM
    finally:
        os.close(fd)
    assert w.send("write 1 5") == "wrote 1"


# -- the tracker alone ---------------------------------------------------------------------

def test_collect_reports_exactly_the_written_pages(pattern):
    w = pattern()
    with UffdTracker() as t:
        held = []
        t.arm(w.pid, lambda: frozen_calls(w.pid, released=held.append))
        assert held[0].held_ns > 0 and uffd_fds(w.pid) == []
        vmas = classify_all(read_maps(w.pid))
        new, failed = t.register_new(vmas)
        assert failed == {} and new.intersect(Ranges.of([(FILLER, FILLER + 4096 * PG)])).nr_pages == 4096
        dirty, untracked = t.collect(vmas)       # newly registered: wholly dirty, once
        assert dirty.intersect(new).nr_pages == new.nr_pages and untracked.nr_pages == 0
        # the task may not have run since the freeze ended: its return to user mode lets
        # the kernel write its rseq area (a real, reported write); let it settle first
        time.sleep(0.05)
        t.collect(vmas)
        assert t.collect(vmas)[0].nr_pages == 0  # a quiet task writes nothing
        ask(w, "write 16 7")
        dirty, _ = t.collect(vmas)
        filler = dirty.intersect(Ranges.of([(FILLER, FILLER + 4096 * PG)]))
        assert filler.pairs() == [(FILLER + i * 256 * PG, FILLER + (i * 256 + 1) * PG) for i in range(16)]
        assert dirty.nr_pages < 16 + 32          # the rest: stdio buffers, stack
        assert t.collect(vmas)[0].nr_pages == 0  # collect re-protected them
    assert_untracked_afterwards(w)


# -- series ---------------------------------------------------------------------------------

def test_second_iteration_saves_only_written_pages_with_uffd_and_all_without(pattern, tmp_path):
    w = pattern()
    wrote = {FILLER + i * 256 * PG for i in range(16)}

    def write16(i):
        assert ask(w, f"write 16 {10 + i}") == "wrote 16"

    stats = pre_dump_series(w.pid, tmp_path / "uffd", 2, track="uffd", between=write16)
    assert [s.track_backend for s in stats] == ["uffd", "uffd"]
    assert [s.mode for s in stats] == ["nofreeze", "nofreeze"]
    assert stats[0].frozen_time > 0 and stats[1].frozen_time == 0
    assert filler_present(tmp_path / "uffd" / "1", w.pid, 4096) == {FILLER + i * PG for i in range(4096)}
    assert filler_present(tmp_path / "uffd" / "2", w.pid, 4096) == wrote
    assert 16 <= stats[1].pages_written < 16 + 32
    assert stats[1].pages_skipped_parent + stats[1].pages_written == stats[0].pages_written
    assert os.readlink(tmp_path / "uffd" / "2" / "parent") == "../1"
    assert_chain_equals_memory(tmp_path / "uffd" / "2", w.pid)

    stats = pre_dump_series(w.pid, tmp_path / "none", 2, track="none", between=write16)
    assert [s.track_backend for s in stats] == ["none", "none"]
    assert all(s.frozen_time == 0 for s in stats)
    assert filler_present(tmp_path / "none" / "2", w.pid, 4096) == {FILLER + i * PG for i in range(4096)}
    assert stats[1].pages_skipped_parent == 0 and stats[1].pages_written == stats[0].pages_written
    assert_untracked_afterwards(w)


def test_chain_reads_back_as_memory_after_several_iterations(pattern, tmp_path):
    w = pattern()
    writes = {1: "write 100 21", 2: "write 7 22", 3: "write 2048 23"}
    stats = pre_dump_series(w.pid, tmp_path, 4, between=lambda i: ask(w, writes[i]))
    assert [s.pages_skipped for s in stats] == [0, 0, 0, 0]
    assert len(filler_present(tmp_path / "3", w.pid, 4096)) == 7
    assert len(filler_present(tmp_path / "4", w.pid, 4096)) == 2048
    assert_chain_equals_memory(tmp_path / "4", w.pid)
    with PageChain(tmp_path / "4", w.pid) as chain:
        chain.check()
        assert chain.lookup(FILLER, 1)[:8] == pattern_word(FILLER, 23).to_bytes(8, "little")
    assert_untracked_afterwards(w)


def test_new_mapping_between_iterations_is_saved_whole(target, tmp_path):
    w = target()
    maps = []

    def map_new(i):
        answer = ask(w, f"map 64 {30 + i}")
        maps.append(int(answer.split()[1], 16))

    with PreDumpSeries(w.pid, tmp_path) as series:
        series.step()
        map_new(1)
        s2 = series.step()
        assert series.plan.dirty.intersect(Ranges.of([(NEWMAP, NEWMAP + 64 * PG)])).nr_pages == 64
        map_new(2)
        s3 = series.step()
    assert maps == [NEWMAP, NEWMAP + (1 << 30)]
    img2 = image_pages(tmp_path / "2", w.pid)
    assert all(NEWMAP + i * PG in img2 for i in range(64))
    assert s2.pages_written < 64 + 32
    img3 = image_pages(tmp_path / "3", w.pid)
    assert not any(NEWMAP + i * PG in img3 for i in range(64))     # unchanged since 2
    assert all(maps[1] + i * PG in img3 for i in range(64))
    assert s3.pages_written < 64 + 32
    assert_chain_equals_memory(tmp_path / "3", w.pid)
    assert_untracked_afterwards(w)


def test_moved_and_unmapped_areas_between_iterations(target, tmp_path):
    """mremap drops the uffd registration: the moved area is saved whole, registered again,
    and its later writes are tracked; unmapped pages leave the pagemap (not even PE_PARENT)."""
    w = target(1024)
    with PreDumpSeries(w.pid, tmp_path) as series:
        series.step()
        assert ask(w, "move 512 64") == f"moved {MOVED:#x}"
        assert ask(w, "unmap 700 64") == "unmapped 64"
        s2 = series.step()
        img2 = image_pages(tmp_path / "2", w.pid)
        assert all(MOVED + i * PG in img2 for i in range(64))
        assert s2.pages_written < 64 + 32
        with PagemapReader(ImageDir.open(tmp_path / "2"), w.pid) as r:
            gone = Ranges.of([(FILLER + 700 * PG, FILLER + 764 * PG)])
            assert r.spans().intersect(gone).nr_pages == 0
        assert ask(w, "mwrite 5 41") == "mwrote 5"
        s3 = series.step()
        img3 = image_pages(tmp_path / "3", w.pid)
        assert {a for a in img3 if MOVED <= a < MOVED + 64 * PG} == {MOVED + i * PG for i in range(5)}
        assert s3.pages_written < 5 + 32
    assert_chain_equals_memory(tmp_path / "3", w.pid)
    assert_untracked_afterwards(w)


def test_pages_skipped_as_unreadable_are_saved_by_the_next_iteration(target, tmp_path):
    w = target(1024)
    with PreDumpSeries(w.pid, tmp_path) as series:
        series.step()
        ask(w, "fill 100 8 41")          # written ...
        ask(w, "prot 100 8 0")           # ... then unreadable: skipped, absent from image 2
        s2 = series.step()
        assert s2.pages_skipped == 8
        ask(w, "prot 100 8 3")           # readable again, not written: only absent from 2
        s3 = series.step()
    with PagemapReader(ImageDir.open(tmp_path / "2"), w.pid) as r:
        assert r.skipped.pairs() == [(FILLER + 100 * PG, FILLER + 108 * PG)]
    assert not any(FILLER + (100 + i) * PG in image_pages(tmp_path / "2", w.pid) for i in range(8))
    assert filler_present(tmp_path / "3", w.pid, 1024) == {FILLER + (100 + i) * PG for i in range(8)}
    assert s3.pages_skipped == 0
    assert_chain_equals_memory(tmp_path / "3", w.pid)
    assert_untracked_afterwards(w)


def test_target_using_userfaultfd_itself_keeps_it_and_that_vma_is_saved_whole(target, tmp_path):
    w = target()
    assert ask(w, "uffd 32").startswith("uffd ")
    own = uffd_fds(w.pid)
    assert len(own) == 1
    with PreDumpSeries(w.pid, tmp_path) as series:
        series.step()
        assert series.planner.uffd.untracked.get((UREGION, UREGION + 32 * PG), "").startswith("EBUSY")
        ask(w, "write 4 50")
        s2 = series.step()
        assert series.planner.untracked.pairs() == [(UREGION, UREGION + 32 * PG)]
    assert [s.track_backend for s in [s2]] == ["uffd"]
    img2 = image_pages(tmp_path / "2", w.pid)
    assert {a for a in img2 if UREGION <= a < UREGION + 32 * PG} == {UREGION + i * PG for i in range(16)}
    assert len(filler_present(tmp_path / "2", w.pid, 1024)) == 4
    assert_chain_equals_memory(tmp_path / "2", w.pid)
    # its own userfaultfd still serves missing pages, and only ours is gone
    assert uffd_fds(w.pid) == own
    word = pattern_word(UREGION + 20 * PG, 9)
    assert w.send("utouch 20") == f"word {word:x}"
    assert w.send("uwrite 24 51") == "uwrote 24"
    assert w.send("write 1 5") == "wrote 1"


def test_io_uring_target_is_refused_and_the_series_tracks_none(target, tmp_path):
    w = target()
    assert ask(w, "uring").split()[1].isdigit()
    with pytest.raises(TrackingRefused, match="io_uring"):
        UffdTracker().arm(w.pid, lambda: frozen_calls(w.pid))
    stats = pre_dump_series(w.pid, tmp_path, 2, between=lambda i: ask(w, "write 4 60"))
    assert [s.track_backend for s in stats] == ["none", "none"]
    assert all(s.frozen_time == 0 for s in stats)
    assert len(filler_present(tmp_path / "2", w.pid, 1024)) == 1024
    assert uffd_fds(w.pid) == []
    assert_chain_equals_memory(tmp_path / "2", w.pid)


def test_unpopulated_memory_is_not_saved_and_left_unmarked(target, tmp_path):
    """Resets put uffd-wp markers in unpopulated ptes; they look swapped to PAGEMAP_SCAN
    but must not count as pages, and must be gone once the tracker is closed."""
    sparse, n = 0x600000000000, 16384            # 64 MiB, one page in 64 written
    w = target()
    assert ask(w, f"sparse {n}") == f"sparse {sparse:#x}"
    before, _ = scan_saved_pages(w.pid, classify_all(read_maps(w.pid)))
    stats = pre_dump_series(w.pid, tmp_path, 2)
    in_sparse = lambda d: {a for a in image_pages(tmp_path / d, w.pid) if sparse <= a < sparse + n * PG}
    assert in_sparse("1") == {sparse + i * PG for i in range(0, n, 64)}
    assert in_sparse("2") == set()
    assert stats[0].pages_written == before.nr_pages
    fd = pm.open_pagemap(w.pid)
    try:
        entries = pm.read_entries(fd, sparse, sparse + n * PG)
    finally:
        os.close(fd)
    assert int(((entries & np.uint64(pm.PM_SWAPPED)) != 0).sum()) == 0
    assert int(((entries & np.uint64(pm.PM_PRESENT)) != 0).sum()) == n // 64
    assert_chain_equals_memory(tmp_path / "2", w.pid)
    assert_untracked_afterwards(w)


def test_arm_in_the_callers_freeze(pattern):
    """memory/ gets its injected calls from above: here a session in a freeze of our own."""
    w = pattern()
    with freeze(w.pid) as task:
        with UffdTracker() as t:
            t.arm(w.pid, lambda: RemoteCalls(task))
            assert t.fd is not None and uffd_fds(w.pid) == []
            assert thread_states(w.pid)[w.pid][0] == "t"      # still frozen: ours to resume
            task.resume()
            assert_untracked_afterwards(w)


def test_parking_in_a_threaded_target_leaves_its_fd_table_as_it_was(spawn, workload_bin, tmp_path):
    """Growing a table that threads share waits for an RCU grace period, all of it frozen:
    the parked fd takes the table's last slot instead (fd 900 only in a larger table)."""
    w = spawn([workload_bin("state_threads")], stderr=subprocess.DEVNULL)
    wait_quiet(w.pid)
    size = int(read_status(w.pid)["FDSize"])
    assert len(os.listdir(f"/proc/{w.pid}/task")) > 1 and size < 900
    stats = pre_dump_tracked(w.pid, tmp_path / "1")
    assert stats.uffd_fd == size - 1 >= PARK_FD_MIN and uffd_in_fdinfo(w.pid) == [size - 1]
    assert int(read_status(w.pid)["FDSize"]) == size
    dump(w.pid, tmp_path / "2", prev_images_dir=tmp_path / "1", leave_running=True)
    assert uffd_in_fdinfo(w.pid) == []      # the dump recognised it as coldsnap's and closed it


def test_a_failed_tracked_pre_dump_leaves_no_tracking_a_later_run_would_trust(pattern, tmp_path, monkeypatch):
    """A pre-dump that fails after its collect re-protected the written pages (a full disk,
    Ctrl-C) committed no image of them: the parked tracking is closed, so the next run on
    the same parent saves them instead of calling them unchanged."""
    import coldsnap.dump.iterate as iterate
    from coldsnap.dump.untrack import untrack
    from coldsnap.errors import ImageError
    w = pattern()
    pre_dump_tracked(w.pid, tmp_path / "1")
    assert ask(w, "write 16 40") == "wrote 16"
    real = iterate.save_step

    def then_fail(*a, **kw):
        real(*a, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(iterate, "save_step", then_fail)
    with pytest.raises(ImageError, match="No space left on device"):
        pre_dump_tracked(w.pid, tmp_path / "2", prev_images_dir=tmp_path / "1")
    monkeypatch.undo()
    assert uffd_fds(w.pid) == [] and not (tmp_path / "2").exists()
    pre_dump_tracked(w.pid, tmp_path / "3", prev_images_dir=tmp_path / "1")
    assert_filler_in_chain(tmp_path / "3", w.pid)
    untrack(w.pid)
    # a -D refused before anything is saved arms nothing in the target
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    with pytest.raises(ImageError):
        pre_dump_tracked(w.pid, tmp_path / "full")
    assert uffd_fds(w.pid) == []


def test_a_chain_never_adopts_another_tracking_parked_at_its_fd_since(pattern, tmp_path):
    """Chain A parks its userfaultfd at fd N; a fresh pre-dump B closes it and parks its own
    at N. Continuing A must not adopt B's (reset after A's images: the pages written
    between would be called unchanged); the recorded inode tells them apart."""
    from coldsnap.dump.untrack import untrack
    w = pattern()
    a = pre_dump_tracked(w.pid, tmp_path / "A")
    assert ask(w, "write 16 41") == "wrote 16"
    b = pre_dump_tracked(w.pid, tmp_path / "B")
    assert a.uffd_fd == b.uffd_fd >= PARK_FD_MIN
    c = pre_dump_tracked(w.pid, tmp_path / "C", prev_images_dir=tmp_path / "A")
    assert c.pages_skipped_parent == 0      # started afresh, as with no tracking to adopt
    d = pre_dump_tracked(w.pid, tmp_path / "D", prev_images_dir=tmp_path / "C")
    assert d.pages_skipped_parent > 0       # C's own tracking is adopted
    assert_filler_in_chain(tmp_path / "D", w.pid)
    untrack(w.pid)


def test_memory_never_imports_seize():
    import ast
    src = Path(__file__).parents[2] / "src" / "coldsnap" / "memory"
    imports = [(p.name, node.module) for p in src.glob("*.py") for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.ImportFrom) and node.module and "seize" in node.module]
    assert imports == []
