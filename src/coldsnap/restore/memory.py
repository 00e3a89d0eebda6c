"""Write saved pages into the restored process, from a page source (memory/source.py).

The source's buffers are the local side: for the images chain they are the pages files
mapped read-only, so page data goes from the page cache into the target with one copy and
no buffer of ours. Three ways in, chosen per area:

 - UFFDIO_COPY into the areas the caller names (`copy`: writable private anonymous ones)
   when it gives a userfaultfd of the target's mm: the writer registers them (missing
   mode), fills them and unregisters them. Each page is allocated and filled in one go,
   neither zeroed first nor faulted in one by one: about half the time of
   process_vm_writev into fresh memory. What the ioctl does not fill (a page there already:
   EEXIST) is written the next way once every area is unregistered (a remote write into a
   registered hole would wait for a fault handler);
 - process_vm_writev into the other writable areas, on `threads` worker threads (the GIL is
   released in the syscall; most of it is the target's page faults on fresh memory, and
   two CPUs fault twice as fast);
 - /proc/PID/mem into areas the target cannot write (relro data, read-only copies), which
   process_vm_writev refuses.
"""
from __future__ import annotations

import bisect
import errno
import os
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import progress
from ..errors import CsError
from ..kernel import vm
from ..memory.source import PageSource
from ..memory.vma import PROT_WRITE

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

# process_vm_writev moves at most MAX_RW_COUNT (2 GiB - 4 KiB) per call; smaller calls also
# spread a few large runs over the worker threads
MAX_CALL = 64 << 20
# UFFDIO_COPY in pieces of COPY_CHUNK, on two threads from COPY_TWO bytes in all
COPY_CHUNK, COPY_TWO = 4 << 20, 8 << 20
_MEM, _VM, _COPY = 0, 1, 2          # how a piece goes in: /proc/PID/mem, process_vm_writev, UFFDIO_COPY


@dataclass(eq=False, repr=False)
class WriteStats:
    """Bytes written into the restored process, and how."""
    bytes_vm: int = 0                # through process_vm_writev
    bytes_mem: int = 0               # through /proc/PID/mem
    bytes_copy: int = 0              # through UFFDIO_COPY
    syscalls: int = 0


@dataclass(eq=False, repr=False)
class PageWriter:
    """Writes pages into the restored process (module docstring: UFFDIO_COPY where it can,
    process_vm_writev, /proc/PID/mem where read-only)."""
    pid: int
    mem_fd: int
    uffd: int | None = None          # a userfaultfd of the target's mm, API done (caller's, not closed here)
    stats: WriteStats = field(default_factory=WriteStats)
    threads: int = min(2, os.cpu_count() or 1)
    _pool: ThreadPoolExecutor | None = None
    _pending: deque = field(default_factory=deque)
    _iov: tuple[array, array] = field(default_factory=lambda: (vm.new_iov_array(), vm.new_iov_array()))
    _n: int = 0                      # iovecs in the batch being filled
    _batch: int = 0                  # and their bytes

    def write(self, src: PageSource, areas: list[tuple[int, int, int]],
              translate=None, copy: list[tuple[int, int]] = ()) -> None:
        """Write every run of src (whose buffers must outlive this call). areas: the
        target's (start, end, prot), sorted; translate maps a run's key (e.g. a shmem
        offset) to [(vaddr, key_offset, nbytes)] pieces; copy: (start, end) of areas
        (among AREAS) to fill with UFFDIO_COPY, used only with self.uffd."""
        starts = [a[0] for a in areas]
        registered, filled = self._register(copy) if self.uffd is not None and copy else ([], set())
        hows = [_COPY if a[0] in filled else _VM if a[2] & PROT_WRITE else _MEM for a in areas]
        jobs = []                   # (local address, remote address, bytes) for UFFDIO_COPY
        later = []                  # and what it left
        try:
            view, base = None, 0
            for key, nbytes, buf, offset in src.mapped():
                if buf is not view:
                    view, base = buf, vm.address(buf)
                pieces = translate(key, nbytes) if translate else [(key, 0, nbytes)]
                for vaddr, skip, size in pieces:
                    for start, end, i in _split(areas, starts, vaddr, vaddr + size):
                        off = offset + skip + start - vaddr
                        if hows[i] == _COPY:
                            jobs += [(base + off + at, start + at, min(COPY_CHUNK, end - start - at))
                                     for at in range(0, end - start, COPY_CHUNK)]
                        elif hows[i] == _VM:
                            self._queue(base + off, start, end - start)
                        else:
                            self._pwrite(view[off:off + end - start], start)
            for (local, remote, size), done in zip(jobs, self._copy_all(jobs)):
                if done < size:
                    later.append((local + done, remote + done, size - done))
        finally:
            for start, end in registered:
                _uffd().unregister(self.uffd, start, end - start)
        for local, remote, size in later:
            self._queue(local, remote, size)
        local, remote = self._iov
        if self._n and self._pool is None:    # one batch in all (a small process): no worker thread
            self._count(self._writev(local[:2 * self._n], remote[:2 * self._n]))
        elif self._n:
            self._flush(local, remote, self._n)
        while self._pending:
            self._collect()

    def _queue(self, local_addr: int, start: int, size: int) -> None:
        """Add [start, start+size) of the target, from our local_addr, to the process_vm_writev
        batch; a full batch goes to a worker."""
        local, remote = self._iov
        end = start + size
        while start < end:   # a call moves at most MAX_CALL bytes
            chunk = min(end - start, MAX_CALL - self._batch)
            n = self._n
            local[2 * n], local[2 * n + 1] = local_addr, chunk
            remote[2 * n], remote[2 * n + 1] = start, chunk
            self._n, self._batch, start, local_addr = n + 1, self._batch + chunk, start + chunk, local_addr + chunk
            if self._n == vm.IOV_MAX or self._batch == MAX_CALL:
                self._flush(local, remote, self._n)
                self._n = self._batch = 0

    def _register(self, copy: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], set[int]]:
        """Register the copy areas, runs of adjacent ones in one call: (the runs registered,
        the starts of their areas). An area the kernel refuses goes by process_vm_writev."""
        done: set[int] = set()
        registered: list[tuple[int, int]] = []
        runs: list[list] = []
        for start, end in sorted(copy):
            if runs and runs[-1][1] == start:
                runs[-1][1] = end
                runs[-1][2].append(start)
            else:
                runs.append([start, end, [start]])
        for start, end, members in runs:
            try:
                _uffd().register(self.uffd, start, end - start, _uffd().UFFDIO_REGISTER_MODE_MISSING)
            except OSError:
                continue
            registered.append((start, end))
            done.update(members)
        return registered, done

    def _copy_all(self, jobs: list[tuple[int, int, int]]) -> list[int]:
        """UFFDIO_COPY every job, on two threads from COPY_TWO bytes on (each faults in its
        half of our mapped source and allocates its half of the target's pages: with two
        free CPUs about half the time); the bytes each filled."""
        done, calls = [0] * len(jobs), [0] * len(jobs)

        def run(part: range) -> None:
            for i in part:
                done[i], calls[i] = _copy(self.uffd, *jobs[i])
        if self.threads > 1 and sum(j[2] for j in jobs) >= COPY_TWO:
            import threading
            other = threading.Thread(target=run, args=(range(1, len(jobs), 2),), name="coldsnap-copy")
            other.start()
            try:
                run(range(0, len(jobs), 2))
            finally:
                other.join()
        else:
            run(range(len(jobs)))
        self.stats.syscalls += sum(calls)
        self.stats.bytes_copy += sum(done)
        self._progress()
        return done

    def _flush(self, local: array, remote: array, n: int) -> None:
        """Hand a batch to a worker (copies of the iovecs: the arrays are reused)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="coldsnap-writev")
        self._pending.append(self._pool.submit(self._writev, local[:2 * n], remote[:2 * n]))
        if len(self._pending) > 2 * self.threads:
            self._collect()

    def _writev(self, local: array, remote: array) -> int:
        """One process_vm_writev of the iovecs (flat arrays, see kernel/vm.py)."""
        want = sum(local[1::2])
        done = vm.writev_pairs(self.pid, local, remote, len(local) // 2)
        if done != want:
            raise CsError(f"process_vm_writev into {self.pid} wrote {done} of {want} bytes")
        return done

    def _collect(self) -> None:
        self._count(self._pending.popleft().result())

    def _count(self, done: int) -> None:
        self.stats.bytes_vm += done
        self.stats.syscalls += 1
        self._progress()

    def _progress(self, final: bool = False) -> None:
        if progress.reporter:
            done = self.stats.bytes_vm + self.stats.bytes_copy
            progress.reporter("writing pages", done, done if final else 0)

    def _pwrite(self, data, addr: int) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                k = os.pwrite(self.mem_fd, view[done:], addr + done)
            except OSError as e:
                raise CsError(f"cannot write page {addr + done:#x} of {self.pid}: {e.strerror}") from None
            self.stats.syscalls += 1
            if k <= 0:
                raise CsError(f"cannot write page {addr + done:#x} of {self.pid}: short write")
            done += k
        self.stats.bytes_mem += done

    def close(self) -> None:
        self._progress(final=True)
        for fut in self._pending:
            fut.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending.clear()


def _copy(fd: int, local_addr: int, start: int, size: int) -> tuple[int, int]:
    """UFFDIO_COPY of [start, start+size) from local_addr: (bytes filled, fewer when a page
    is there already; ioctls made)."""
    done = calls = 0
    while done < size:
        err, copied = _uffd().copy(fd, start + done, local_addr + done, size - done)
        calls += 1
        done += copied
        if err and (err != -errno.EAGAIN or not copied):
            break           # EEXIST, or no progress: the caller writes the rest another way
    return done, calls


def _uffd():
    """kernel/uffd, imported on first use: restore's imports go without it (tests/test_imports.py)."""
    from ..kernel import uffd
    return uffd


def _split(areas: list[tuple[int, int, int]], starts: list[int], lo: int, hi: int):
    """Cut [lo, hi) at area boundaries: (start, end, index of its area) pieces; outside
    areas is an error."""
    i = bisect.bisect_right(starts, lo) - 1
    pos = lo
    while pos < hi:
        if i < 0 or i >= len(areas) or not areas[i][0] <= pos < areas[i][1]:
            raise CsError(f"saved page {pos:#x} is outside every restored area")
        end = min(hi, areas[i][1])
        yield pos, end, i
        pos, i = end, i + 1
