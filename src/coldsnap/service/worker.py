"""The child side of `coldsnap service`: a forked copy of the service that drops everything of
it, takes on a caller's context (stdio, cwd, environment, umask) and runs the command as
`coldsnap` would (cli.main), then exits with its code.

A worker is forked either for its request, or ahead of it as the service's *spare*: that one
copies, while it waits, the pages it still shares with the service (MADV_POPULATE_WRITE on
the present ones), so that the command itself takes no copy-on-write fault. Those were 1400
faults of an 8 MiB dump (half of its worker's time, inside the frozen window too) and 1000 of
its restore. It also forks, before that copy, the middle process of a lazy restore
(restore/lazy_seed.py), which a lazy restore takes instead of forking one."""
from __future__ import annotations

import io
import os
import select
import signal
import socket
import sys
import tempfile
import traceback
from typing import Callable, Iterable, NoReturn

from .. import cli
from ..kernel.clone import set_parent_death_signal
from ..kernel.pagemap import PAGE_IS_PRESENT, PagemapScanner, ScanQuery, has_pagemap_scan, open_pagemap
from ..kernel.procfs import read_maps
from ..kernel.vm import MADV_POPULATE_WRITE, madvise
from ..memory.frozen_copy import make_buffers_ahead
from ..restore import lazy_seed
from . import protocol as P


def die_with(service: int) -> None:
    """SIGTERM when the service ends, even SIGKILLed: the command then unwinds as an
    interrupted one (targets resumed, no half image directory) instead of going on unseen,
    its client told it lost the service. Gone already: leave at once."""
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != service:
        os._exit(1)


def leave_service(sockets: Iterable[socket.socket], fds: Iterable[int], closers: Iterable) -> None:
    """Drop the service's signal handling and close its sockets, fds and selector (CLOSERS:
    objects with close()), and lead a process group: a signal meant for the service's group
    is not ours. Not a session of its own: with autogroup scheduling a session is a
    scheduling group, and the spare's copy at nice 19 yields only to its own group's tasks.
    (On a loaded machine, load 5-7, neither choice won clearly: one run saw a dump's frozen
    copy at half speed in a new session, another the whole commands faster there.)"""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)    # as a command starts, whatever the service's (nohup)
    os.setpgid(0, 0)
    for c in closers:
        c.close()
    for s in sockets:
        s.close()
    for fd in fds:
        os.close(fd)


COPY_PIECE = 2 << 20            # between two looks at whether a request came (~0.5 ms of copying)


def copy_shared_pages(stop: Callable[[], bool] = lambda: False) -> int:
    """Copy now every present page of our private writable mappings (still shared with the
    service since the fork), piece by piece until STOP says to: bytes copied. Nothing where
    the kernel lacks PAGEMAP_SCAN or MADV_POPULATE_WRITE: the command then takes those
    faults itself, as it does for what is left when STOP cut the copy short."""
    if not has_pagemap_scan():
        return 0
    pid, done = os.getpid(), 0
    fd = open_pagemap(pid)
    try:
        scanner = PagemapScanner(fd)
        present = ScanQuery(category_mask=PAGE_IS_PRESENT)
        for m in read_maps(pid):
            if m.perms[:2] != "rw" or m.perms[3] != "p":
                continue
            flat = scanner.scan_flat(m.start, m.end, present)
            for i in range(0, len(flat), 3):
                for start in range(flat[i], flat[i + 1], COPY_PIECE):
                    if stop():
                        return done
                    length = min(COPY_PIECE, flat[i + 1] - start)
                    try:
                        madvise(start, length, MADV_POPULATE_WRITE)
                    except OSError:
                        return done
                    done += length
    finally:
        os.close(fd)
    return done


def run_spare(channel: socket.socket) -> NoReturn:
    """A spare's life (after leave_service): copy the shared pages, say b"r" on CHANNEL,
    wait for the request (its record and fds, as the client sent them), run it, say its end
    on CHANNEL (exit_worker). A request
    that comes before the copy is done cuts it short (the command takes the rest of the
    faults, still far fewer than a worker forked for it). The service gone first (CHANNEL
    at its end): exit 0."""
    def life() -> int:
        # the copy at the lowest priority: it must not slow down a command that runs meanwhile
        # (in the service's session, so in its scheduling autogroup); root may raise it back
        nice = os.getpriority(os.PRIO_PROCESS, 0) if os.geteuid() == 0 else None
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, 19)
        poll = select.poll()
        poll.register(channel, select.POLLIN)
        copy_shared_pages(stop=lambda: bool(poll.poll(0)))     # a request (or the service's end) came
        if not poll.poll(0):
            make_buffers_ahead()            # a dump's copy buffers
        if nice is not None:    # before the wait: woken at nice 19, a loaded machine runs us ms later
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        try:
            channel.send(b"r")
        except OSError:         # the service handed a request over already and closed its end
            pass
        try:
            data, fds = receive(channel)
        except ConnectionResetError:
            # the service closed its end with our b"r" unread: the kernel says so once; what
            # follows is its request, if it handed one over first, else the end (it is gone)
            data, fds = receive(channel)
        if not data:
            os._exit(0)
        _tell_end_on(channel)
        return run_request(P.decode_request(data), fds)
    try:        # a lazy restore's middle process, ahead: before the copy and its nice, and while
        lazy_seed.prepare()     # the forwarded signals are still blocked (none lost in the fork)
    except Exception:           # noqa: BLE001 - no seed: a lazy restore forks its own
        pass
    _run_then_exit(life)


def run_forked(request: P.Request, fds: list[int], channel: socket.socket) -> NoReturn:
    """A worker forked for REQUEST (after leave_service), once the service says b"g" on
    CHANNEL (it holds our pidfd; the channel's end instead: leave, running nothing); its end
    said there too (exit_worker)."""
    try:
        said = channel.recv(1)
    except OSError:
        said = b""
    if said != b"g":
        os._exit(0)
    _tell_end_on(channel)
    _run_then_exit(lambda: run_request(request, fds))


# where exit_worker says the command's end, and the worker's pid: a process the command forks
# that ends through exit_worker must not say its own end there
_end_channel: tuple[int, socket.socket] | None = None


def _tell_end_on(channel: socket.socket) -> None:
    global _end_channel
    _end_channel = (os.getpid(), channel)


def _run_then_exit(body: Callable[[], int]) -> NoReturn:
    """A worker's end: BODY's exit code, or what its exception makes of it; never a return
    into the service's loop."""
    code = 1
    try:
        code = body()
    except SystemExit as e:
        code = exit_code_of(e)
    except BaseException as e:
        code = uncaught(e)
    finally:
        exit_worker(code)


def run_request(request: P.Request, fds: list[int]) -> int:
    """Take on the caller's context (FDS: stdin, stdout, stderr, cwd) and run its command."""
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    os.fchdir(fds[3])
    for fd in fds:
        os.close(fd)
    os.umask(request.umask)
    _take_environ(request.environ)
    tempfile.tempdir = None             # TMPDIR as the caller has it
    _new_stdio()
    # the signals a client passes on stay blocked (by the service around the fork) until the
    # command's handlers are in place: one sent before is delivered to them, not to SIG_DFL
    return cli.main(request.argv, own_process=True, held=P.FORWARDED)


def _take_environ(environ: dict[str, str]) -> None:
    """os.environ made ENVIRON, by setting and removing only what differs: each is a putenv
    or unsetenv, and the caller's environment and the service's share most of theirs (a
    clear and a whole update: 67 us for 35 variables, 16 here)."""
    current = os.environ
    for name in [n for n in current if n not in environ]:
        del current[name]
    for name, value in environ.items():
        if current.get(name) != value:
            current[name] = value


def exit_code_of(e: SystemExit) -> int:
    """argparse's exits: usage errors (2), --help (0)."""
    if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
        return 1
    return 0 if e.code is None else e.code


def uncaught(e: BaseException) -> int:
    """As the interpreter ends on an exception the command let out (a bug, or Ctrl-C before
    the command catches it): the traceback, then exit 1, or death by SIGINT."""
    traceback.print_exception(e)
    return -signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1


def exit_worker(code: int) -> NoReturn:
    """As `coldsnap` ends (cli.command), but never through SystemExit: that would unwind into
    the service's loop, in this forked child. A negative CODE: death by that signal.

    The command is done once its threads are joined and its output flushed: from then on the
    signals a client passes on stay blocked (the code is the command's, whatever comes
    after), every fd but the channel is closed (the caller's stdio first: a caller reading
    our output gets its end now, not after our exit) and the end is said on the channel, for
    the service to relay before our teardown (exit, unmapping a fork of the service: 4-7 ms
    the client no longer waits for). Only SIGKILL can still end us otherwise; what the
    client got stands (the service logs the difference)."""
    try:
        threading = sys.modules["threading"]
        for t in threading.enumerate():     # as the interpreter would: join what still runs
            if t is not threading.main_thread() and not t.daemon:
                t.join()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, P.FORWARDED)
    except BaseException:   # a handler of one that came just before: it ran, too late to count
        pass
    if _end_channel is not None and _end_channel[0] == os.getpid():
        _say_end(_end_channel[1], code)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [-code])
        os.kill(os.getpid(), -code)
        code = 128 - code
    os._exit(code)


def _say_end(channel: socket.socket, code: int) -> None:
    """Close every fd but CHANNEL's, then say CODE there (exit_worker)."""
    keep = channel.fileno()
    os.closerange(0, keep)
    os.closerange(keep + 1, MAX_FD)
    try:
        channel.send(P.encode_exit(-code, True) if code < 0 else P.encode_exit(code & 0xFF, False),
                     socket.MSG_DONTWAIT)
    except OSError:         # the service is gone (we get its parent-death SIGTERM, blocked)
        pass


MAX_FD = 1 << 20            # above any fd a process gets (the kernel's nr_open)


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One record and the fds that came with it (all of them, to be closed by the caller);
    a record cut short (too large, or too many fds) is a ProtocolError."""
    fds: list[int] = []
    data, ancdata, flags, _ = sock.recvmsg(P.MAX_REQUEST + 1, socket.CMSG_SPACE(4 * (P.REQUEST_FDS + 1)),
                                           socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(payload[i:i + 4], sys.byteorder) for i in range(0, len(payload) - 3, 4)]
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > P.MAX_REQUEST:
        for fd in fds:
            os.close(fd)
        raise P.ProtocolError("request too large or with too many fds")
    return data, fds


def _new_stdio() -> None:
    """sys.stdin/stdout/stderr on fds 0-2 again, buffered as the interpreter would have set
    them up for these files (stdout line-buffered only on a terminal)."""
    def stream(fd: int, old, writing: bool):
        raw = io.FileIO(fd, "w" if writing else "r", closefd=False)
        tty = raw.isatty()
        buf = io.BufferedWriter(raw) if writing else io.BufferedReader(raw)
        return io.TextIOWrapper(buf, encoding=old.encoding, errors=old.errors,
                                line_buffering=writing and (tty or fd == 2))
    sys.stdin = sys.__stdin__ = stream(0, sys.__stdin__ or sys.stdin, False)
    sys.stdout = sys.__stdout__ = stream(1, sys.__stdout__ or sys.stdout, True)
    sys.stderr = sys.__stderr__ = stream(2, sys.__stderr__ or sys.stderr, True)
