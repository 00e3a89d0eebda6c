"""The drain against a real target whose memory no longer matches the plan: every page that
cannot be read is recorded as skipped, exactly that page, and nothing outside the plan is
touched — wherever in a batch the short read falls (first range, the first page of a later
range, a range's tail, several pages in a row) and whatever the buffer size."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from coldsnap.memory.drain import Drain
from coldsnap.memory.ranges import Ranges
from coldsnap.memory.sink import PagemapKey

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


def _drain(pid: int, base: int, buffer_pages: int) -> tuple[MemorySink, object]:
    sink = MemorySink()
    key = PagemapKey(pid)
    sink.begin(key)
    plan = Ranges.of([(base + a * PG, base + b * PG) for a, b in PLAN])
    with Drain(pid, sink, buffer_pages * PG) as drain:
        stats = drain.run(plan)
    sink.end()
    return sink, stats


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
        sink, stats = _drain(proc.pid, base, buffer_pages)
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
