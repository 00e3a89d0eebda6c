"""Memory built ahead of time for a migration: the restore worker of migrate-receive
(restore/receive_worker.py) writes the migrated root process's private anonymous memory into
ITS OWN address space, at the target's addresses, as the sessions of the migration arrive.

    pre = Prebuilt()
    pre.apply(session)          # after each session is stored (pre-dumps, then the final dump)
    restore(final, prebuilt=pre)

Per private anonymous area of the session's mm image (the root's; an area plain enough:
no MAP_LOCKED, MAP_GROWSDOWN, nothing shared or file-backed):

  - an area we hold with the same bounds, last brought up to date by the session's parent:
    the session's own pages are written into it (preadv from its pages file: local memory,
    no ptrace), and pages we hold that the session no longer has are zeroed (MADV_DONTNEED);
  - a new area is mapped with MAP_FIXED_NOREPLACE (an area that collides with one of our own
    mappings is left out: the restore maps and writes it as for any restore) and every page
    the whole chain holds for it is written;
  - an area of ours that the session does not have (unmapped, moved, split by an mprotect,
    locked) is unmapped.

At switchover the final session has been applied like the others; the restore's blank root
is a clone of this process, so it inherits the areas copy-on-write (restore/blank.py marks
them MADV_DONTFORK in it at once: its own children do not get them). `release()` then
unmaps our copy, so that the restored process owns its pages outright, and the transplant
keeps those areas (restore/transplant.py `kept`): no unmap, no mmap, no page written.

A post-copy's final session (restore/receive_worker.py) is applied too: its PE_LAZY runs,
the final delta whose bytes stay at the source, are zeroed (MADV_DONTNEED) in the areas
rather than written; the lazy restore then keeps the areas and registers them with its
userfaultfd, so that only those pages are fetched after the process runs.

Anything going wrong here only costs speed: the areas are dropped and the restore does all.
"""
from __future__ import annotations

import os
import sys
import time
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import CsError
from ..images.directory import ImageDir
from ..images.pages import pagemap_name
from ..images.source import ChainSource
from ..images.vma import (VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_MEMFD, VMA_AREA_STACK, VMA_AREA_SYSVIPC,
                          VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR, VMA_FILE_PRIVATE, VMA_FILE_SHARED)
from ..kernel import vm
from ..kernel.page import PAGE_SHIFT
from ..memory.ranges import Ranges
from ..memory.vma import MAP_ANONYMOUS, MAP_PRIVATE

MAP_NORESERVE = 0x4000
LAZY, OWN = 0, 1        # chain levels of ChainSource(..., lazy=_ELSEWHERE): PE_LAZY runs, the session's own


class _Elsewhere:
    """Where a post-copy's final session keeps its PE_LAZY runs: at the source, fetched by
    the lazy restore. Here they are pages to leave missing (MADV_DONTNEED: the restored
    process faults on them, its lazy server brings them)."""

    def expect(self, runs) -> None:
        pass


_ELSEWHERE = _Elsewhere()
_NOT_PLAIN = (VMA_FILE_PRIVATE | VMA_FILE_SHARED | VMA_ANON_SHARED | VMA_AREA_SYSVIPC | VMA_AREA_MEMFD
              | VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_AREA_STACK)
TASK_SIZE = 0x7FFFFFFFF000
_UNMAP_STEP = 64 << 20


def prebuildable(v) -> bool:
    """A private anonymous area mapped with nothing but MAP_PRIVATE|MAP_ANONYMOUS (and
    MAP_NORESERVE): one that an mmap of ours reproduces, and an mprotect and madvise finish."""
    return (bool(v.status & VMA_ANON_PRIVATE) and not v.status & _NOT_PLAIN and v.end <= TASK_SIZE
            and not v.flags & ~(MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE))


@dataclass
class Area:
    """A memory area prebuilt for a restore and the pages written in it."""
    start: int
    end: int
    session: str                    # the last session applied to it
    held: Ranges = field(default_factory=Ranges.empty)    # pages written in it (and not zeroed)


@dataclass
class ApplyStats:
    """What applying one session of pages to the prebuilt memory did."""
    session: str = ""
    areas: int = 0
    new_areas: int = 0
    collisions: int = 0
    bytes_written: int = 0
    bytes_zeroed: int = 0
    ms: float = 0.0


class Prebuilt:
    """The areas built in this process for one migration (module docstring)."""

    def __init__(self, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)):
        self.areas: dict[tuple[int, int], Area] = {}
        self.root: int | None = None
        self.last: str | None = None    # the last session applied
        self.log = log
        self.stats: list[ApplyStats] = []

    def kept(self) -> list[tuple[int, int]]:
        """(start, end) of every area up to date with the last session, in address order."""
        return sorted(k for k, a in self.areas.items() if a.session == self.last)

    def apply(self, session: str | os.PathLike) -> ApplyStats | None:
        """Bring the areas up to date with a stored SESSION; on any error they are all
        dropped (the restore then does everything) and the reason logged."""
        t0 = time.perf_counter()
        stats = ApplyStats(Path(session).name)
        try:
            self._apply(ImageDir.open(session), stats)
        except (CsError, OSError, ValueError) as e:
            self.log(f"migrate-receive: memory not built ahead from {Path(session).name}: {e}")
            self.drop()
            return None
        stats.ms = round((time.perf_counter() - t0) * 1000, 2)
        self.stats.append(stats)
        return stats

    def _apply(self, d: ImageDir, stats: ApplyStats) -> None:
        entries = d.read("pstree.img", missing_ok=True)
        pid = entries[0].pid if entries else None
        if pid is None or not d.exists(f"mm-{pid}.img") or not d.exists(pagemap_name(pid)) \
                or (self.root is not None and pid != self.root):
            self.drop()                 # not a session of this migration's root (a CRIU client's)
            return
        self.root = pid
        chain = d.chain()
        parent = chain[1].root.name if len(chain) > 1 else None
        want = {(v.start, v.end): v for v in d.read_single(f"mm-{pid}.img").vmas if prebuildable(v)}
        for key in [k for k in self.areas if k not in want]:
            self._unmap(self.areas.pop(key))
        with ChainSource(d, pid, lazy=_ELSEWHERE) as src:
            runs = src.located()
            starts = [r[1] for r in runs]
            covered = Ranges.covering([(r[1], r[1] + r[2]) for r in runs])
            coming = Ranges.covering([(r[1], r[1] + r[2]) for r in runs if r[0] == LAZY])
            fds: dict[int, int] = {}
            try:
                for (start, end), v in sorted(want.items()):
                    a = self.areas.get((start, end))
                    if a is None:
                        if not vm.map_anon_at(start, end - start, MAP_PRIVATE | MAP_ANONYMOUS
                                              | (v.flags & MAP_NORESERVE)):
                            stats.collisions += 1
                            continue
                        a = self.areas[(start, end)] = Area(start, end, "")
                        stats.new_areas += 1
                    whole = Ranges.of([(start, end)])
                    now = covered.intersect(whole).subtract(coming)     # what we hold once done
                    fresh = a.session != parent      # a.session is a name ("": new), parent may be None
                    if len(a.held):
                        stats.bytes_zeroed += self._zero(a.held if fresh else a.held.subtract(now))
                    stats.bytes_written += self._write(src, runs, starts, start, end, fds,
                                                       levels=None if fresh else OWN)
                    a.held, a.session = now, d.root.name
                    stats.areas += 1
            finally:
                for fd in fds.values():
                    os.close(fd)
        self.last = d.root.name

    def _write(self, src: ChainSource, runs: list, starts: list[int], lo: int, hi: int,
               fds: dict[int, int], levels: int | None) -> int:
        """Every run inside [lo, hi) (of chain level `levels` only, or of any level) read
        from its pages file into our memory at its address; one preadv per stretch of a
        pages file that is contiguous."""
        i = max(0, bisect_right(starts, lo) - 1)
        iov = vm.new_iov_array()
        n, level0, at, total = 0, -1, 0, 0

        def flush() -> None:
            nonlocal n
            if n:
                want = sum(iov[1:2 * n:2])
                fd = fds.get(level0)
                if fd is None:
                    fd = fds[level0] = os.open(src.files[level0], os.O_RDONLY | os.O_CLOEXEC)
                done = 0
                while done < want:       # a short read: go on from where it stopped
                    k = vm.preadv_pairs(fd, *_rest(iov, n, done), at - want + done)
                    if k <= 0:
                        raise CsError(f"{src.files[level0]}: short pages file")
                    done += k
                n = 0

        for level, vaddr, nbytes, offset in runs[i:]:
            if vaddr >= hi:
                break
            s, e = max(vaddr, lo), min(vaddr + nbytes, hi)
            if s >= e or level == LAZY or (levels is not None and level != levels):
                continue
            off = offset + s - vaddr
            if n and (level != level0 or off != at or n == vm.IOV_MAX):
                flush()
            level0 = level
            iov[2 * n], iov[2 * n + 1] = s, e - s
            n, at, total = n + 1, off + e - s, total + e - s
        flush()
        return total

    def _zero(self, ranges: Ranges) -> int:
        for s, e in ranges.pairs():
            vm.madvise(s, e - s, vm.MADV_DONTNEED)
        return ranges.nr_pages << PAGE_SHIFT

    def _unmap(self, a: Area) -> None:
        for at in range(a.start, a.end, _UNMAP_STEP):   # steps: our mmap lock is never held long
            vm.unmap(at, min(_UNMAP_STEP, a.end - at))

    def drop(self) -> None:
        """Unmap every area: nothing is built ahead any more."""
        for a in self.areas.values():
            try:
                self._unmap(a)
            except OSError:
                pass
        self.areas.clear()
        self.last = None

    def hide_from_forks(self) -> None:
        """MADV_DONTFORK on our copy of every area: a process forked from us from now on (a
        lazy restore's server) does not share the restored root's memory (its writes would
        all be copies, and the memory held twice as long as that process lives)."""
        for a in self.areas.values():
            vm.madvise(a.start, a.end - a.start, vm.MADV_DONTFORK)

    def kept_for(self, session: str, pid: int, mm) -> list[tuple[int, int]]:
        """The areas a restore of SESSION's process PID with mm image MM keeps (brought up to
        date by that very session, and one of its plain private areas); the others are
        dropped now."""
        up_to_date = pid == self.root and session == self.last
        want = {(v.start, v.end) for v in mm.vmas if prebuildable(v)} if up_to_date else set()
        keep = [k for k in self.kept() if k in want]
        for k in [k for k in self.areas if k not in keep]:
            self._unmap(self.areas.pop(k))
        return keep

    def release(self) -> None:
        """Right after the clone of the restore's root: our copy goes (the root's stays)."""
        self.drop()


def _rest(iov: array, n: int, done: int) -> tuple[array, int]:
    """The iovecs of the first n of IOV (flat, kernel/vm.py) past the first DONE bytes (a
    short preadv's remainder)."""
    if done == 0:
        return iov, n
    k, before = 0, 0
    while before + iov[2 * k + 1] <= done:
        before += iov[2 * k + 1]
        k += 1
    rest = iov[2 * k:2 * n]
    rest[0] += done - before
    rest[1] -= done - before
    return rest, n - k
