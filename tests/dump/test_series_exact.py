"""A tracked series under a target that never stops writing still reproduces its memory."""
import os
import signal
import subprocess
import time

from coldsnap.dump.iterate import PreDumpSeries
from coldsnap.images.chain import PageChain

from rseq_mask import masked, rseq_areas

WRITER = r"""
import random, sys, threading
mem = bytearray(32 << 20)
def write(seed):
    r = random.Random(seed)
    i = 0
    while True:
        i += 1
        p = r.randrange(len(mem) // 4096) * 4096
        mem[p:p + 8] = i.to_bytes(8, "little")
for s in range(3):
    threading.Thread(target=write, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def test_chain_equals_memory_after_a_final_iteration_on_a_stopped_writer(spawn, python_exe, tmp_path):
    w = spawn([python_exe, "-c", WRITER])
    with PreDumpSeries(w.pid, tmp_path, track="uffd") as series:
        for _ in range(3):
            series.step()
            time.sleep(0.05)
        os.kill(w.pid, signal.SIGSTOP)
        try:
            while open(f"/proc/{w.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
                time.sleep(0.001)
            last = series.step()
            assert last.frozen_time == 0 and last.pages_skipped_parent > 0
            with PageChain(tmp_path / "4", w.pid) as chain, \
                    open(f"/proc/{w.pid}/mem", "rb", buffering=0) as mem:
                covered = chain.covered_ranges()
                bad = []
                for s, e in covered.pairs():
                    mem.seek(s)
                    if chain.lookup(s, (e - s) // 4096) != mem.read(e - s):
                        bad.append(hex(s))
            assert bad == []
            assert covered.nr_pages * 4096 >= 32 << 20
        finally:
            os.kill(w.pid, signal.SIGCONT)



# -- the same proof through a real final dump ----------------------------------------------

UFFD_LINK = "anon_inode:[userfaultfd]"

# WRITER at a bounded rate (a 1 ms nap every 4 writes per thread: about 12k writes/s in
# all, so a final dump 50 ms after the last pre-dump has far fewer pages to save than the
# 8192 of `mem`), and pausable: a line on stdin parks every writer thread in futex() and
# the answer "paused" says they are all parked.
PAUSABLE_WRITER = r"""
import random, sys, threading, time
mem = bytearray(32 << 20)
stop, parked, block = False, [], threading.Lock()
block.acquire()
def write(seed):
    r = random.Random(seed)
    i = 0
    while True:
        i += 1
        p = r.randrange(len(mem) // 4096) * 4096
        mem[p:p + 8] = i.to_bytes(8, "little")
        if i % 4 == 0:
            time.sleep(0.001)
        if stop:
            parked.append(seed)
            block.acquire()
for s in range(3):
    threading.Thread(target=write, args=(s,), daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    stop = True
    while len(parked) < 3:
        time.sleep(0.001)
    print("paused", flush=True)
"""


def _state(pid: int, tid: int | None = None) -> str:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    return open(path).read().rsplit(")", 1)[1].split()[0]


def _wait_stopped(pid: int) -> None:
    """Every thread in the group stop: the leader's state alone says T while, under load, a
    writer thread has not taken the SIGSTOP yet and writes on after the dump's resume."""
    deadline = time.monotonic() + 5
    while any(_state(pid, int(t)) != "T" for t in os.listdir(f"/proc/{pid}/task")):
        assert time.monotonic() < deadline, f"{pid} did not stop"
        time.sleep(0.001)


def _wait_all_blocked(pid: int, syscalls=(0, 202), samples: int = 10) -> None:
    """Every thread asleep in read() or futex() for `samples` checks in a row."""
    deadline, calm = time.monotonic() + 5, 0
    while calm < samples:
        assert time.monotonic() < deadline, f"{pid} did not settle"
        tids = os.listdir(f"/proc/{pid}/task")
        ok = True
        for t in tids:
            try:
                nr = int(open(f"/proc/{pid}/task/{t}/syscall").read().split()[0])
                ok &= _state(pid, int(t)) == "S" and nr in syscalls
            except (OSError, ValueError):
                ok = False
        calm = calm + 1 if ok else 0
        time.sleep(0.005)


def _uffd_links(pid: int) -> list[str]:
    return [fd for fd in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{fd}") == UFFD_LINK]


def _tracked_chain(pid: int, base, n: int = 3):
    """n tracked pre-dumps base/1..n of a task that keeps writing; returns base/n."""
    from coldsnap.dump.iterate import pre_dump_tracked
    prev = None
    for i in range(1, n + 1):
        s = pre_dump_tracked(pid, base / str(i), prev_images_dir=prev)
        assert s.track_backend == "uffd" and (i == 1 or s.frozen_time == 0)
        assert i == 1 or s.pages_skipped_parent > 0
        prev = base / str(i)
        if i < n:
            time.sleep(0.05)
    assert len(_uffd_links(pid)) == 1               # the parked tracking, still there
    return prev


def _assert_unregistered(pid: int) -> None:
    """PM_SCAN_CHECK_WPASYNC fails with EPERM on memory no userfaultfd has registered."""
    import errno

    from coldsnap.kernel import pagemap as pm
    from coldsnap.kernel.procfs import read_maps
    from coldsnap.memory.tracking import PROBE_QUERY
    from coldsnap.memory.vma import classify_all
    fd = pm.open_pagemap(pid)
    try:
        for v in classify_all(read_maps(pid)):
            if not v.saves_pages or not v.prot & 1:
                continue
            try:
                pm.PagemapScanner(fd, 4).scan(v.start, v.end, PROBE_QUERY)
            except OSError as e:
                assert e.errno == errno.EPERM, e
            else:
                raise AssertionError(f"VMA {v.start:#x}-{v.end:#x} is still registered")
    finally:
        os.close(fd)


def _assert_final_dump_is_the_memory(pid: int, final, stats) -> None:
    """The stopped task's memory == the chain below `final`, page for page, and the dump
    itself holds only what was written since the chain (the rest PE_PARENT)."""
    from coldsnap.images.directory import ImageDir
    from coldsnap.images.pages import PE_PARENT, PE_PRESENT, PagemapReader
    from coldsnap.kernel.procfs import read_maps
    from coldsnap.memory.scan import scan_saved_pages
    from coldsnap.memory.ranges import Ranges
    from coldsnap.memory.vma import classify_all

    assert stats.track_backend == "uffd"
    assert _uffd_links(pid) == []                   # the dump removed the tracking: no fd...
    _assert_unregistered(pid)                       # ...and no registration on any VMA
    vmas = classify_all(read_maps(pid))
    present, _ = scan_saved_pages(pid, vmas)
    present = present.union(Ranges.of([(v.start, v.end) for v in vmas if v.name == "[vdso]"]))  # saved for CRIU
    with PagemapReader(ImageDir.open(final), pid) as r:
        runs = [(run.vaddr, run.nr_pages, run.flags) for run in r.runs()]
    written = sum(n for _, n, f in runs if f & PE_PRESENT)
    parent = sum(n for _, n, f in runs if f & PE_PARENT)
    assert written == stats.pages_written and parent == stats.pages_skipped_parent > 0
    assert written + parent == present.nr_pages
    assert present.nr_pages >= (32 << 20) // 4096
    # tracking was used: most pages stay in the parent. The writers go on between the last
    # pre-dump and the pause, for longer on a loaded machine (a quarter quiet, 29% seen at load 15)
    assert written < present.nr_pages * 3 // 4, (written, present.nr_pages)
    with PageChain(final, pid) as chain, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        assert present.subtract(chain.covered_ranges()).nr_pages == 0
        rseq = rseq_areas(final)
        bad = []
        for s, e in present.merged().pairs():
            mem.seek(s)
            want = masked(s, mem.read(e - s), rseq)
            got = masked(s, chain.lookup(s, (e - s) // 4096), rseq)
            bad += [s + p for p in range(0, e - s, 4096) if got[p:p + 4096] != want[p:p + 4096]]
    assert bad == [], f"{len(bad)} stale pages, first {bad[0]:#x}"


def test_chain_equals_memory_after_a_final_dump_of_a_paused_writer(spawn, python_exe, tmp_path):
    """Tracked pre-dumps while three threads write flat out, the writers paused, then
    `dump --leave-running` on top of the chain: dump + parents read back as the memory."""
    from coldsnap.dump.dump import dump

    w = spawn([python_exe, "-c", PAUSABLE_WRITER], stderr=subprocess.DEVNULL)
    prev = _tracked_chain(w.pid, tmp_path)
    assert w.send("pause") == "paused"
    _wait_all_blocked(w.pid)
    stats = dump(w.pid, tmp_path / "4", prev_images_dir=prev, leave_running=True)
    os.kill(w.pid, signal.SIGSTOP)                  # nothing may change while we compare
    try:
        _wait_stopped(w.pid)
        _assert_final_dump_is_the_memory(w.pid, tmp_path / "4", stats)
    finally:
        os.kill(w.pid, signal.SIGCONT)
    w.stop()


def test_chain_equals_memory_after_a_final_dump_on_a_stopped_writer(spawn, python_exe, tmp_path):
    """As above, but the writers are caught mid-write: SIGSTOP holds them still (the dump
    of a group-stopped task leaves it stopped)."""
    from coldsnap.dump.dump import dump

    w = spawn([python_exe, "-c", PAUSABLE_WRITER], stderr=subprocess.DEVNULL)
    prev = _tracked_chain(w.pid, tmp_path)
    os.kill(w.pid, signal.SIGSTOP)
    try:
        _wait_stopped(w.pid)
        stats = dump(w.pid, tmp_path / "4", prev_images_dir=prev, leave_running=True)
        _wait_stopped(w.pid)                        # resumed into its group stop
        _assert_final_dump_is_the_memory(w.pid, tmp_path / "4", stats)
    finally:
        os.kill(w.pid, signal.SIGCONT)
    w.stop()
