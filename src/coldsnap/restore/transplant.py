"""Reshape a held blank child into the dumped process with injected system calls.

    with freeze(child) as task:
        transplant(task, images, shm) # memory, mm, threads, signals, registers...
    # detach: the restored process runs

The child is a clone of coldsnap with the dumped PID whose fd table, cwd and limits are
already the target's (restore.py `_blank_child` with fdtable.py, then `_set_rlimits`).
Everything else happens here, in this order, in one remote-call session on the leader.
Single calls run at a `syscall` of the [vdso]; independent calls go in batches (one round
trip each, seize/remote.py `batch`) run by a loop in a code page beside the scratch area:
both are mapped first, at a spot clear of every dumped area and of the child's vDSO, over
whatever of the child's memory was there, and survive the unmapping:

 1. unregister the child's inherited rseq area (the kernel would fault on it once unmapped)
    and mremap [vvar] [vvar_vclock] [vdso] to where the images had them (same kernel
    layout): one batch
 2. munmap everything else (around the vDSO block, the scratch area and the kept areas:
    private areas the blank child inherited with their pages, built ahead by a migration's
    restore worker, restore/prebuild.py) and open every mapped file: one batch
 3. map every VMA at its address with its protection, file and flags (a shared anonymous
    object: the one coldsnap made, restore/shmem.py), close the files, MADV_HUGEPAGE: one
    batch; write the private pages (a kept area is only mprotected and madvised as the
    images say; its pages are in)
 4. the other advice, guards, mlock: one batch
 5. PR_SET_MM_MAP: code/data/brk/stack/arg/env bounds, auxv, exe file
 6. itimers, personality, dumpable, subreaper (one batch); create each other thread with
    clone3 set_tid and CLONE_PTRACE (born traced, stopped), all in one batch, then set each
    one's per-thread state
 7. per-thread state of the leader, pending signals, signal handlers (late: a forced
    single-step SIGTRAP would reset an ignored SIGTRAP handler); only those that differ
    from the all-zero default the blank child set itself: one batch for the signals
 8. registers, xstate and blocked masks are set at each thread's final ptrace stop (the
    SIGTRAP stop of its last injected call: no re-park, seize/remote.py; the detach
    discards that SIGTRAP); the kernel then restarts interrupted system calls
    (-ERESTART*) as it would have.
"""
from __future__ import annotations

import functools
import os
import struct
import time
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import CsError, TargetError
from ..images.vma import (VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_MEMFD, VMA_AREA_SYSVIPC, VMA_FILE_PRIVATE,
                          VMA_FILE_SHARED)
from ..images.xsave import build_area
from ..kernel import ptrace, vm
from ..kernel.clone import CLONE_ARGS, CLONE_PTRACE, THREAD_FLAGS, clone_args
from ..kernel.cpuid import cpuid, xstate_layout
from ..kernel.libc import SYS, syscall
from ..kernel.page import PAGE_SIZE as PAGE
from ..kernel.pidfd import take_fd
from ..kernel.procfs import cap_last_cap, read_path_link, read_status
from ..memory.vma import MAP_ANONYMOUS, PROT_EXEC, PROT_READ, PROT_WRITE
from ..seize.freezer import FrozenTask
from ..seize.remote import BLOCK_ALL_BUT_TRAP, CODE_SIZE, Call, RemoteCalls, is_error, sys_call
from .images import MMAP_MIN_ADDR, TASK_SIZE, DumpImages, gaps_between, own_vdso, own_vdso_areas, vdso_layout
from ..creds import Creds
from .memory import PageWriter, WriteStats
from .shmem import SharedMemory

SCRATCH = 16 * PAGE
MAP_FIXED = 0x10
MAP_LOCKED = 0x2000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
AT_FDCWD = -100
O_CLOEXEC = 0o2000000
RSEQ_FLAG_UNREGISTER = 1
PR_SET_NAME, PR_SET_DUMPABLE, PR_SET_PDEATHSIG = 15, 4, 1
PR_SET_MM, PR_SET_MM_MAP = 35, 14
PR_SET_CHILD_SUBREAPER = 36
PR_SET_TIMERSLACK, PR_SET_THP_DISABLE = 29, 41
PR_GET_DUMPABLE, PR_GET_TIMERSLACK = 3, 30
MADV_GUARD_INSTALL = 102
MADV_DONTFORK, MADV_DOFORK = 10, 11
MADV_HUGEPAGE = 14
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC = 1, 1
NR_seccomp = 317
PR_TIMER_CREATE_RESTORE_IDS = 77      # timer_create takes the id to use from *created_timer_id
NR_timer_create, NR_timer_settime = 222, 223
SIGEV_THREAD_ID = 4
PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 8, 24, 28
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 38, 47, 2
SECBIT_KEEP_CAPS = 1 << 4
SS_ONSTACK, SS_DISABLE = 1, 2
SIGKILL, SIGSTOP = 9, 19
SIGNALS = tuple(s for s in range(1, 65) if s not in (SIGKILL, SIGSTOP))
DEFAULT_SIGACTION = bytes(32)   # kernel struct sigaction: SIG_DFL, no flags, restorer or mask
PRCTL_MM_MAP = struct.Struct("<11QQII")     # struct prctl_mm_map (104 bytes)
# Scratch layout. Each single call's argument is written just before the call, at _OFF_ARGS.
# Paths and the groups list get two pages; a batch's data (paths, siginfos...) four, its
# table of calls the last eight (512 calls a round trip).
_OFF_ARGS, _OFF_PATH, _OFF_DATA, _OFF_TABLE = 0, 2 * PAGE, 4 * PAGE, 8 * PAGE
_THREADS_A_BATCH = 128      # clone3s of one batch: their TIDs and clone_args (96 bytes) fill the data area
# user_regs_struct names whose user_x86_regs_entry field is named differently
_IMAGE_REG = {"rbp": "bp", "rbx": "bx", "rax": "ax", "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di",
              "orig_rax": "orig_ax", "rip": "ip", "eflags": "flags", "rsp": "sp"}


@dataclass(eq=False, repr=False)
class TransplantStats:
    """Injected calls and times of one transplant."""
    calls: int = 0                  # system calls run in the process
    trips: int = 0                  # tracer round trips that ran them (a batch: one)
    write: WriteStats | None = None
    memory_ns: int = 0
    total_ns: int = 0
    lazy_pages: int = 0             # left to the lazy-pages server


def user_regs(core) -> ptrace.UserRegs:
    g = core.thread_info.gpregs
    regs = ptrace.UserRegs()
    for name, _ in ptrace.UserRegs._fields_:
        setattr(regs, name, getattr(g, _IMAGE_REG.get(name, name)))
    return regs


def blocked_mask(core) -> int:
    """A thread's blocked signals: its thread_core's, or for a main thread whose core has
    none there (CRIU writes the leader's in task_core only) the task_core's."""
    if core.thread_core.HasField("blk_sigset") or not core.HasField("tc"):
        return core.thread_core.blk_sigset
    return core.tc.blk_sigset


def fxsave(core) -> bytes:
    """512-byte FXSAVE area from the fpregs entry (when no raw xstate was kept)."""
    f = core.thread_info.fpregs
    head = struct.pack("<HHHHQQII", f.cwd, f.swd, f.twd, f.fop, f.rip, f.rdp, f.mxcsr, f.mxcsr_mask)
    return (head + struct.pack("<32I", *f.st_space) + struct.pack("<64I", *f.xmm_space)).ljust(512, b"\0")


class Stage:
    """Calls for one batch, with the data they point to laid out in the scratch's data
    area; when that is full, the calls staged so far run first (their order kept)."""

    def __init__(self, rc: RemoteCalls):
        self.rc = rc
        self.calls: list[Call] = []
        self.results: list[int] = []
        self._data = bytearray()
        self._ran = 0

    def add(self, nr: int, *args: int, what: str = "", may_fail: bool = False) -> None:
        self.calls.append(Call(nr, args, what, may_fail))

    def put(self, data: bytes) -> int:
        """Target address of DATA, in the data area, written when the batch runs."""
        if len(data) > _OFF_TABLE - _OFF_DATA:
            raise CsError(f"{len(data)} bytes: more than a restore batch can pass")
        if len(self._data) + len(data) > _OFF_TABLE - _OFF_DATA:
            self.run()
        addr = self.rc.scratch() + _OFF_DATA + len(self._data)
        self._data += data + bytes(-len(data) % 8)
        return addr

    def run(self, check: bool = True) -> list[int]:
        """Run what is staged (OSError naming the call that failed; CHECK False: the caller
        looks at the results itself); the results of every call staged since the start
        (those that ran, when one failed)."""
        if self._data:
            self.rc.write_scratch(bytes(self._data), _OFF_DATA)
            self._data.clear()
        todo, self._ran = self.calls[self._ran:], len(self.calls)
        if todo:
            got = self.rc.batch(todo, _OFF_TABLE)
            self.results += got
            if check:
                self.rc.raise_failure(todo, got)
        return self.results


class Transplant:
    def __init__(self, task: FrozenTask, images: DumpImages, shm: SharedMemory, lazy=None,
                 kept: list[tuple[int, int]] = ()):
        self.task = task
        self.kept = sorted(kept)        # areas the blank child already holds, pages and all
        self.lazy = lazy                # restore/lazy_server.py LazyServer: pages come later
        self.img = images
        self.shm = shm
        self.pid = task.pid
        # the blank child reset every signal action, SIGTRAP's too: single-step mode, no
        # look at its status; it waits in pause(), its mask its own: no first call through
        # syscall stops; its [vdso] is ours (a fork of coldsnap): no read of its maps
        self.rc = RemoteCalls(task, tid=self.pid, scratch_size=SCRATCH, mode="step", plain_stop=True)
        self.rc.repark = False          # held in its last trap stop until the tree is let go
        task.vdso_gadget(own_vdso())
        self.stats = TransplantStats()
        self._exe_fd = -1               # the exe, opened read-only in the target by _map_vmas
        self._vdso_moved_at: int | None = None  # staged calls up to the vDSO's last mremap
        self._uffd_copy = -1            # the target's userfaultfd (PageWriter's, or the lazy pages'), closed in the next batch
        self._creds_set = False         # a thread's credentials were changed (resets dumpable)

    # -- helpers --------------------------------------------------------------------------

    def _scratch(self) -> int:
        return self.rc.scratch()

    def _put(self, data: bytes, off: int = _OFF_ARGS) -> int:
        return self.rc.write_scratch(data, off)

    def _stage(self, rc: RemoteCalls | None = None) -> Stage:
        return Stage(rc or self.rc)

    def _open(self, path: str, flags: int) -> int:
        raw = path.encode() + b"\0"
        if len(raw) > SCRATCH - _OFF_PATH:
            raise CsError(f"path too long to open in the restored process: {path}")
        addr = self._put(raw, _OFF_PATH)
        return self.rc.checked(SYS.openat, AT_FDCWD, addr, flags | O_CLOEXEC, 0, what=f"open {path}")

    # -- the steps ------------------------------------------------------------------------

    def run(self) -> TransplantStats:
        t0 = time.perf_counter_ns()
        rc = self.rc
        rc.open()
        moves = self._vdso_moves()
        # over whatever the child has there (it all goes): clear of the vDSO, now and moved
        rc.scratch_at = self._free_gap(SCRATCH + CODE_SIZE, [(to, to + n) for _, n, to in moves]
                                       + list(own_vdso_areas()))
        rc.scratch_replace = True
        rc.code_page()                  # mapped now: the unmapping must spare it
        t_mem = time.perf_counter_ns()
        first = self._stage()           # rseq, vDSO, unmapping, opens: one batch
        self._drop_rseq(first)
        self._move_vdso(first, moves)
        self._unmap_all(first)
        self._map_vmas(first)
        self._write_pages()
        late = self._stage()            # advice, mm, process state: one batch
        self._advice(late)
        self._set_mm(late)
        self._process_state(late)
        late.run()
        self.stats.memory_ns = time.perf_counter_ns() - t_mem
        self._new_threads()
        self._posix_timers()            # after the threads: a timer may signal one of them
        core = self.img.leader
        signals = self._stage()         # the leader's own state and the signals: one batch
        self._thread_state(rc, core, signals)
        mm = self.img.mm
        # after the creds: a change of them resets it; else the blank child has coldsnap's
        if mm.HasField("dumpable") and (self._creds_set or mm.dumpable != inherited().dumpable):
            signals.add(SYS.prctl, PR_SET_DUMPABLE, mm.dumpable, 0, 0, 0, may_fail=True)
        self._pending(signals)
        self._sigactions(signals)
        signals.run()
        self._seccomp()                 # last: the filters may forbid what restore calls
        rc.leave_as(user_regs(core), blocked_mask(core))
        self.stats.calls += rc.stats.calls
        self.stats.trips += rc.stats.trips
        rc.close()                      # unmaps the scratch, then sets the dumped registers
        self._set_fpu(self.pid, core)
        self.stats.total_ns = time.perf_counter_ns() - t0
        return self.stats

    def _drop_rseq(self, stage: Stage) -> None:
        try:
            conf = ptrace.get_rseq_configuration(self.pid)
        except OSError:
            return
        if conf.rseq_abi_pointer:
            stage.add(SYS.rseq, conf.rseq_abi_pointer, conf.rseq_abi_size, RSEQ_FLAG_UNREGISTER,
                      conf.signature, what="rseq unregister")

    def _vdso_moves(self) -> list[tuple[int, int, int]]:
        """(start, size, to) of each mremap that puts the vDSO block where the images had it."""
        have = own_vdso_areas()         # the blank child is our fork: its vDSO is where ours is
        want = vdso_layout(self.img.mm.vmas)
        if not want or have[0][0] == want[0][0]:
            return []
        moves = []
        block = have[-1][1] - have[0][0]
        lo, hi = min(have[0][0], want[0][0]), max(have[-1][1], want[-1][1])
        if hi - lo < 2 * block:      # overlapping: go through a spot clear of both (and of kept areas)
            tmp = lo - block - PAGE
            for start, end in reversed(self.kept):
                if start < tmp + block + PAGE and tmp - PAGE < end:
                    tmp = start - block - PAGE
            moves += [(s, e - s, s - have[0][0] + tmp) for s, e in have]
            have = tuple((s - have[0][0] + tmp, e - have[0][0] + tmp) for s, e in have)
        return moves + [(s, e - s, s - have[0][0] + want[0][0]) for s, e in have]

    def _move_vdso(self, stage: Stage, moves: list[tuple[int, int, int]]) -> None:
        """Stage the mremaps of MOVES; once they ran, the `syscall` gadget has moved (_moved)."""
        for start, size, to in moves:
            stage.add(SYS.mremap, start, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, to, what="mremap vdso")
        self._vdso_moved_at = len(stage.calls) if moves else None

    def _moved(self, stage: Stage) -> None:
        """STAGE ran (or some of it): if the vDSO moved, so did the gadget of single calls."""
        if self._vdso_moved_at is not None and len(stage.results) >= self._vdso_moved_at:
            self._vdso_moved_at = None
            self.rc.vdso_moved(vdso_layout(self.img.mm.vmas)[0][0] - own_vdso_areas()[0][0])

    def _unmap_all(self, stage: Stage) -> None:
        """Everything but the vDSO block, the scratch area and the kept areas: one munmap per gap."""
        areas = vdso_layout(self.img.mm.vmas)
        for lo, hi in gaps_between([(areas[0][0], areas[-1][1])] + self.kept + self.rc.spans):
            stage.add(SYS.munmap, lo, hi - lo, what=f"munmap {lo:#x}-{hi:#x}")

    def _occupied(self) -> list[tuple[int, int]]:
        spans = [(v.start, v.end) for v in self.img.mm.vmas if v.end <= TASK_SIZE]
        return sorted(spans + self.rc.spans)

    def _free_gap(self, size: int, avoid: list[tuple[int, int]] = ()) -> int:
        """The highest free range of `size` bytes, clear of every dumped area (and of AVOID)."""
        top = TASK_SIZE - PAGE
        for start, end in reversed(sorted(self._occupied() + list(avoid))):
            if end <= top and top - end >= size:
                return top - size
            top = min(top, start)
        if top - MMAP_MIN_ADDR >= size:
            return top - size
        raise CsError("no free address range for restore's scratch area")

    def _map_vmas(self, opens: Stage) -> None:
        """mmap every VMA: files opened inside the target, shared anonymous objects and
        memfds opened from coldsnap's fd on them (restore/shmem.py made and filled each
        once), SysV segments attached. OPENS (the unmapping) runs with the opens; then one
        batch maps, closes and gives MADV_HUGEPAGE."""
        kept = set(self.kept)
        paths: dict[tuple, tuple[str, int]] = {}        # key -> (path, flags), in order
        for v in self.img.vmas():
            if (v.start, v.end) in kept or v.status & VMA_AREA_SYSVIPC:
                continue
            if v.status & VMA_AREA_MEMFD:
                key = ("memfd", v.shmid, _open_mode(v))
                paths.setdefault(key, (self.shm.memfd_path(self.shm.memfd_files[v.shmid]), key[2]))
            elif v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
                key = (v.shmid, _open_mode(v))
                paths.setdefault(key, (self.img.mapped[v.shmid].path, key[1]))
            elif v.status & VMA_ANON_SHARED:
                paths.setdefault(("shmem", v.shmid), (self.shm.path(v.shmid), os.O_RDWR))
        first = len(opens.calls)
        for path, flags in paths.values():
            raw = path.encode() + b"\0"
            if len(raw) > _OFF_TABLE - _OFF_DATA:
                raise CsError(f"path too long to open in the restored process: {path}")
            opens.add(SYS.openat, AT_FDCWD, opens.put(raw), flags | O_CLOEXEC, 0, what=f"open {path}")
        try:
            opens.run()
        finally:
            self._moved(opens)
            got = opens.results[first:]
            fds = {key: fd for key, fd in zip(paths, got) if not is_error(fd)}
            if len(fds) < len(paths):
                self._close_all(fds.values())
        maps = self._stage()
        exe = (self.img.mm.exe_file_id, os.O_RDONLY) if self.img.mm.exe_file_id else None
        sysv = []
        try:
            for v in self.img.vmas():
                if (v.start, v.end) in kept:        # mapped and filled already: its protection only
                    if v.prot != PROT_READ | PROT_WRITE:
                        maps.add(SYS.mprotect, v.start, v.end - v.start, v.prot, what=f"mprotect {v.start:#x}")
                    continue
                fd, flags = -1, v.flags
                if v.status & VMA_AREA_MEMFD:
                    fd = fds[("memfd", v.shmid, _open_mode(v))]
                elif v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
                    fd = fds[(v.shmid, _open_mode(v))]
                elif v.status & VMA_AREA_SYSVIPC:
                    sysv.append(v)
                    continue
                elif v.status & VMA_ANON_SHARED:
                    fd, flags = fds[("shmem", v.shmid)], v.flags & ~MAP_ANONYMOUS
                if self.lazy:       # MAP_LOCKED would fill the area before the userfaultfd: mlock later
                    flags &= ~MAP_LOCKED
                maps.add(SYS.mmap, v.start, v.end - v.start, v.prot, flags | MAP_FIXED, fd,
                         v.pgoff if fd >= 0 else 0, what=f"mmap {v.start:#x}")
            for key, fd in fds.items():
                if key != exe:
                    maps.add(SYS.close, fd, may_fail=True)
            self._huge_advice(maps)
            want_uffd = self.lazy or not vm.thp_always()
            if want_uffd:       # PageWriter's userfaultfd (_copy_uffd) or the lazy pages' (lazy.arm): made in this batch
                maps.add(SYS.userfaultfd, O_CLOEXEC | os.O_NONBLOCK, may_fail=True)
            maps.run()
            if want_uffd:
                self._uffd_copy = maps.results[-1]
        except BaseException:
            self._close_all(fds.values())
            raise
        if exe in fds:
            self._exe_fd = fds[exe]          # PR_SET_MM_MAP takes it: no second open
        for v in sysv:
            self._attach_sysv(v)

    def _close_all(self, fds) -> None:
        """Close FDS in the target, as far as it goes (a restore that failed)."""
        stage = self._stage()
        for fd in fds:
            stage.add(SYS.close, fd, may_fail=True)
        try:
            stage.run()
        except Exception:       # the process is gone, or worse: the first error is what counts
            pass

    def _attach_sysv(self, v) -> None:
        """shmat of SysV segment v.shmid (made by restore/sysv.py) so that v shows it: at the
        address itself when v is the whole attach, else at a free spot, v's part moved in
        place (mremap) and the rest detached."""
        from ..kernel.sysv import SHM_EXEC, SHM_RDONLY   # only for a tree with SysV segments
        rc = self.rc
        size = (self.shm.sysv.size(v.shmid) + PAGE - 1) & ~(PAGE - 1)
        flags = (0 if v.prot & PROT_WRITE else SHM_RDONLY) | (SHM_EXEC if v.prot & PROT_EXEC else 0)
        what = f"shmat SysV {v.shmid} at {v.start:#x}"
        if v.pgoff == 0 and v.end - v.start == size:
            rc.checked(SYS.shmat, v.shmid, v.start, flags, what=what)
        else:
            tmp = rc.checked(SYS.shmat, v.shmid, self._free_gap(size), flags, what=what)
            rc.checked(SYS.mremap, tmp + v.pgoff, v.end - v.start, v.end - v.start,
                       MREMAP_MAYMOVE | MREMAP_FIXED, v.start, what=f"mremap SysV {v.shmid}")
            rc.call(SYS.shmdt, tmp)
        if v.prot & ~PROT_EXEC != (PROT_READ if flags & SHM_RDONLY else PROT_READ | PROT_WRITE):
            rc.checked(SYS.mprotect, v.start, v.end - v.start, v.prot, what="mprotect SysV")

    def _write_pages(self) -> None:
        areas = [(v.start, v.end, v.prot) for v in self.img.vmas()]
        layout = copy = None
        if self.lazy:
            from . import lazy as lazy_pages     # userfaultfd bindings: only for --lazy-pages
            layout = lazy_pages.lazy_layout(self.img)
        elif not vm.thp_always():           # there the faults of process_vm_writev bring huge pages
            copy = self._copy_uffd()
        writer = PageWriter(self.pid, self.task.mem_fd(), uffd=copy)
        try:
            writer.write(lazy_pages.EagerPart(self.img.private, layout) if layout else self.img.private, areas,
                         copy=self._copyable() if copy is not None else ())
        finally:
            writer.close()
            if copy is not None:
                os.close(copy)
            self.img.private.close()
        self.stats.write = writer.stats
        if layout is not None:
            # registered before any later injected call can touch a lazy page
            fd = lazy_pages.arm(self.rc, self.pid, layout, self._uffd_copy)
            try:
                self.lazy.hand(self.pid, fd, layout)
            finally:
                os.close(fd)
            self.stats.lazy_pages = layout.pages

    def _copy_uffd(self) -> int | None:
        """A userfaultfd of the target's mm for PageWriter's UFFDIO_COPY (made inside it by
        the batch of the mmaps, taken, its copy closed by the next batch), or None where
        userfaultfd is unavailable: the pages then go by process_vm_writev."""
        from ..kernel import uffd          # not at import (tests/test_imports.py)
        tfd = self._uffd_copy
        if tfd < 0:
            self._uffd_copy = -1
            return None
        ours = take_fd(self.pid, tfd)
        try:
            uffd.api(ours, 0)
        except OSError:
            os.close(ours)
            return None
        return ours

    def _copyable(self) -> list[tuple[int, int]]:
        """The areas PageWriter may fill with UFFDIO_COPY: writable private anonymous ones
        mapped empty (not MAP_LOCKED, which comes populated; not kept, whose pages are in).
        Not used where THP is `always`, nor in areas advised MADV_HUGEPAGE: UFFDIO_COPY
        fills 4 KiB pages, where the faults of process_vm_writev bring huge pages, as the
        process had them."""
        kept = set(self.kept)
        return [(v.start, v.end) for v in self.img.vmas()
                if v.status & VMA_ANON_PRIVATE and not v.status & (VMA_AREA_MEMFD | VMA_AREA_SYSVIPC)
                and v.prot & PROT_WRITE and not v.flags & MAP_LOCKED and (v.start, v.end) not in kept
                and not (v.madv if v.HasField("madv") else 0) & 1 << MADV_HUGEPAGE]

    def _set_mm(self, stage: Stage) -> None:
        """Stage PR_SET_MM_MAP, then the close of the exe's fd."""
        mm = self.img.mm
        auxv = struct.pack(f"<{len(mm.mm_saved_auxv)}Q", *mm.mm_saved_auxv)
        exe_fd, self._exe_fd = self._exe_fd, -1
        if mm.exe_file_id and _same_exe(self.img.mapped[mm.exe_file_id].path, self.pid):
            # replacing the exe fails (EBUSY) while the old one is mapped: when the blank child
            # already runs the same binary (a Python target), keep it
            if exe_fd >= 0:
                stage.add(SYS.close, exe_fd, may_fail=True)
            exe_fd = -1
        elif mm.exe_file_id and exe_fd < 0:
            exe_fd = self._open(self.img.mapped[mm.exe_file_id].path, 0)
        arg = PRCTL_MM_MAP.pack(mm.mm_start_code, mm.mm_end_code, mm.mm_start_data, mm.mm_end_data,
                                mm.mm_start_brk, mm.mm_brk, mm.mm_start_stack, mm.mm_arg_start,
                                mm.mm_arg_end, mm.mm_env_start, mm.mm_env_end, stage.put(auxv),
                                len(auxv), exe_fd & 0xFFFFFFFF)
        stage.add(SYS.prctl, PR_SET_MM, PR_SET_MM_MAP, stage.put(arg), PRCTL_MM_MAP.size, 0, what="PR_SET_MM_MAP")
        if exe_fd >= 0:
            stage.add(SYS.close, exe_fd, may_fail=True)

    def _process_state(self, rc: Stage) -> None:
        tc = self.img.leader.tc
        for which, name in enumerate(("real", "virt", "prof")):
            t = getattr(tc.timers, name)
            vsec, vusec = t.vsec, t.vusec
            if not (vsec or vusec) and (t.isec or t.iusec):
                # a periodic ITIMER_REAL whose signal is pending reads as stopped: the kernel
                # re-arms it only when that SIGALRM is dequeued; arm it for one interval
                vsec, vusec = t.isec, t.iusec
            if vsec or vusec:
                addr = rc.put(struct.pack("<4Q", t.isec, t.iusec, vsec, vusec))
                rc.add(SYS.setitimer, which, addr, 0, what="setitimer")
        if tc.personality != inherited().personality:
            rc.add(SYS.personality, tc.personality, what="personality")
        if self.img.mm.thp_disabled:
            rc.add(SYS.prctl, PR_SET_THP_DISABLE, 1, 0, 0, 0, what="PR_SET_THP_DISABLE")
        if tc.child_subreaper:          # a fork is no subreaper
            rc.add(SYS.prctl, PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, may_fail=True)
        # the blank child asked for SIGKILL; then the dumped leader's own (0: none), below the
        # root only: the root's parent is coldsnap now, whose exit must not signal it
        below_root = self.pid != self.img.tree.root
        pdeath = self.img.leader.thread_core.pdeath_sig if below_root else 0
        rc.add(SYS.prctl, PR_SET_PDEATHSIG, pdeath, 0, 0, 0, may_fail=True)

    def _huge_advice(self, stage: Stage) -> None:
        """MADV_HUGEPAGE before the pages (the other advice comes after them): the faults of
        process_vm_writev then bring huge pages, as the process had them (_copyable leaves
        these areas to it)."""
        for advice, start, end in advice_runs(self.img.vmas()):
            if advice == MADV_HUGEPAGE:
                stage.add(SYS.madvise, start, end - start, advice, what=f"MADV_HUGEPAGE {start:#x}-{end:#x}")

    def _advice(self, stage: Stage) -> None:
        """madvise each advice of vma_entry.madv (bit 1 << MADV_x) again, once the pages are
        in; one call per run of adjacent areas with the same advice. MAP_LOCKED and
        MAP_GROWSDOWN came back with the mmap flags (MAP_LOCKED lazily: mlock now, the
        lazy pages' server answers the faults it makes). Then the guard regions
        (MADV_GUARD_INSTALL)."""
        if self._uffd_copy >= 0:
            stage.add(SYS.close, self._uffd_copy, may_fail=True)
            self._uffd_copy = -1
        for advice, start, end in advice_runs(self.img.vmas()):
            stage.add(SYS.madvise, start, end - start, advice, what=f"madvise({advice}) {start:#x}-{end:#x}")
        kept = set(self.kept)
        for v in self.img.vmas():
            # blank.py made kept areas MADV_DONTFORK; the process had them so only when it said so
            if (v.start, v.end) in kept and not (v.madv if v.HasField("madv") else 0) & 1 << MADV_DONTFORK:
                stage.add(SYS.madvise, v.start, v.end - v.start, MADV_DOFORK, what=f"MADV_DOFORK {v.start:#x}")
        for v in self.img.vmas() if self.lazy else ():
            if v.flags & MAP_LOCKED:
                stage.add(SYS.mlock, v.start, v.end - v.start, what=f"mlock {v.start:#x}")
        g = self.img.mm.cs_guards
        for start, end in zip(g[0::2], g[1::2]):
            stage.add(SYS.madvise, start, end - start, MADV_GUARD_INSTALL,
                      what=f"MADV_GUARD_INSTALL {start:#x}-{end:#x}")

    def _posix_timers(self) -> None:
        """timer_create each POSIX timer with its dumped id (PR_TIMER_CREATE_RESTORE_IDS),
        clock and notification, then arm it with the time it had left and its interval. The
        overrun count is not restored: the kernel offers no way to set it."""
        timers = sorted(self.img.leader.tc.timers.posix, key=lambda t: t.it_id)
        if not timers:
            return
        rc = self.rc
        rc.checked(SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, what="PR_TIMER_CREATE_RESTORE_IDS")
        for t in timers:
            tid = t.notify_thread_id if t.it_sigev_notify & SIGEV_THREAD_ID else 0
            # struct sigevent (64 bytes): value, signo, notify, thread id; then the id wanted
            sev = struct.pack("<QiiI", t.sival_ptr, t.si_signo, t.it_sigev_notify, tid).ljust(64, b"\0")
            addr = self._put(sev + struct.pack("<i", t.it_id), _OFF_ARGS)
            rc.checked(NR_timer_create, t.clock_id, addr, addr + 64, what=f"timer_create (timer {t.it_id})")
            got = struct.unpack("<i", rc.read_scratch(4, _OFF_ARGS + 64))[0]
            if got != t.it_id:
                raise CsError(f"POSIX timer {t.it_id} came back as timer {got}")
            if t.vsec or t.vnsec:
                its = self._put(struct.pack("<4Q", t.isec, t.insec, t.vsec, t.vnsec))
                rc.checked(NR_timer_settime, t.it_id, 0, its, 0, what=f"timer_settime (timer {t.it_id})")
        rc.checked(SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, what="PR_TIMER_CREATE_RESTORE_IDS")

    def _seccomp(self) -> None:
        """Install the process's seccomp filters, oldest first, from the leader with TSYNC:
        every thread had the same ones (restore/images.py checked), and every thread is
        made and set by now."""
        rc = self.rc
        for prog in self.img.seccomp:
            n = len(prog) // 8
            if 16 + len(prog) > SCRATCH - _OFF_PATH:
                raise CsError(f"a seccomp filter of {n} instructions: more than restore can install")
            addr = self._put(struct.pack("<H6xQ", n, 0) + prog, _OFF_PATH)
            struct_at = self._put(struct.pack("<H6xQ", n, addr + 16), _OFF_PATH)
            rc.checked(NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, struct_at,
                       what="seccomp(SECCOMP_SET_MODE_FILTER)")

    def _new_threads(self) -> None:
        """Every other thread, made in one batch (clone3 with its TID, CLONE_PTRACE: born
        traced by us in an event stop, the leader going on without a stop of its own; their
        births overlap, where one clone at a time waited ~0.4 ms for each new thread's first
        stop), then each one's own state set (_thread_state, from inside it)."""
        tids = [tid for tid in self.img.tids if tid != self.pid]
        for i in range(0, len(tids), _THREADS_A_BATCH):
            self._clone_threads(tids[i:i + _THREADS_A_BATCH])
        for tid in tids:
            self._set_thread(tid)

    def _clone_threads(self, tids: list[int]) -> None:
        stage = self._stage()
        for tid in tids:
            at = stage.put(struct.pack("<i", tid))
            stage.add(SYS.clone3, stage.put(clone_args(THREAD_FLAGS | CLONE_PTRACE, set_tid_ptr=at, set_tid_size=1)),
                      CLONE_ARGS.size, what=f"clone3 (thread {tid})")
        got = stage.run(check=False)
        for tid, res in zip(tids, got):
            if res == tid:
                self.task.adopt_thread(tid)     # each one held, even when a later one failed
        for tid, res in zip(tids, got):
            if res < 0:
                why = "it is in use" if res == -17 else os.strerror(-res)
                raise TargetError(f"cannot create thread {tid}: {why}")
            if res != tid:
                raise TargetError(f"thread {tid} was created as {res}")

    def _set_thread(self, tid: int) -> None:
        """A new thread's registers, its own state (from inside it), blocked mask and FPU."""
        rc = self.rc
        core = self.img.cores[tid]
        regs = user_regs(core)
        trc = RemoteCalls(self.task, tid=tid, mode="step", plain_stop=True)
        trc.repark = False              # held as it is until the tree is let go
        # the template of its calls (not the leader's registers it was born with); its mask
        # is the leader's at the clone: all blocked but SIGTRAP
        trc.open(regs, BLOCK_ALL_BUT_TRAP)
        try:
            trc.borrow_area(rc)         # the same mm: the leader's scratch area and code page
            stage = self._stage(trc)
            self._thread_state(trc, core, stage)
            stage.run()
            trc.leave_as(regs, blocked_mask(core))
        finally:
            self.stats.calls += trc.stats.calls
            self.stats.trips += trc.stats.trips
            trc.close()
        self._set_fpu(tid, core)

    def _thread_state(self, rc: RemoteCalls, core, stage: Stage) -> None:
        """State a thread can only set for itself: tid address, robust list, altstack, rseq,
        name, credentials... Staged in STAGE (of RC's thread; the caller runs it)."""
        th, ti = core.thread_core, core.thread_info
        stage.add(SYS.set_tid_address, ti.clear_tid_addr, may_fail=True)
        if th.futex_rla:
            stage.add(SYS.set_robust_list, th.futex_rla, th.futex_rla_len, what="set_robust_list")
        sas = th.sas
        if th.HasField("sas") and not sas.ss_flags & SS_DISABLE:
            addr = stage.put(struct.pack("<Qi4xQ", sas.ss_sp, sas.ss_flags & ~SS_ONSTACK, sas.ss_size))
            stage.add(SYS.sigaltstack, addr, 0, what="sigaltstack")
        r = th.rseq_entry
        if th.HasField("rseq_entry") and r.rseq_abi_pointer:
            stage.add(SYS.rseq, r.rseq_abi_pointer, r.rseq_abi_size, 0, r.signature, what="rseq")
        if th.comm:
            stage.add(SYS.prctl, PR_SET_NAME, stage.put(th.comm.encode()[:15] + b"\0"), 0, 0, 0, may_fail=True)
        self._creds(stage, th.creds)
        if self.pid != self.img.tree.root:
            # after the creds (a change of ids clears it); never in the root, whose parent is
            # coldsnap, which is about to exit
            stage.add(SYS.prctl, PR_SET_PDEATHSIG, th.pdeath_sig, 0, 0, 0, what="PR_SET_PDEATHSIG")
        if th.cs_timer_slack_ns and th.cs_timer_slack_ns != inherited().timer_slack:
            stage.add(SYS.prctl, PR_SET_TIMERSLACK, th.cs_timer_slack_ns, 0, 0, 0, what="PR_SET_TIMERSLACK")

    def _creds(self, stage: Stage, cr) -> None:
        """ids, groups, capability sets, bounding set, ambient set, securebits, no_new_privs.

        Order matters: the bounding set and securebits need CAP_SETPCAP (still ours, as the
        blank child runs as coldsnap); keep-caps lets the permitted set survive a change
        away from uid 0; capset then sets the sets, and keep-caps goes back as dumped."""
        want, have = Creds.of_entry(cr), own_creds(os.getpid())
        if want == have:
            return
        self._creds_set = True
        for cap in range(cap_last_cap() + 1):
            if have.bounding >> cap & 1 and not want.bounding >> cap & 1:
                stage.add(SYS.prctl, PR_CAPBSET_DROP, cap, 0, 0, 0, what=f"drop capability {cap}")
        if (want.secbits | SECBIT_KEEP_CAPS) != have.secbits:
            stage.add(SYS.prctl, PR_SET_SECUREBITS, want.secbits | SECBIT_KEEP_CAPS, 0, 0, 0,
                      what="PR_SET_SECUREBITS")
        if want.ids != have.ids:
            groups = struct.pack(f"<{len(want.groups)}I", *want.groups)
            if len(groups) > _OFF_TABLE - _OFF_DATA:
                raise CsError(f"{len(want.groups)} supplementary groups: more than restore can set")
            stage.add(SYS.setgroups, len(want.groups), stage.put(groups) if groups else 0, what="setgroups")
            stage.add(SYS.setresgid, *want.gids[:3], what="setresgid")
            stage.add(SYS.setresuid, *want.uids[:3], what="setresuid")
        arg = stage.put(want.capset_arg())
        stage.add(SYS.capset, arg, arg + 8, what="capset")
        for cap in range(cap_last_cap() + 1):
            if want.ambient >> cap & 1:
                stage.add(SYS.prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, what=f"ambient {cap}")
        if not want.secbits & SECBIT_KEEP_CAPS:
            stage.add(SYS.prctl, PR_SET_KEEPCAPS, 0, 0, 0, 0, what="PR_SET_KEEPCAPS")
        if want.no_new_privs:
            stage.add(SYS.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, what="PR_SET_NO_NEW_PRIVS")

    def _pending(self, stage: Stage) -> None:
        """Queue the saved pending signals again, from inside (si_code is kept as it was)."""
        for tid, core in self.img.cores.items():
            th = core.thread_core
            if th.HasField("signals_p"):
                for s in th.signals_p.signals:
                    signo = struct.unpack_from("<i", s.siginfo)[0]
                    stage.add(SYS.rt_tgsigqueueinfo, self.pid, tid, signo, stage.put(s.siginfo[:128]),
                              what="rt_tgsigqueueinfo")
        tc = self.img.leader.tc
        if tc.HasField("signals_s"):
            for s in tc.signals_s.signals:
                signo = struct.unpack_from("<i", s.siginfo)[0]
                stage.add(SYS.rt_sigqueueinfo, self.pid, signo, stage.put(s.siginfo[:128]), what="rt_sigqueueinfo")

    def _sigactions(self, stage: Stage) -> None:
        """Every action that is not all zero: the blank child gave itself all-zero defaults
        (restore.py `_blank_child`), so most processes need a handful of calls, not 62."""
        acts = self.img.leader.tc.sigactions
        if not acts:
            return
        if len(acts) != len(SIGNALS):
            raise CsError(f"core-{self.pid}.img: {len(acts)} signal actions, expected {len(SIGNALS)}")
        blob = b"".join(struct.pack("<QQQQ", a.sigaction, a.flags, a.restorer, a.mask) for a in acts)
        base = None
        for i, sig in enumerate(SIGNALS):
            if blob[32 * i:32 * i + 32] == DEFAULT_SIGACTION:
                continue
            if base is None:
                base = stage.put(blob)
            stage.add(SYS.rt_sigaction, sig, base + 32 * i, 0, 8, what=f"rt_sigaction({sig})")

    def _set_fpu(self, tid: int, core) -> None:
        """coldsnap's raw xstate as it was read; else (CRIU's images, or another CPU's xstate
        size) the area rebuilt from the image's components; else the FXSAVE part alone."""
        fp = core.thread_info.fpregs
        raw = fp.xsave.cs_xsave_raw if fp.HasField("xsave") else b""
        try:
            if raw:
                ptrace.set_regset(tid, ptrace.NT_X86_XSTATE, raw)
                return
        except OSError:
            pass
        if fp.HasField("xsave"):
            try:
                area = build_area(fxsave(core), fp.xsave, xstate_layout(), cpuid(0xD, 0)[1])
                ptrace.set_regset(tid, ptrace.NT_X86_XSTATE, area)
                return
            except OSError:
                pass
        ptrace.set_regset(tid, ptrace.NT_PRFPREG, fxsave(core))


def advice_runs(vmas) -> list[tuple[int, int, int]]:
    """(advice, start, end) for each run of adjacent VMAs that share advice bit 1 << advice."""
    runs: list[tuple[int, int, int]] = []
    last: dict[int, int] = {}           # advice -> index of its open run in runs
    for v in vmas:
        madv = v.madv if v.HasField("madv") else 0
        while madv:
            bit = madv & -madv
            madv ^= bit
            advice = bit.bit_length() - 1
            i = last.get(advice)
            if i is not None and runs[i][2] == v.start:
                runs[i] = (advice, runs[i][1], v.end)
            else:
                last[advice] = len(runs)
                runs.append((advice, v.start, v.end))
    return runs


def _open_mode(v) -> int:
    """The access mode to open a mapped file with: as the dumped process had it (so a later
    mprotect(PROT_WRITE) of a shared mapping still works), else what the mapping needs."""
    if v.HasField("fdflags"):
        return v.fdflags & os.O_ACCMODE
    return os.O_RDWR if v.status & VMA_FILE_SHARED and v.prot & PROT_WRITE else os.O_RDONLY


class Inherited(NamedTuple):
    """What a blank child (a fork of coldsnap) has of coldsnap's: the transplant sets it only
    where the images differ."""
    personality: int
    timer_slack: int
    dumpable: int


@functools.cache
def inherited() -> Inherited:
    return Inherited(syscall(SYS.personality, 0xFFFFFFFF, what="personality"),
                     syscall(SYS.prctl, PR_GET_TIMERSLACK, 0, 0, 0, 0, what="PR_GET_TIMERSLACK"),
                     syscall(SYS.prctl, PR_GET_DUMPABLE, 0, 0, 0, 0, what="PR_GET_DUMPABLE"))


@functools.cache
def own_creds(pid: int) -> Creds:
    """The credentials of coldsnap (PID: ours, so that a process forked from us reads its own),
    read once: a blank process has them, and so has each thread the transplant clones in it
    before the thread's own are set (the leader's come last)."""
    return Creds.of_status(read_status(pid))


def _same_exe(path: str, pid: int) -> bool:
    """PATH is the file process PID runs."""
    try:
        return os.path.samestat(os.stat(path), read_path_link(pid, "exe").stat)
    except OSError:
        return False


def transplant(task: FrozenTask, images: DumpImages, shm: SharedMemory, lazy=None,
               kept: list[tuple[int, int]] = ()) -> TransplantStats:
    """KEPT: (start, end) of private areas the blank child holds already, pages and all
    (restore/prebuild.py): not unmapped, not mapped, no page written; protection and
    advice set as the images say."""
    return Transplant(task, images, shm, lazy, kept).run()
