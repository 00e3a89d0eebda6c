"""The lazy-restore server: the detached process that brings the pages in (its guardian:
restore/lazy_guardian.py). Started by restore/lazy_start.py (the part coldsnap imports);
this module runs in the server only.

    server = start_server(images, root, log)  # in coldsnap, once the blank processes exist
    server.hand(pid, uffd)                    # per process, from the transplant
    server.go()                               # every process is built: push the rest
    ... coldsnap detaches the tree and exits; the server goes on ...

coldsnap forks a short-lived middle process that calls setsid() and forks the **guardian**,
which forks the **server** (through `coldsnap service` the middle process is forked ahead, by
the spare worker before its request: restore/lazy_seed.py; its server learns each process,
layout, runs and pages files, with its uffd instead of inheriting coldsnap's images); both have their own session, no terminal, stdio on /dev/null
(or the log file). The server answers faults (UFFDIO_COPY from the images' pages files,
mapped read-only: one copy from the page cache; or from a page server's session, fetched
first: memory/source.py; the fault's neighbourhood first), follows
the events (fork: the child's own uffd, cloned state; mremap moves pending pages; munmap
and madvise(DONTNEED) drop them: a later fault there gets zeros, as it would have), and
between two polls pushes the rest in background order (lazy_pages.py), up to 32 MiB a step
(2 MiB, never cut, from a page server: fetched whole first), each step cut short as soon as a fault or an event waits, and
continuing a sequential reader's window (its next fault there still counts as sequential,
so its window keeps growing). Each copy is cut in pieces that a helper thread shares (lazy_copier.py: two CPUs copy when the
process leaves one idle), and once the process runs another thread fills the server's page
tables of the pages files ahead of the copies (PageSource.warm). The push and that
thread begin when coldsnap says go, or, for a command that exits as soon as the processes
run (`restore -d`), once that command has ended (a pidfd with go: the CPUs are the
command's until then; the faults are answered from the start), at most HOLD_MAX after go.
It exits 0 once every page is in, closing the uffds: every registration vanishes with them.

The server imports no numpy (its page state, lazy_pages.py, is a list of runs): forked
before the transplant, it has its few imports done by the time the process runs, and the
first fault is answered at once.

Why a guardian: when the last holder of a userfaultfd closes it the kernel unregisters its
areas, and a missing page then faults in as zeros: a process whose server died would run
with holes. The guardian holds a copy of every uffd (coldsnap sends it each one, the server
each fork's) so that the server's death leaves the faults waiting; it is the server's
parent, so it learns its end with waitpid. A server that exits with anything but 0 (killed,
crashed, its page server lost or wrong, aborted restore) makes the guardian SIGKILL every
restored process and every descendant of theirs, wait until they are gone, and only then
drop the uffds.

The status: the server listens on the abstract unix socket `coldsnap-lazy-PID` (PID: the
restored root; no file is made) and answers one JSON line (`coldsnap lazy-status PID`).
"""
from __future__ import annotations

import errno
import json
import os
import resource
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from ..images.source import LocalPages
from ..kernel import uffd, vm
from ..kernel.page import PAGE_SHIFT, PAGE_SIZE as PAGE
from ..memory.source import PageSource
from .lazy import lazy_layout
from .lazy_copier import Copier
from .lazy_pages import LazyPages, Run
from .lazy_seed import SentImages, decode_process
from .lazy_start import recv_fds

AHEAD, BEHIND = 64, 16          # pages copied around a fault: sequential readers run ahead
STREAM_MAX = 1024               # ...and a fault just past the last window doubles it, up to 4 MiB
FIRST = 16                      # a fault's own pages go in alone first: the faulting thread runs on
PUSH_PAGES = 8192               # one background step (32 MiB, two threads: lazy_copier.py), cut short by a fault
FETCH_PAGES = 512               # ...2 MiB, not cut, where pages come from a page server (fetched before the copy)
CONTROL_MAX = 1 << 18           # a control message: "fd PID", a seed's with the process's numbers
HOLD_MAX = 0.5                  # s: the longest a push waits for the command's end after go
ABORTED = 3                     # server exit status: coldsnap never said go
_ZERO = bytes(PAGE)
_ZERO_AT = vm.address(_ZERO)            # immutable and kept: its address stays valid


# -- the server ------------------------------------------------------------------------------

@dataclass
class Space:
    """One address space being filled: its uffd and what it still lacks."""
    fd: int
    pid: int | None
    pages: LazyPages
    source: PageSource                  # where its pages are read (images, or a page server)
    deferred: list[int] = field(default_factory=list)    # faults to retry (EAGAIN)
    window_end: int = 0                 # where the last fault's window ended
    ahead: int = AHEAD


@dataclass
class Counters:
    faults: int = 0
    fault_pages: int = 0
    pushed_pages: int = 0
    zero_pages: int = 0
    forks: int = 0
    remaps: int = 0
    removes: int = 0                    # madvise(DONTNEED/REMOVE) and munmap events
    split_runs: int = 0                 # runs copied page by page (across a mapping's end)
    stale: int = 0                      # faults on a page in already (its copy woke the thread)
    warm_cpu: float = 0.0               # seconds of CPU of the thread filling our page tables
    fault_ns: int = 0                   # time in the copies answering faults
    push_ns: int = 0                    # time in the background copies


class Server:
    def __init__(self, images, root: int, ctl: socket.socket, guardian: socket.socket,
                 listener: socket.socket | None):
        self.images = images
        self.listener = listener        # the status socket (lazy_start.py status_listener)
        self.root = root
        self.ctl = ctl
        self.guardian = guardian
        self.spaces: dict[int, Space] = {}        # uffd -> space
        self.go = False
        self.t_go = 0.0
        self.held = -1                  # a pidfd whose exit lets the push begin (LazyServer.go)
        self.hold_until = 0.0
        self.total = 0
        self.count = Counters()
        self.t0 = time.monotonic()
        self.poller = select.poll()
        self.copier = Copier()
        self.seeded = isinstance(images, SentImages)     # its processes come with their uffds
        local = type(images.origin) is LocalPages and images.origin.lazy is None
        self.push_pages = PUSH_PAGES if local else FETCH_PAGES
        # a step from a page server is fetched whole before its copy: cut short, the rest
        # would be fetched again, so it goes in whole (2 MiB)
        self.cut_short = self._wanted if local else None

    # -- main loop -------------------------------------------------------------------

    def run(self) -> int:
        self.images.origin.start()      # a page server: connected before any fault
        listener = self.listener
        self.poller.register(self.ctl.fileno(), select.POLLIN)
        if listener is not None:
            self.poller.register(listener.fileno(), select.POLLIN)
        turn = 0
        released = False
        try:
            while not self.go or self._pending():
                if self.held >= 0 and time.monotonic() >= self.hold_until:
                    self._release()
                busy = self.go and self.held < 0 and self._pending()
                wait = 0 if busy else max(1, int((self.hold_until - time.monotonic()) * 1e3) + 1) \
                    if self.held >= 0 else None
                for fd, _ in self.poller.poll(wait):
                    if fd == self.held:
                        self._release()
                    elif fd == self.ctl.fileno():
                        if not self._control():
                            print("coldsnap lazy server: the restore was abandoned", file=sys.stderr)
                            return ABORTED
                    elif listener is not None and fd == listener.fileno():
                        self._answer(listener)
                    elif fd in self.spaces:
                        self._events(self.spaces[fd])
                for space in list(self.spaces.values()):
                    if space.deferred:
                        todo, space.deferred = space.deferred, []
                        for addr in todo:
                            self._fault(space, addr, False)
                if busy:
                    live = [s for s in self.spaces.values() if s.pages.pending]
                    if live:
                        turn = (turn + 1) % len(live)
                        self._push(live[turn])
                if self.go and not released and not any(s.pages.pending_newest for s in self.spaces.values()):
                    # level 0 (with a page server: what it holds) is in: let the source go now,
                    # the rest comes from local files (a post-copy's source stops serving)
                    self.images.origin.close()
                    released = True
        finally:
            if listener is not None:
                listener.close()
        c = self.count
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        main = resource.getrusage(resource.RUSAGE_THREAD)
        main_ms, cpu_ms = (main.ru_utime + main.ru_stime) * 1e3, (cpu.ru_utime + cpu.ru_stime) * 1e3
        print(f"coldsnap lazy server: every page is in after {(time.monotonic() - self.t0) * 1e3:.0f} ms "
              f"({(time.monotonic() - self.t_go) * 1e3:.0f} ms after go, CPU {cpu_ms:.0f} ms: "
              f"main thread {main_ms:.0f}, page tables {c.warm_cpu * 1e3:.0f}, copy helper {cpu_ms - main_ms - c.warm_cpu * 1e3:.0f}): "
              f"{c.pushed_pages} pushed, {c.fault_pages} on {c.faults} faults, {c.zero_pages} zero, {c.forks} forks, "
              f"{c.remaps} remaps, {c.removes} removes/unmaps, {c.split_runs} runs split; "
              f"{self.copier.calls} copies, {c.fault_ns / 1e6:.0f} ms answering faults, {c.push_ns / 1e6:.0f} ms pushing, "
              f"{c.stale} faults on a page in already"
              f"{'; started ahead (seed)' if self.seeded else ''}", file=sys.stderr)
        self.images.origin.close()      # a page server learns that every page is in
        return 0

    def _warm(self) -> None:
        """The sources made quick to read (PageSource.warm), ahead of the copies."""
        for proc in self.images.procs.values():
            proc.private.warm()
        self.count.warm_cpu = time.thread_time()

    def _release(self) -> None:
        """The push may begin, and the thread filling our page tables: not before, the restore
        and the command that made it need the CPUs until they are done."""
        if self.held >= 0:
            self.poller.unregister(self.held)
            os.close(self.held)
            self.held = -1
        threading.Thread(target=self._warm, name="coldsnap-warm", daemon=True).start()

    def _pending(self) -> int:
        return sum(s.pages.pending for s in self.spaces.values())

    def _control(self) -> bool:
        got = recv_fds(self.ctl, CONTROL_MAX, 64)
        if got is None:
            if self.go:
                self.poller.unregister(self.ctl.fileno())
                return True
            return False
        msg, fds = got
        if msg == b"go":
            self.go = True
            self.t_go = time.monotonic()
            if fds:         # the push waits for the end of the command that restored (LazyServer.go)
                self.held, self.hold_until = fds[0], self.t_go + HOLD_MAX
                self.poller.register(self.held, select.POLLIN)
            else:
                self._release()
        elif msg.startswith(b"fd "):
            head, _, parts = msg.partition(b"\n")
            pid = int(head.split()[1])
            if parts:               # from a seed (restore/lazy_seed.py): the process comes with it
                proc = self.images.procs[pid] = decode_process(parts, fds[1:])
                layout = proc.layout
            else:
                proc = self.images.procs[pid]
                layout = lazy_layout(proc)
            pages = LazyPages.build(layout.areas, proc.private.located(), layout.runs)
            self.total += pages.pending
            self._add(Space(fds[0], pid, pages, proc.private))
        return True

    def _add(self, space: Space) -> None:
        self.spaces[space.fd] = space
        self.poller.register(space.fd, select.POLLIN)

    def _drop(self, space: Space) -> None:
        """The process is gone: nothing more to copy into it."""
        self.spaces.pop(space.fd, None)
        self.poller.unregister(space.fd)
        os.close(space.fd)

    def _answer(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        # what coldsnap sent before its restore returned counts (the server may answer before
        # it read every process's uffd: it is bound as soon as it exists)
        while not self.go and select.select([self.ctl], [], [], 0)[0] and self._control():
            pass
        with conn:
            c = self.count
            body = {"server": os.getpid(), "root": self.root, "ready": self.go,
                    "processes": sorted(s.pid for s in self.spaces.values() if s.pid),
                    "address_spaces": len(self.spaces), "pages_total": self.total,
                    "pages_left": self._pending(), "faults": c.faults, "fault_pages": c.fault_pages,
                    "pushed_pages": c.pushed_pages, "zero_pages": c.zero_pages, "forks": c.forks,
                    "remaps": c.remaps, "removes": c.removes, "stale_faults": c.stale, "copies": self.copier.calls,
                    "fault_copy_ms": round(c.fault_ns / 1e6, 1), "push_copy_ms": round(c.push_ns / 1e6, 1),
                    "elapsed_ms": round((time.monotonic() - self.t0) * 1e3, 1)}
            try:           # whoever asked may be gone already: never a reason to stop serving
                conn.settimeout(0.5)
                conn.sendall(json.dumps(body).encode() + b"\n")
            except OSError:
                pass

    # -- events ----------------------------------------------------------------------

    def _events(self, space: Space) -> None:
        while space.fd in self.spaces:
            try:
                data = os.read(space.fd, uffd.MSG_SIZE * 64)
            except BlockingIOError:
                return
            except OSError as e:
                print(f"coldsnap lazy server: reading the uffd of {space.pid}: {e.strerror}", file=sys.stderr)
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):   # those: a fork's event, kept for later
                    self._drop(space)
                return
            if not data:
                return
            for msg in uffd.parse_msgs(data):
                self._event(space, msg)

    def _event(self, space: Space, msg: uffd.Msg) -> None:
        if msg.event == uffd.UFFD_EVENT_PAGEFAULT:
            self.count.faults += 1
            self._fault(space, msg.a & ~(PAGE - 1), bool(msg.b & uffd.UFFD_PAGEFAULT_FLAG_WRITE))
        elif msg.event == uffd.UFFD_EVENT_FORK:
            self.count.forks += 1
            child = Space(msg.a, None, space.pages.clone(), space.source)
            self.total += child.pages.pending
            try:
                socket.send_fds(self.guardian, [f"fork {space.pid}".encode()], [msg.a])
            except OSError as e:      # the guardian is gone: serve on (and say so)
                print(f"coldsnap lazy server: cannot hand a fork's uffd to the guardian: {e.strerror}",
                      file=sys.stderr)
            self._add(child)
        elif msg.event == uffd.UFFD_EVENT_REMAP:
            self.count.remaps += 1
            space.pages.move(msg.a, msg.b, msg.c)
        elif msg.event in (uffd.UFFD_EVENT_REMOVE, uffd.UFFD_EVENT_UNMAP):
            self.count.removes += 1
            space.pages.clear(msg.a, msg.b)

    def _fault(self, space: Space, addr: int, write: bool) -> None:
        if space.pages.is_pending(addr):
            near = space.window_end - (space.ahead << PAGE_SHIFT) <= addr <= space.window_end + (AHEAD << PAGE_SHIFT)
            space.ahead = min(STREAM_MAX, space.ahead * 2) if near else AHEAD
            space.window_end = addr + (space.ahead << PAGE_SHIFT)
            space.pages.follow(space.window_end)    # the background goes on from there
            runs = space.pages.window(addr, space.ahead, BEHIND)
            if runs and runs[0].npages > FIRST:
                runs[:1] = _cut(runs[0], FIRST)
            got, t = 0, time.perf_counter_ns()
            for run in runs:
                got, copied = self._copy(space, run)
                self.count.fault_pages += copied
                if got == -errno.EAGAIN:
                    space.deferred.append(addr)
                    break
                if got == -errno.ESRCH:
                    break
            self.count.fault_ns += time.perf_counter_ns() - t
            if got in (-errno.EAGAIN, -errno.ESRCH):
                return
            if space.pages.is_pending(addr):      # an EEXIST stopped the run short of it
                space.deferred.append(addr)
            return
        # nothing saved there (or discarded since): zeros, as the kernel would have given
        if write:
            err, _ = uffd.copy(space.fd, addr, _ZERO_AT, PAGE)
        else:
            err = uffd.zeropage(space.fd, addr, PAGE)
        if err == -errno.EAGAIN:
            space.deferred.append(addr)
        elif err == -errno.ESRCH:
            self._drop(space)
        elif err:
            uffd.wake(space.fd, addr, PAGE)      # present already (EEXIST) or gone: retry it
            self.count.stale += err == -errno.EEXIST
        else:
            self.count.zero_pages += 1

    def _push(self, space: Space) -> None:
        run = space.pages.next_run(self.push_pages)
        if run is None:
            space.pages.recount()       # never spin on a count that went wrong
            return
        t = time.perf_counter_ns()
        copied = self._copy(space, run, self.cut_short)[1]
        self.count.push_ns += time.perf_counter_ns() - t
        self.count.pushed_pages += copied
        if copied < run.npages:
            space.pages.follow(run.vaddr)       # cut short: what is left there comes next
        if run.vaddr == space.window_end:
            space.window_end = run.vaddr + (copied << PAGE_SHIFT)     # a reader there goes on streaming

    def _wanted(self) -> bool:
        """Something waits for the server (a fault, an event, a status request): a push stops."""
        return bool(self.poller.poll(0))

    def _copy(self, space: Space, run: Run, stop=None) -> tuple[int, int]:
        """UFFDIO_COPY one run (in pieces, at once); the state follows what really went in.
        (0 or the first -errno of a piece, pages copied)."""
        saved = space.source.saved(run.level, run.off, run.npages << PAGE_SHIFT)   # held until we return
        worst, copied = 0, 0
        for piece, (err, done) in self.copier.copy(space.fd, run.vaddr, vm.address(saved), run.npages << PAGE_SHIFT, stop):
            if done:
                space.pages.done(piece[0], done >> PAGE_SHIFT)
                copied += done >> PAGE_SHIFT
            if err:
                err, more = self._failed(space, piece, err, done)
                copied += more
                if err == -errno.ESRCH:
                    return err, copied
                worst = worst or err
        return worst, copied

    def _failed(self, space: Space, piece: tuple[int, int, int], err: int, done: int) -> tuple[int, int]:
        """A piece stopped at DONE bytes with ERR: (what the caller should know, pages copied since)."""
        if err == -errno.EAGAIN:
            return err, 0
        if err == -errno.ESRCH:
            self._drop(space)
            return err, 0
        dst, src, nbytes = piece
        if err == -errno.EEXIST:     # that page is in already: what the process sees wins
            space.pages.done(dst + done, 1)
            return err, 0
        # ENOENT/EINVAL: the run crosses the end of a mapping (an mprotect split the area, or
        # part of it is gone): page by page, so that only what has no mapping is given up
        self.count.split_runs += 1
        copied, lost, why = 0, 0, 0
        for at in range(done, nbytes, PAGE):
            e, d = uffd.copy(space.fd, dst + at, src + at, PAGE)
            if e == -errno.EAGAIN:
                return e, copied
            if e == -errno.ESRCH:
                self._drop(space)
                return e, copied
            space.pages.done(dst + at, 1)
            copied += d >> PAGE_SHIFT
            if e and e != -errno.EEXIST:
                lost, why = lost + 1, e
        if lost:        # one line per piece (a child's DONTFORK area may be thousands of pages)
            print(f"coldsnap lazy server: {lost} pages of {dst + done:#x}+{nbytes - done:#x} of {space.pid} "
                  f"have no mapping any more: {os.strerror(-why)}", file=sys.stderr)
        return 0, copied


def _cut(run: Run, n: int) -> list[Run]:
    """RUN as its first N pages and the rest."""
    return [Run(run.vaddr, run.level, run.off, n),
            Run(run.vaddr + (n << PAGE_SHIFT), run.level, run.off + (n << PAGE_SHIFT), run.npages - n)]
