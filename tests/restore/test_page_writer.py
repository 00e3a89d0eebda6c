"""PageWriter: a page source straight into a live process, writable areas by process_vm_writev
(cut into calls of at most MAX_CALL bytes: the kernel moves at most 2 GiB - 4 KiB per call),
read-only areas through /proc/PID/mem. The source here is a second implementation of the
interface (one bytes buffer), besides the images chain."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from coldsnap.kernel.procfs import read_maps
from coldsnap.restore import memory
from coldsnap.restore.memory import PageWriter

PAGE = 4096
TARGET = r"""
import mmap, sys
rw = mmap.mmap(-1, 64 * 4096, flags=mmap.MAP_PRIVATE)
ro = mmap.mmap(-1, 8 * 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
import ctypes
print(ctypes.addressof(ctypes.c_char.from_buffer(rw)), flush=True)
print(sys.stdin.readline(), flush=True)
"""


class BytesSource:
    """A page source over one bytes buffer: runs (vaddr, nbytes, offset in data)."""

    def __init__(self, data: bytes, runs):
        self.buf, self._runs = np.frombuffer(bytearray(data), np.uint8), runs

    def runs(self):
        return [(v, n) for v, n, _ in self._runs]

    def mapped(self):
        for v, n, off in self._runs:
            yield v, n, self.buf, off

    def read_into(self, vaddr, buf):
        raise NotImplementedError

    def close(self):
        pass


@pytest.mark.parametrize("max_call", [3 * PAGE, 1 << 30])
def test_pages_land_in_writable_and_read_only_areas(tmp_path, monkeypatch, max_call):
    monkeypatch.setattr(memory, "MAX_CALL", max_call)
    proc = subprocess.Popen([sys.executable, "-c", TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        rw = int(proc.stdout.readline())
        ro = next(m.start for m in read_maps(proc.pid) if m.end - m.start == 8 * PAGE and not m.writable)
        data = bytes((i * 7 + i // PAGE) & 255 for i in range(20 * PAGE))
        # 12 pages into the writable area in two runs, 8 pages over the read-only one
        runs = [(rw + PAGE, 5 * PAGE, 0), (rw + 10 * PAGE, 7 * PAGE, 5 * PAGE), (ro, 8 * PAGE, 12 * PAGE)]
        areas = sorted([(rw, rw + 64 * PAGE, 3), (ro, ro + 8 * PAGE, 1)])
        mem_fd = os.open(f"/proc/{proc.pid}/mem", os.O_RDWR)
        writer = PageWriter(proc.pid, mem_fd)
        try:
            writer.write(BytesSource(data, runs), areas)
        finally:
            writer.close()
            got = {vaddr: os.pread(mem_fd, n, vaddr) for vaddr, n, _ in runs}
            os.close(mem_fd)
        for vaddr, n, off in runs:
            assert got[vaddr] == data[off:off + n]
        assert writer.stats.bytes_vm == 12 * PAGE and writer.stats.bytes_mem == 8 * PAGE
        if max_call == 3 * PAGE:
            assert writer.stats.syscalls >= 4 + 1     # 12 pages in calls of at most 3, one pwrite
        with pytest.raises(memory.CsError, match="outside every restored area"):
            PageWriter(proc.pid, -1).write(BytesSource(data, [(rw + 64 * PAGE, PAGE, 0)]), areas)
    finally:
        proc.kill()
        proc.wait()


COPY_TARGET = r"""
import ctypes, mmap, os, sys
rw = mmap.mmap(-1, 64 * 4096, flags=mmap.MAP_PRIVATE)
rw[2 * 4096] = 1                  # one page there already: UFFDIO_COPY says EEXIST for it
uffd = ctypes.CDLL(None, use_errno=True).syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)
print(ctypes.addressof(ctypes.c_char.from_buffer(rw)), uffd, flush=True)
print(sys.stdin.readline(), flush=True)
"""


@pytest.mark.parametrize("chunk", [1 << 20, 2 * PAGE])
def test_copy_areas_filled_by_uffdio_copy_and_a_present_page_by_writev(monkeypatch, chunk):
    """One UFFDIO_COPY per run, or (chunk 2 pages) runs cut in pieces copied on two threads."""
    monkeypatch.setattr(memory, "COPY_CHUNK", chunk)
    monkeypatch.setattr(memory, "COPY_TWO", PAGE)
    from coldsnap.kernel import uffd
    from coldsnap.kernel.pidfd import take_fd
    proc = subprocess.Popen([sys.executable, "-c", COPY_TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        rw, tfd = map(int, proc.stdout.readline().split())
        if tfd < 0:
            pytest.skip("no userfaultfd on this kernel")
        fd = take_fd(proc.pid, tfd)
        uffd.api(fd, 0)
        data = bytes((i * 13 + i // PAGE) & 255 for i in range(12 * PAGE))
        runs = [(rw + PAGE, 5 * PAGE, 0), (rw + 10 * PAGE, 7 * PAGE, 5 * PAGE)]
        areas = [(rw, rw + 64 * PAGE, 3)]
        mem_fd = os.open(f"/proc/{proc.pid}/mem", os.O_RDWR)
        writer = PageWriter(proc.pid, mem_fd, uffd=fd)
        try:
            writer.write(BytesSource(data, runs), areas, copy=[(rw, rw + 64 * PAGE)])
        finally:
            writer.close()
            os.close(fd)
            got = {vaddr: os.pread(mem_fd, n, vaddr) for vaddr, n, _ in runs}
            os.close(mem_fd)
        for vaddr, n, off in runs:
            assert got[vaddr] == data[off:off + n]
        # page 2 was there: it and what follows in its piece went by process_vm_writev
        left = 4 if chunk > PAGE * 5 else 1        # the rest of the run, or of pages 1-2
        assert writer.stats.bytes_copy == (12 - left) * PAGE and writer.stats.bytes_vm == left * PAGE
        # unregistered again: no area of the target keeps a userfaultfd flag ("um": missing mode)
        flags = [line.split()[1:] for line in open(f"/proc/{proc.pid}/smaps") if line.startswith("VmFlags:")]
        assert flags and not any("um" in f for f in flags)
    finally:
        proc.kill()
        proc.wait()
