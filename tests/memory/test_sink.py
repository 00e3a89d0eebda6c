"""The page sink interface driven with a second, in-memory sink: the drain, the frozen copy
and the shared memory copy hand it exactly the planned runs, in address order, with the
target's bytes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from coldsnap.dump.shmem import save_shmem
from coldsnap.kernel.procfs import read_maps
from coldsnap.memory.drain import Drain
from coldsnap.memory.frozen_copy import save_frozen
from coldsnap.memory.plan import decide
from coldsnap.memory.ranges import Ranges
from coldsnap.memory.sink import PagemapKey, PlanFeed
from coldsnap.memory.vma import Kind, classify_all

from memory_sink import PG, MemorySink

TARGET = r"""
import ctypes, mmap, sys
m = mmap.mmap(-1, 40 * 4096, flags=mmap.MAP_PRIVATE)
for i in range(40):
    m[i * 4096:(i + 1) * 4096] = bytes([i + 1]) * 4096
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
sh = mmap.mmap(-1, 8 * 4096, flags=mmap.MAP_SHARED)
for i in (0, 1, 2, 5):
    sh[i * 4096:(i + 1) * 4096] = bytes([100 + i]) * 4096
libc = ctypes.CDLL(None)
libc.mprotect(ctypes.c_void_p(base + 8 * 4096), 4 * 4096, 0)      # 4 pages without PROT_READ
print(base, flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def target():
    proc = subprocess.Popen([sys.executable, "-c", TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGSTOP)
        yield proc.pid, base
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _plan(pid: int, base: int, skip_unreadable: bool):
    """Pages 0..40 present; the parent holds 20..30 and nobody wrote 20..25 since."""
    vmas = [v for v in classify_all(read_maps(pid)) if base <= v.start < base + 40 * PG]
    present = Ranges.of([(base, base + 40 * PG)]).split_at(np.array([v.start for v in vmas], dtype=np.uint64))
    dirty = Ranges.of([(base, base + 20 * PG), (base + 25 * PG, base + 40 * PG)])
    covered = Ranges.of([(base + 20 * PG, base + 30 * PG)])
    return decide(vmas, present, "test", dirty=dirty, covered=covered, track="uffd",
                  skip_unreadable=skip_unreadable)


def _memory(pid: int, addr: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
        f.seek(addr)
        return f.read(PG)


def _expect_runs(base: int, runs: list, unreadable_read: bool) -> None:
    kinds = [(k, (v - base) // PG, n) for k, v, n, _ in runs]
    parent = [(k, a, n) for k, a, n in kinds if k == "parent"]
    skipped = [(k, a, n) for k, a, n in kinds if k == "skipped"]
    assert parent == [("parent", 20, 5)]
    assert skipped == ([] if unreadable_read else [("skipped", 8, 4)])
    present = {(v - base) // PG + i for k, v, n, _ in runs if k == "present" for i in range(n)}
    want = set(range(40)) - set(range(20, 25)) - (set() if unreadable_read else set(range(8, 12)))
    assert present == want


@pytest.mark.parametrize("buffer_pages", [1, 3, 64])
def test_the_drain_hands_the_plan_to_a_memory_sink(target, buffer_pages):
    pid, base = target
    plan = _plan(pid, base, skip_unreadable=True)
    sink = MemorySink()
    key = PagemapKey(pid)
    sink.begin(key)
    feed = PlanFeed(sink, parent=plan.in_parent, skipped=plan.unreadable)
    with Drain(pid, feed, buffer_pages * PG) as drain:
        stats = drain.run(plan.to_read)
    counts = feed.finish()
    sink.end()
    assert sink.in_order(key)
    _expect_runs(base, sink.pagemaps[key], unreadable_read=False)
    for addr, data in sink.pages(key).items():
        assert data == bytes([(addr - base) // PG + 1]) * PG
    assert (counts.present, counts.parent, counts.skipped) == (31, 5, 4)
    assert stats.pages_read == 31
    # one read per batch: the buffer's pages (half of them when the sink has a thread, as
    # for 3 pages), IOV_MAX ranges at most; nothing per page
    assert drain.batch == (PG if buffer_pages == 3 else buffer_pages * PG)
    assert stats.syscalls <= -(-31 // (drain.batch // PG)) + 1


@pytest.mark.parametrize("threads", [1, 2])
def test_the_frozen_copy_hands_the_plan_to_a_memory_sink(target, threads):
    pid, base = target
    plan = _plan(pid, base, skip_unreadable=False)
    sink = MemorySink()
    key = PagemapKey(pid)
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        sink.begin(key)
        copied, counts = save_frozen(pid, mem, plan, sink, threads=threads, chunk=3 * PG, parallel_from=0)
        sink.end()
    finally:
        os.close(mem)
    assert sink.in_order(key)
    _expect_runs(base, sink.pagemaps[key], unreadable_read=True)
    for addr, data in sink.pages(key).items():
        assert data == bytes([(addr - base) // PG + 1]) * PG       # PROT_NONE pages too
    assert (counts.present, counts.parent, counts.skipped) == (35, 5, 0)
    assert [c[0] for c in sink.calls].count("reserve") == 1
    assert copied.forced_bytes >= 4 * PG


def test_shared_memory_goes_through_the_sink(target):
    pid, base = target
    vmas = classify_all(read_maps(pid))
    shared = [v for v in vmas if v.kind is Kind.ANON_SHARED and v.size == 8 * PG]
    assert len(shared) == 1
    sink = MemorySink()
    counts, mapped = save_shmem(sink, [(pid, shared)])
    key = PagemapKey(shared[0].inode, shmem=True)
    assert mapped == 8 and counts.present == 4
    assert sink.in_order(key)
    pages = sink.pages(key)
    assert sorted(pages) == [0, PG, 2 * PG, 5 * PG]
    for off, data in pages.items():
        assert data == bytes([100 + off // PG]) * PG == _memory(pid, shared[0].start + off)
