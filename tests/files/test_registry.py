"""The file registry across processes: one id per open file description, pipes paired
across fd tables, and each kind's image entry round trip."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import time

import pytest

from coldsnap.files.anon import InotifyFile, InotifyWatch, SignalfdFile, TimerfdFile
from coldsnap.files.epoll import EpollFile, EpollTarget
from coldsnap.files.eventfd import EventfdFile
from coldsnap.files.images import read_images, write_images
from coldsnap.files.inet import STORED_EXTRA_OPTS, InetSocket
from coldsnap.files.kinds import OPS
from coldsnap.files.memfd import MemfdFile
from coldsnap.files.model import FdType, Fown, PipeFile, RegFile
from coldsnap.files.registry import FileRegistry
from coldsnap.files.sockopts import SockOpts
from coldsnap.files.unix import UnixSocket
from coldsnap.images.directory import ImageDir
from coldsnap.images.pb import fdinfo_pb2

from helpers import assert_same_table
from procs import crit_decode_each, proc_state


@pytest.fixture
def two_procs(spawn, workload_bin, tmp_path):
    """A parent and its child sharing a file description and a pipe (files_shared.c)."""
    data = tmp_path / "data"
    data.write_bytes(b"0123456789")
    w = spawn([workload_bin("files_shared"), data], stderr=subprocess.DEVNULL)
    child, shared, own, pr, pw = map(int, w.ready.split()[1:])
    yield w, child, dict(data=str(data), shared=shared, own=own, pr=pr, pw=pw)
    # The child gets SIGKILL (PDEATHSIG) as its parent exits, but under load it may not have
    # run its exit yet when the leftover check looks: wait until it is a zombie or gone.
    w.stop()
    deadline = time.monotonic() + 5
    while proc_state(child)[0] not in ("", "Z") and time.monotonic() < deadline:
        time.sleep(0.01)


def _ids_of(task, path: str) -> dict[int, int]:
    """fd -> file id of the fds of `task` opened on `path`."""
    return {e.fd: e.file_id for e in task.fds
            if isinstance(f := task.registry.files[e.file_id], RegFile) and f.path == path}


def test_a_description_shared_by_two_processes_is_one_file(two_procs):
    w, child, fds = two_procs
    reg = FileRegistry()
    parent_t, child_t = reg.collect(w.pid, 1), reg.collect(child, 2)
    mine, theirs = _ids_of(parent_t, fds["data"]), _ids_of(child_t, fds["data"])
    # inherited through fork (the child moved it to fd 20): one id, an entry in each table
    assert mine[fds["shared"]] == theirs[20]
    assert reg.files[theirs[20]].pos == 5
    # opened by each process on its own after the fork (the child's on the number the
    # shared one has in the parent): two more ids
    assert sorted(theirs) == [fds["shared"], 20]
    ids = {mine[fds["shared"]], mine[fds["own"]], theirs[fds["shared"]]}
    assert len(ids) == 3
    assert sum(1 for f in reg.files.values() if isinstance(f, RegFile) and f.path == fds["data"]) == 3
    # one counter: no id twice, cwd/root of both tasks included
    assert sorted(reg.files) == list(range(1, reg.next_id))
    assert {reg.fs[w.pid].cwd_id, reg.fs[child].cwd_id} <= set(reg.files)


def test_a_pipe_between_parent_and_child_is_paired_across_tables(two_procs, tmp_path):
    w, child, fds = two_procs
    alone = FileRegistry()
    alone.collect(w.pid, 1)
    pipe_id = alone.task(w.pid).file_of(fds["pr"]).pipe_id
    assert (1, fds["pr"]) in alone.lone_pipe_ends()        # its writer is in no table yet

    reg = FileRegistry()
    reg.collect(w.pid, 1)
    reg.collect(child, 2)
    ends = reg.pipe_ends()[pipe_id]
    assert sorted((files_id, e.fd) for files_id, e in ends) == [(1, fds["pr"]), (2, fds["pw"])]
    assert {reg.files[e.file_id].flags & os.O_ACCMODE for _, e in ends} == {os.O_RDONLY, os.O_WRONLY}
    assert not any(end in reg.lone_pipe_ends() for end in [(1, fds["pr"]), (2, fds["pw"])])
    assert reg.pipe_data[pipe_id].data == b"from child"      # peeked once, not consumed
    # both tables through the images and back: the pairing survives
    img = tmp_path / "img"
    with ImageDir.create(img) as d:
        write_images(reg, d)
    assert {"fdinfo-1.img", "fdinfo-2.img", f"fs-{w.pid}.img", f"fs-{child}.img"} <= set(os.listdir(img))
    crit_decode_each([img / name for name in os.listdir(img)])
    back = read_images(img, {w.pid: 1, child: 2})
    assert sorted((f, e.fd) for f, e in back.pipe_ends()[pipe_id]) == [(1, fds["pr"]), (2, fds["pw"])]
    assert back.pipe_data[pipe_id].data == b"from child"
    for pid in (w.pid, child):
        assert_same_table(reg.task(pid), back.task(pid))
    assert back.task(w.pid).file_of(fds["shared"]) == back.task(child).file_of(20)
    rd = os.open(f"/proc/{w.pid}/fd/{fds['pr']}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert os.read(rd, 100) == b"from child"         # the live pipe still holds its bytes
    finally:
        os.close(rd)


# --- each kind: model -> files.img entries -> model ----------------------------------------

OWNER = Fown(uid=1000, euid=1000, signum=10, pid_type=1, pid=4242)
OPTS = SockOpts(reuseaddr=True, reuseport=True, rcvbuf=100000, sndbuf=50000, keepalive=True,
                broadcast="broadcast" in STORED_EXTRA_OPTS, nodelay="nodelay" in STORED_EXTRA_OPTS,
                v6only=True, snd_tmo=(3, 500), rcv_tmo=(0, 250000))
KINDS = {
    "regular file": RegFile(1, "/etc/hostname", os.O_RDONLY | os.O_APPEND, 7, 12, stat.S_IFREG | 0o644, 25, OWNER),
    "directory": RegFile(2, "/tmp", os.O_RDONLY | os.O_DIRECTORY, 0, None, stat.S_IFDIR | 0o1777),
    "terminal": RegFile(3, "/dev/pts/4", os.O_RDWR, 0, None, stat.S_IFCHR | 0o620, 30, terminal=True),
    "pty (TTY entry)": RegFile(13, "/dev/pts/5", os.O_RDWR, 0, None, stat.S_IFCHR | 0o620, 30, terminal=True,
                               tty_info=b""),
    "pipe": PipeFile(4, 81234, os.O_WRONLY | os.O_NONBLOCK, "", OWNER),
    "fifo": PipeFile(5, 81235, os.O_RDONLY, "/tmp/some fifo", OWNER),
    "eventfd": EventfdFile(6, 1 << 40, os.O_RDWR | os.O_NONBLOCK | 1, OWNER),
    "epoll": EpollFile(7, 0, [EpollTarget(3, 0x80000019, 0xDEADBEEFCAFE), EpollTarget(9, 1, 7, 12, 0xf, 4321, 5)],
                       OWNER),
    "signalfd": SignalfdFile(13, os.O_RDWR | os.O_NONBLOCK, (1 << 9) | (1 << 33), OWNER),
    "timerfd": TimerfdFile(14, os.O_RDWR, 7, 3, 1, (12, 345), (6, 789), OWNER),
    "inotify": InotifyFile(15, os.O_RDONLY, [InotifyWatch(1, 0x100, 0, 4242, 0xfe00000, "/tmp", 1, b"12345678"),
                                             InotifyWatch(3, 0x2, 0, 77, 0xfe00000, "/etc/hostname", 1, b"abc")]),
    "tcp6 listener": InetSocket(8, socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, 10, "::1", 8080,
                                os.O_RDWR | os.O_NONBLOCK, 511, 99123, OPTS, OWNER),
    "udp4": InetSocket(9, socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, 7, "127.0.0.1", 5353,
                       os.O_RDWR, 0, 99124, SockOpts(v6only=False)),
    "unix listener": UnixSocket(10, 99125, socket.SOCK_SEQPACKET, 10, os.O_RDWR, 0, b"/run/x.sock", 7, 0,
                                (0o755, 1000, 100), False, SockOpts(rcvbuf=1000, sndbuf=2000, snd_tmo=(1, 2),
                                                                    passcred=True), [], OWNER),
    "unix unlinked": UnixSocket(12, 99128, socket.SOCK_STREAM, 10, os.O_RDWR, 0, b"/run/gone.sock", 1, 0, None,
                                True),
    "unix pair end": UnixSocket(11, 99126, socket.SOCK_DGRAM, 1, os.O_RDWR | os.O_NONBLOCK, 99127, b"\0abs\0x",
                                0, 3, None, False, SockOpts(rcv_tmo=(3, 4))),
    "memfd": MemfdFile(12, 8500, os.O_RDWR | os.O_APPEND, 16, Fown(signum=10)),
}


def test_every_kind_has_a_round_trip_case():
    assert {f.kind for f in KINDS.values()} == set(OPS)


@pytest.mark.parametrize("case", sorted(KINDS))
def test_each_kind_round_trips_through_its_image_entry(case):
    f = KINDS[case]
    extra = iter(range(100, 110))
    entries = OPS[f.kind].to_image(f, lambda: next(extra))
    # through the wire format, as files.img holds them
    entries = [fdinfo_pb2.file_entry.FromString(e.SerializeToString()) for e in entries]
    mine = [e for e in entries if e.id == f.id]
    assert len(mine) == 1 and mine[0].type == int(f.kind)
    regs = {e.id: e.reg for e in entries if e.type == fdinfo_pb2.REG}
    assert OPS[FdType(mine[0].type)].from_image(mine[0], regs) == f
    if f.kind is FdType.FIFO:       # its path is a REG entry of its own
        assert [e.id for e in entries] == [100, f.id] and regs[100].name == f.fifo_path
