"""`coldsnap dump` + `coldsnap restore` round trips on real workloads, and restore's refusals.

Every round trip: start -> "ready" + 3 ticks -> dump (the task is SIGKILLed; we reap it and
wait for /proc/PID to go) -> `restore -d` -> the same PID with the same TIDs, reparented to
us -> 5 more ticks, no FAIL line, tick numbers carry on from before the dump -> the
workload's own signal checks -> SIGKILL and reap in a finally.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from coldsnap.images.framing import read_image, read_single, write_image
from coldsnap.images.pages import PE_PRESENT

from restore_helpers import (ALL_WORKLOADS, LogWorkload, alive, assert_one_line_error, coldsnap,
                             exists, kill_and_reap, our_children, poke, start_time_of,
                             start_workload, tids, wait_gone)

PAGE = 4096


def dump_and_reap(w: LogWorkload, images: Path, *extra) -> None:
    coldsnap("dump", "-t", w.pid, "-D", images, *extra).check()
    w.reap_dumped()


def restore_detached(w: LogWorkload, images: Path) -> None:
    coldsnap("restore", "-D", images, "-d").check()
    w.adopt_restored()


def round_trip(w: LogWorkload, images: Path) -> None:
    """Dump, reap, restore; the process must come back whole and keep ticking."""
    threads_before = tids(w.pid)
    dump_and_reap(w, images)
    ticks_at_dump = len(w.ticks())
    restore_detached(w, images)
    assert tids(w.pid) == threads_before, "TIDs differ after restore"
    w.wait_ticks(5)
    w.assert_healthy()
    assert w.ticks()[ticks_at_dump] == ticks_at_dump + 1


@pytest.mark.parametrize("name", ALL_WORKLOADS)
def test_dump_restore_round_trip(name, workload_bin, python_exe, tmp_path):
    with start_workload(name, workload_bin, python_exe, tmp_path) as w:
        poke(name, w, 1)
        round_trip(w, tmp_path / "img")
        poke(name, w, 2)        # handlers, pipe data, listening socket still work
        w.wait_ticks(2)
        w.assert_healthy()


def test_three_round_trips_in_a_row(workload_bin, python_exe, tmp_path):
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        for i in range(3):
            round_trip(w, tmp_path / f"img{i}")


def test_restore_from_a_pre_dump_chain(workload_bin, python_exe, tmp_path):
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        base = tmp_path / "base"
        base.mkdir()
        coldsnap("pre-dump", "-t", w.pid, "-D", base / "1", "--track-mem", "uffd").check()
        w.wait_ticks(3)
        coldsnap("pre-dump", "-t", w.pid, "-D", base / "2", "--prev-images-dir", base / "1",
                 "--track-mem", "uffd").check()
        w.wait_ticks(3)
        round_trip_dir = base / "3"
        threads_before = tids(w.pid)
        dump_and_reap(w, round_trip_dir, "--prev-images-dir", base / "2")
        ticks_at_dump = len(w.ticks())
        restore_detached(w, round_trip_dir)
        assert tids(w.pid) == threads_before
        w.wait_ticks(5)
        w.assert_healthy()
        assert w.ticks()[ticks_at_dump] == ticks_at_dump + 1


# ---------------------------------------------------------------- refusals

def restore_refused(images: Path, pid: int | None) -> None:
    """restore must fail with one `coldsnap:` line and create no process."""
    before = our_children()
    try:
        run = coldsnap("restore", "-D", images, "-d")
        time.sleep(0.1)     # let anything it left behind show up
        new = our_children() - before
        assert_one_line_error(run)
        assert not new, f"restore left processes behind: {sorted(new)}"
        if pid is not None:
            assert not exists(pid), f"PID {pid} exists after a failed restore"
    finally:
        for child in our_children() - before:
            kill_and_reap(child)


def dumped(name, workload_bin, python_exe, tmp_path) -> tuple[Path, int]:
    """A finished dump of a workload (the task killed and reaped): (images, pid)."""
    with start_workload(name, workload_bin, python_exe, tmp_path) as w:
        dump_and_reap(w, tmp_path / "img")
    return tmp_path / "img", w.pid


def test_restore_refuses_a_missing_dir(tmp_path):
    restore_refused(tmp_path / "nowhere", None)


def test_restore_refuses_an_empty_dir(tmp_path):
    (tmp_path / "img").mkdir()
    restore_refused(tmp_path / "img", None)


def test_restore_refuses_a_pre_dump(workload_bin, python_exe, tmp_path):
    """A pre-dump's images have memory but no core images."""
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "img").check()
    wait_gone(w.pid)
    assert not list((tmp_path / "img").glob("core-*.img"))
    restore_refused(tmp_path / "img", w.pid)


def pages_files(images: Path) -> list[Path]:
    return sorted(images.glob("pages-*.img"), key=lambda p: p.stat().st_size)


def test_restore_refuses_truncated_pages(workload_bin, python_exe, tmp_path):
    images, pid = dumped("rst_memory", workload_bin, python_exe, tmp_path)
    biggest = pages_files(images)[-1]
    size = biggest.stat().st_size
    assert size >= 2 * PAGE
    os.truncate(biggest, (size // 2) // PAGE * PAGE)
    restore_refused(images, pid)


def test_restore_refuses_a_pagemap_longer_than_its_pages(workload_bin, python_exe, tmp_path):
    """One present run grows by a page that pages-N.img does not hold (the run still lies
    inside its VMA and before the next run, so only the page count is wrong)."""
    images, pid = dumped("rst_memory", workload_bin, python_exe, tmp_path)
    pagemap = images / f"pagemap-{pid}.img"
    head, *entries = read_image(pagemap)
    vmas = [(v.start, v.end) for v in read_single(images / f"mm-{pid}.img").vmas]

    def nr(e):
        return e.nr_pages if e.HasField("nr_pages") else e.compat_nr_pages

    def room_after(i):
        end = entries[i].vaddr + nr(entries[i]) * PAGE
        nxt = entries[i + 1].vaddr if i + 1 < len(entries) else 1 << 64
        in_vma = any(s <= entries[i].vaddr and end < e for s, e in vmas)
        return in_vma and nxt > end

    present = [i for i, e in enumerate(entries) if not e.HasField("flags") or e.flags & PE_PRESENT]
    candidates = [i for i in present if room_after(i)] or present[-1:]
    assert candidates, "no present run in the dump"
    e = entries[candidates[-1]]
    e.nr_pages = nr(e) + 1
    e.compat_nr_pages = e.nr_pages
    pagemap.unlink()
    write_image(pagemap, None, [head, *entries])
    restore_refused(images, pid)


def test_restore_refuses_a_deleted_file(workload_bin, python_exe, tmp_path):
    images, pid = dumped("rst_files", workload_bin, python_exe, tmp_path)
    (tmp_path / "files" / "data.bin").unlink()
    restore_refused(images, pid)


def test_restore_refuses_a_pid_in_use(workload_bin, python_exe, tmp_path):
    """dump --leave-running, then restore while the original still runs."""
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        started = start_time_of(w.pid)
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img", "--leave-running").check()
        w.wait_ticks(2)
        restore_refused(tmp_path / "img", None)
        assert alive(w.pid) and start_time_of(w.pid) == started, "the original was disturbed"
        assert w.original is not None and w.original.poll() is None
        w.wait_ticks(3)
        w.assert_healthy()


def _rewrite(images: Path, name: str, change) -> None:
    """Decode one image, let `change` edit its entries, write it back in place."""
    from coldsnap.images.framing import read_image, write_image
    path = images / name
    entries = read_image(path)
    change(entries)
    write_image(path, None, entries)


def test_restore_refuses_images_of_another_architecture(workload_bin, python_exe, tmp_path):
    from coldsnap.images.pb import core_pb2
    images, pid = dumped("rst_clock", workload_bin, python_exe, tmp_path)
    _rewrite(images, f"core-{pid}.img", lambda es: setattr(es[0], "mtype", core_pb2.AARCH64))
    restore_refused(images, pid)


def test_restore_refuses_another_vdso_layout(workload_bin, python_exe, tmp_path):
    """Images from a kernel whose [vdso] is bigger: the vDSO cannot be moved into place."""
    from coldsnap.images.vma import VMA_AREA_VDSO
    images, pid = dumped("rst_clock", workload_bin, python_exe, tmp_path)

    def grow_vdso(es):
        vdso = next(v for v in es[0].vmas if v.status & VMA_AREA_VDSO)
        vdso.end += 4096          # the next VMA in that region is far above it
    _rewrite(images, f"mm-{pid}.img", grow_vdso)
    restore_refused(images, pid)


def test_restore_refuses_cpu_features_this_machine_lacks(workload_bin, python_exe, tmp_path, monkeypatch):
    """xstate components the CPU does not have (AMX tiles, bit 18) are refused up front."""
    images, pid = dumped("rst_clock", workload_bin, python_exe, tmp_path)
    if "amx_tile" in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has AMX")
    _rewrite(images, f"core-{pid}.img",
             lambda es: setattr(es[0].thread_info.fpregs.xsave, "xstate_bv",
                                es[0].thread_info.fpregs.xsave.xstate_bv | 1 << 18))
    restore_refused(images, pid)


@pytest.mark.parametrize("image", ["core", "mm", "files.img", "pstree.img"])
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_restore_refuses_a_damaged_image(workload_bin, python_exe, tmp_path, image, damage):
    images, pid = dumped("rst_clock", workload_bin, python_exe, tmp_path)
    name = {"core": f"core-{pid}.img", "mm": f"mm-{pid}.img"}.get(image, image)
    path = images / name
    if damage == "missing":
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) - 7])      # cut inside the last entry
    restore_refused(images, pid)
