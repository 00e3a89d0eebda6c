"""copy_frozen: a frozen task's pages back to back into a pages file's area, on worker threads."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from coldsnap.errors import TargetError
from coldsnap.images.pages import FileArea
from coldsnap.kernel.vm import IOV_MAX
from coldsnap.memory.frozen_copy import batches, copy_frozen, pieces
from coldsnap.memory.ranges import Ranges

PG = 4096
TARGET = r"""
import ctypes, mmap, sys
m = mmap.mmap(-1, 40 * 4096, flags=mmap.MAP_PRIVATE)
for i in range(40):
    m[i * 4096:(i + 1) * 4096] = bytes([i + 1]) * 4096
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
libc = ctypes.CDLL(None)
libc.mprotect(ctypes.c_void_p(base + 8 * 4096), 4 * 4096, 0)      # 4 pages without PROT_READ
print(base, flush=True)
sys.stdin.readline()
"""


def test_pieces_cover_the_ranges_in_chunks_back_to_back():
    r = Ranges.of([(0x10000, 0x10000 + 10 * PG), (0x40000, 0x40000 + PG), (0x80000, 0x80000 + 7 * PG)])
    addrs, lens, offs = pieces(r, chunk=3 * PG)
    assert max(lens) <= 3 * PG and sum(lens) == r.nr_pages * PG
    assert list(offs) == np.concatenate([[0], np.cumsum(lens)[:-1]]).tolist()
    got = Ranges(addrs, [a + n for a, n in zip(addrs, lens)]).merged()
    assert got.pairs() == r.pairs()


class WatchedArea(FileArea):
    """A pages file area that notes which thread made each write."""

    def __init__(self, fd: int):
        super().__init__(fd, 0)
        self.writers: list[str] = []

    def pwrite(self, data, offset: int) -> int:
        self.writers.append(threading.current_thread().name)
        return super().pwrite(data, offset)


SPANS = {"runs": [(0, 20), (25, 40)],                     # long runs cut into pieces
         "fragmented": [(i, i + 1) for i in range(0, 40, 2)]}   # one page in two, batched


@pytest.mark.parametrize("layout", SPANS)
@pytest.mark.parametrize("threads", [1, 2])
def test_copy_equals_memory_including_unreadable_pages(tmp_path, threads, layout):
    proc = subprocess.Popen([sys.executable, "-c", TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGSTOP)
        ranges = Ranges.of([(base + a * PG, base + b * PG) for a, b in SPANS[layout]])
        chunk = 3 * PG if layout == "runs" else 8 * PG
        out = os.open(tmp_path / "pages", os.O_RDWR | os.O_CREAT, 0o600)
        mem = os.open(f"/proc/{proc.pid}/mem", os.O_RDONLY)
        try:
            area = WatchedArea(out)
            stats = copy_frozen(proc.pid, mem, ranges, area, threads=threads, chunk=chunk,
                                parallel_from=0)
        finally:
            os.close(mem)
            os.close(out)
        data = (tmp_path / "pages").read_bytes()
        pages = [i for a, b in SPANS[layout] for i in range(a, b)]
        want = b"".join(bytes([i + 1]) * PG for i in pages)
        assert data == want
        # /proc/PID/mem took over from the first unreadable page of each call to the call's end
        assert stats.bytes == len(want) and stats.forced_bytes >= len(set(pages) & {8, 9, 10, 11}) * PG
        if layout == "fragmented":
            assert stats.syscalls < len(pages)              # pages read together, not one by one
        assert stats.syscalls >= 2 * len(area.writers)      # every write came after a read
        workers = {name for name in area.writers if name.startswith("coldsnap-copy")}
        assert bool(workers) == (threads > 1), area.writers
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


PAST_EOF = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
base = libc.mmap(None, 4 * 4096, 3, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
ctypes.memset(base, 7, 4 * 4096)
fd = os.memfd_create("short")                     # pages 2, 3: a file mapped past its end
libc.mmap(base + 2 * 4096, 2 * 4096, 1, mmap.MAP_PRIVATE | 0x10, fd, 0)
print(base, flush=True)
sys.stdin.readline()
"""


def test_a_page_nothing_can_read_is_a_one_line_error_naming_it(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", PAST_EOF], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGSTOP)
        out = os.open(tmp_path / "pages", os.O_RDWR | os.O_CREAT, 0o600)
        mem = os.open(f"/proc/{proc.pid}/mem", os.O_RDONLY)
        try:
            with pytest.raises(TargetError) as e:
                copy_frozen(proc.pid, mem, Ranges.of([(base, base + 4 * PG)]), FileArea(out, 0), threads=1)
        finally:
            os.close(mem)
            os.close(out)
        assert str(e.value).startswith(f"cannot read page {base + 2 * PG:#x} of {proc.pid}")
        assert "\n" not in str(e.value)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 4), max_size=3000), st.sampled_from([1, 2, 3, 4]))
def test_batches_start_at_each_window_and_every_iov_max_pieces(pages, chunk_pages):
    """The calls of a copy, against a walk over every piece: a call starts where a piece's
    offset enters a new CHUNK window, and after IOV_MAX pieces."""
    chunk = chunk_pages * PG
    lens = [min(p, chunk_pages) * PG for p in pages]
    edges, off, window = [0] if lens else [], 0, 0
    for k, ln in enumerate(lens):
        if k and (off // chunk != window or k % IOV_MAX == 0):
            edges.append(k)
        window = off // chunk
        off += ln
    want = list(zip(edges, edges[1:] + [len(lens)]))
    assert batches(lens, chunk) == want


def test_buffers_made_ahead_serve_any_copy_and_stay_out_of_children():
    """A service's spare makes the largest buffers ahead: prepare_copy takes them for any
    size instead of making its own; no child inherits them (MADV_DONTFORK)."""
    from coldsnap.memory import frozen_copy as F
    try:
        F.make_buffers_ahead(threads=2)
        ahead = list(F._spare)
        F.prepare_copy(64 << 20)
        assert F._spare == ahead                    # both taken as they are
        F.make_buffers_ahead(threads=2)
        ahead = list(F._spare)
        F.prepare_copy(8 << 20)                     # one thread's: one of them
        assert len(F._spare) == 1 and F._spare[0] in ahead
        F.prepare_copy(0)
        assert F._spare == []
        F.make_buffers_ahead(threads=1)
        addr = F._spare[0].addr
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                # the child only waits: we read its maps
            os.read(r, 1)
            os._exit(0)
        try:
            def covers(maps: str) -> bool:
                with open(maps) as f:
                    spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in f]
                return any(a <= addr < b for a, b in spans)
            assert covers("/proc/self/maps") and not covers(f"/proc/{pid}/maps")
        finally:
            os.write(w, b"x")
            os.close(r)
            os.close(w)
            os.waitpid(pid, 0)
    finally:
        F._spare.clear()
