"""A lazy restore's middle process forked ahead of the request: `coldsnap service`'s spare
worker forks it before it copies its pages, so that a lazy restore through the service
forks nothing (the fork of a worker and the copy-on-write faults it costs the rest of the
command were ~2 ms of it) and the other commands lose nothing but a process that ends with
their worker.

    prepare()               # in the spare, before its request (lazy_start.start_server takes it)

The seed waits for start_server's word: the root's PID and, as fds, the log, the info pipe,
the server's and the guardian's sockets and a pidfd per process; then it is the middle
process of lazy_start.py (a session of its own, the guardian, which forks the server). The
server does not inherit coldsnap's images: it learns each process with its uffd
(LazyServer.hand): the lazy layout and the saved runs, as numbers, and the pages files, as
fds it maps. So only restores whose pages come from the local chain take the seed (not a
page server's, not a post-copy's), and only processes of at most MAX_RUNS runs (one
message each); the others fork a middle process as before. Unused, the seed dies with the
worker (PR_SET_PDEATHSIG) or at the end of its socket.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from array import array
from dataclasses import dataclass

from ..images.source import ChainSource, LocalPages
from ..kernel.clone import set_parent_death_signal
from ..kernel.fdinfo import own_fds
from . import lazy_start
from .lazy import LazyLayout

MAX_RUNS = 2000             # saved runs of one process sent in one message (~100 KiB of numbers)
MAX_FDS = 200               # fds of one message (SCM_MAX_FD is 253)
MAX_LEVELS = 60             # pages files of one process (lazy_server.py reads 64 fds a message)
_HEAD = struct.Struct("<I")


class Seed:
    """coldsnap's end of a seed (module docstring)."""

    def __init__(self, pid: int, sock: socket.socket):
        self.pid, self.sock = pid, sock
        self.owner = os.getpid()        # a fork of ours inherits the object, not the child

    def serves(self, images) -> bool:
        """Whether the seed can serve the lazy restore of IMAGES (module docstring)."""
        if os.getpid() != self.owner:
            return False
        if type(images.origin) is not LocalPages or images.origin.lazy is not None:
            return False
        if 6 + len(images.procs) > MAX_FDS:
            return False
        for proc in images.procs.values():
            src = proc.private
            if type(src) is not ChainSource or src.lazy is not None:
                return False
            located = src.located()
            if len(located) > MAX_RUNS or len({level for level, _, _, _ in located}) > MAX_LEVELS:
                return False
        return True

    def start(self, root: int, out: int, info_w: int, server_ends, guardian_ends, pidfds: dict[int, int]) -> int:
        """Hand the seed what the middle process needs; its pid. OSError: it is gone (the
        caller forks one)."""
        fds = [out, info_w, *(s.fileno() for s in (*server_ends, *guardian_ends)), *pidfds.values()]
        head = json.dumps({"root": root, "pids": list(pidfds)}).encode()
        try:
            socket.send_fds(self.sock, [head], fds)
        except OSError:
            self.discard()
            raise
        self.sock.close()
        return self.pid

    def discard(self) -> None:
        """Not used: it exits at the end of its socket; reaped if it is gone already."""
        self.sock.close()
        if os.getpid() == self.owner:
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass


def prepare() -> None:
    """Fork the seed now (a spare worker, before its request and before it copies its pages:
    the copy then breaks the sharing with the seed too); lazy_start.start_server takes it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        ours.close()
        _seed_main(theirs, parent)
    theirs.close()
    lazy_start.SEED = Seed(pid, ours)


def _seed_main(sock: socket.socket, parent: int) -> None:
    code = 1
    try:
        set_parent_death_signal(signal.SIGKILL)     # the worker gone, unused: so are we
        if os.getppid() != parent:
            os._exit(0)
        # as the middle process has them (the service blocked these around the spare's fork)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
        for fd in own_fds():            # the spare's channel to the service, among others
            if fd > 2 and fd != sock.fileno():
                try:
                    os.close(fd)
                except OSError:
                    pass
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, MAX_FDS)
        if not msg:
            code = 0
            return
        set_parent_death_signal(0)      # a lazy restore's middle from now on
        sock.close()
        head = json.loads(msg)
        out, info_w, s_ctl, s_grd, g_ctl, g_srv = fds[:6]
        pidfds = dict(zip(head["pids"], fds[6:]))
        ends = [socket.socket(fileno=fd) for fd in (s_ctl, s_grd, g_ctl, g_srv)]
        lazy_start.middle_process(SentImages({}, LocalPages()), head["root"], out, pidfds, info_w, (),
                          tuple(ends[:2]), tuple(ends[2:]))
    except BaseException as e:      # noqa: BLE001 - coldsnap's go() says the server never started
        print(f"coldsnap lazy seed: {e!r}", file=sys.stderr)
    finally:
        os._exit(code)


# -- a process as the server learns it from coldsnap (LazyServer.hand) -------------------------

@dataclass
class SentProcess:
    layout: LazyLayout
    private: ChainSource


@dataclass
class SentImages:
    """What a server started by a seed knows of the restore: the processes handed so far."""
    procs: dict[int, SentProcess]
    origin: LocalPages


def encode_process(proc, layout: LazyLayout) -> tuple[bytes, list[int]]:
    """The message part and the fds (pages files, to be closed by the caller) that tell a
    seed's server about one process (restore/images.py DumpImages) and its lazy layout."""
    src = proc.private
    located = src.located()
    levels = sorted({level for level, _, _, _ in located})
    fds: list[int] = []
    try:
        for level in levels:
            fds.append(src.open_level(level))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    numbers = array("Q", [x for run in located for x in run])
    for spans in (layout.areas, layout.eager, layout.runs):
        numbers.extend(x for span in spans for x in span)
    head = json.dumps({"levels": levels, "where": str(src.where),
                       "n": [len(located), len(layout.areas), len(layout.eager), len(layout.runs)]}).encode()
    return _HEAD.pack(len(head)) + head + numbers.tobytes(), fds


def decode_process(data: bytes, fds: list[int]) -> SentProcess:
    """encode_process's message part and fds (taken over: mapped and closed)."""
    (size,) = _HEAD.unpack_from(data)
    head = json.loads(data[_HEAD.size:_HEAD.size + size])
    numbers = array("Q")
    numbers.frombytes(data[_HEAD.size + size:])
    nloc, nareas, neager, nruns = head["n"]
    at = 4 * nloc
    located = [tuple(numbers[i:i + 4]) for i in range(0, at, 4)]
    spans = []
    for n in (nareas, neager, nruns):
        spans.append([(numbers[i], numbers[i + 1]) for i in range(at, at + 2 * n, 2)])
        at += 2 * n
    source = ChainSource.from_files(located, dict(zip(head["levels"], fds)), head["where"])
    return SentProcess(LazyLayout(*spans), source)
