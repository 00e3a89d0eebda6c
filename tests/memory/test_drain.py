"""The drain against a real target whose memory no longer matches the plan: every page that
cannot be read is recorded as skipped, exactly that page, and nothing outside the plan is
touched — wherever in a batch the short read falls (first range, the first page of a later
range, a range's tail, several pages in a row) and whatever the buffer size."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from coldsnap import progress
from coldsnap.errors import NoSuchProcess
from coldsnap.memory.drain import Drain
from coldsnap.memory.ranges import Ranges
from coldsnap.memory.sink import PagemapKey, PlanFeed

from memory_sink import PG, MemorySink

AREA = 48   # pages

TARGET = r"""
import ctypes, mmap, sys
n = int(sys.argv[1])
m = mmap.mmap(-1, n * 4096, flags=mmap.MAP_PRIVATE)
for i in range(n):
    m[i * 4096:(i + 1) * 4096] = bytes([i + 1]) * 4096
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
libc = ctypes.CDLL(None)
for page in map(int, sys.argv[2:]):                 # what changed after the plan was made
    libc.mprotect(ctypes.c_void_p(base + page * 4096), 4096, 0)
print(base, flush=True)
sys.stdin.readline()
"""

# Planned runs (first page, end page) with gaps between them: the gaps are readable memory
# outside the plan, which must never appear in the sink, as present or as skipped.
PLAN = [(0, 4), (6, 10), (12, 16), (20, 21), (24, 32), (34, 40)]


def _target(bad: list[int]):
    proc = subprocess.Popen([sys.executable, "-c", TARGET, str(AREA), *map(str, bad)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    base = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGSTOP)
    return proc, base


def _drain(pid: int, base: int, buffer_pages: int):
    """Through a PlanFeed, as a dump drains: it counts what went to the sink."""
    sink = MemorySink()
    key = PagemapKey(pid)
    sink.begin(key)
    feed = PlanFeed(sink)
    plan = Ranges.of([(base + a * PG, base + b * PG) for a, b in PLAN])
    with Drain(pid, feed, buffer_pages * PG) as drain:
        stats = drain.run(plan)
    counts = feed.finish()
    sink.end()
    return sink, stats, counts


@pytest.mark.parametrize("buffer_pages", [1, 4, 7, 16, 64], ids=lambda n: f"{n}pages")
@pytest.mark.parametrize("bad", [
    [6],            # the first page of the second range of a batch
    [12],           # the first page of the third range
    [0],            # the very first page of the plan
    [3],            # the last page of a range: the next range follows a gap
    [20],           # a one-page range, all of it
    [6, 7],         # two in a row: the second found through /proc/PID/maps
    [24, 25, 26],   # three in a row at a range's start
    [30, 31, 34],   # a range's tail and the next range's head
    [35, 39],       # two apart in the last range
], ids=lambda bad: "bad" + "+".join(map(str, bad)))
def test_a_page_gone_after_the_plan_is_skipped_and_nothing_else(buffer_pages, bad):
    proc, base = _target(bad)
    try:
        sink, stats, counts = _drain(proc.pid, base, buffer_pages)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    key = PagemapKey(proc.pid)
    assert sink.in_order(key)
    planned = {p for a, b in PLAN for p in range(a, b)}
    present = {(v - base) // PG: data for v, data in sink.pages(key).items()}
    skipped = {(v - base) // PG for v in sink.pages(key, "skipped")}
    assert skipped == set(bad)
    assert set(present) == planned - set(bad)
    for page, data in present.items():
        assert data == bytes([page + 1]) * PG, page
    assert (stats.pages_read, stats.pages_skipped) == (len(planned) - len(bad), len(bad))
    assert (counts.present, counts.parent, counts.skipped) == (len(planned) - len(bad), 0, len(bad))


def _drained(bad: list[int], plan_pages: list[tuple[int, int]], buffer_pages: int = 64):
    proc, base = _target(bad)
    try:
        sink = MemorySink()
        sink.begin(PagemapKey(proc.pid))
        plan = Ranges.of([(base + a * PG, base + b * PG) for a, b in plan_pages])
        with Drain(proc.pid, sink, buffer_pages * PG) as drain:
            stats = drain.run(plan)
        sink.end()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    skipped = {(v - base) // PG for v in sink.pages(PagemapKey(proc.pid), "skipped")}
    return stats, skipped


def test_a_long_stretch_gone_costs_a_few_reads_not_one_per_page():
    """The second failure in a row asks /proc/PID/maps where readable memory starts again:
    read up to the hole, fail on its second page, read after it."""
    gone = list(range(8, 40))
    stats, skipped = _drained(gone, [(0, AREA)], buffer_pages=64)
    assert skipped == set(gone)
    assert stats.pages_read == AREA - len(gone)
    assert (stats.syscalls, stats.maps_reads) == (3, 1), stats


def test_progress_ends_at_the_whole_plan_when_the_last_pages_are_skipped():
    calls = []
    old, progress.reporter = progress.reporter, lambda step, done, total: calls.append((step, done, total))
    try:
        stats, skipped = _drained([38, 39], [(0, 10), (30, 40)], buffer_pages=4)
    finally:
        progress.reporter = old
    assert skipped == {38, 39}
    total = 20 * PG
    assert calls and {c[0] for c in calls} == {"reading pages"}
    assert all(c[2] == total and 0 <= c[1] <= total for c in calls)
    assert calls[-1] == ("reading pages", total, total)


def test_a_target_gone_before_the_drain_is_named_as_such():
    proc, base = _target([])
    os.kill(proc.pid, signal.SIGKILL)
    while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.001)                       # a zombie: no memory left to read
    try:
        with Drain(proc.pid, MemorySink(), 4 * PG) as drain, pytest.raises(NoSuchProcess):
            drain.run(Ranges.of([(base, base + 4 * PG)]))
    finally:
        proc.wait()


FILE_TARGET = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
base = libc.mmap(None, 10 * 4096, 3, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
ctypes.memset(base, 7, 10 * 4096)
libc.mprotect(ctypes.c_void_p(base + 2 * 4096), 4096, 0)         # page 2: PROT_NONE
fd = os.memfd_create("empty")                                      # pages 3..5: a readable
libc.mmap(base + 3 * 4096, 3 * 4096, 1, mmap.MAP_SHARED | 0x10, fd, 0)   # mapping past EOF
libc.mprotect(ctypes.c_void_p(base + 6 * 4096), 2 * 4096, 0)     # pages 6, 7: PROT_NONE
print(base, flush=True)
sys.stdin.readline()
"""


def test_a_readable_mapping_that_cannot_be_read_is_skipped_not_retried_forever():
    """After an unreadable page, a mapping that /proc/PID/maps calls readable but whose pages
    fault (a file mapped past its end) starts right at the failed page: the drain moves on,
    page by page there, and past the unreadable area after it at once."""
    proc = subprocess.Popen([sys.executable, "-c", FILE_TARGET], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    base = int(proc.stdout.readline())

    def too_long(*_):
        raise TimeoutError("the drain does not move on")
    old = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(20)
    try:
        sink = MemorySink()
        sink.begin(PagemapKey(proc.pid))
        with Drain(proc.pid, sink, 64 * PG) as drain:
            stats = drain.run(Ranges.of([(base, base + 10 * PG)]))
        sink.end()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        proc.kill()
        proc.wait()
    skipped = {(v - base) // PG for v in sink.pages(PagemapKey(proc.pid), "skipped")}
    present = {(v - base) // PG for v in sink.pages(PagemapKey(proc.pid))}
    assert skipped == {2, 3, 4, 5, 6, 7} and present == {0, 1, 8, 9}
    assert stats.pages_read == 4
    # a read to page 2, one failing at each page from 3 to 6 (each a second failure in a row:
    # a maps read), the read of 8 and 9; the maps read at 6 skips the PROT_NONE area whole
    assert (stats.syscalls, stats.maps_reads) == (6, 4), stats
