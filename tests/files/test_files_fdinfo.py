"""The /proc parsers on fixed text and on live objects of this process."""
from __future__ import annotations

import os
import socket

from coldsnap.kernel import fdinfo as K
from coldsnap.kernel import fdstate as S
from coldsnap.kernel import kcmp
from coldsnap.kernel.procfs import read_umask

EVENTFD = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:               1f\neventfd-id: 3\neventfd-semaphore: 1\n"
EPOLL = ("pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n"
         "tfd:        5 events: 80000019 data:     deadbeefcafe  pos:0 ino:1fa4 sdev:f\n"
         "tfd:       12 events:       1c data:                3  pos:0 ino:40e sdev:10\n")


def test_parse_fdinfo_eventfd_and_epoll():
    e = S.parse_fdinfo(EVENTFD)
    assert (e.flags, e.mnt_id, e.ino, e.eventfd_count, e.eventfd_semaphore) == (0o4002, 17, 1038, 31, True)
    assert e.other["eventfd-id"] == "3"
    p = S.parse_fdinfo(EPOLL)
    assert p.flags & os.O_CLOEXEC
    assert p.tfds == [S.EpollTfd(5, 0x80000019, 0xDEADBEEFCAFE, 0, 0x1FA4, 0xF),
                      S.EpollTfd(12, 0x1C, 3, 0, 0x40E, 0x10)]


def test_parse_fd_links():
    assert K.parse_fd_link(3, "pipe:[8100]") == K.FdLink(3, "pipe:[8100]", K.LinkKind.PIPE, inode=8100)
    assert K.parse_fd_link(4, "socket:[9]").kind is K.LinkKind.SOCKET
    assert K.parse_fd_link(5, "anon_inode:[eventfd]").anon == "eventfd"
    assert K.parse_fd_link(6, "anon_inode:inotify").anon == "inotify"
    d = K.parse_fd_link(7, "/tmp/a b (deleted)")
    assert (d.kind, d.path, d.deleted) == (K.LinkKind.PATH, "/tmp/a b", True)
    assert K.parse_fd_link(8, "net:[4026531840]").kind is K.LinkKind.OTHER


def test_net_tables_and_backlog_of_live_sockets():
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        s.listen(42)
        ino = K.read_fd_link(os.getpid(), s.fileno()).inode
        seen = S.find_net_socket(os.getpid(), ino)
        assert seen is not None and seen.table == "tcp6" and seen.state == S.TCP_LISTEN
        assert seen.local == ("::1", s.getsockname()[1])
        assert S.listen_backlog(socket.AF_INET6, ino) == 42
    old = os.umask(0o027)
    try:
        assert read_umask(os.getpid()) == 0o027
    finally:
        os.umask(old)


def test_same_file_is_kcmp_exact():
    r, w = os.pipe()
    d = os.dup(r)
    try:
        pid = os.getpid()
        assert kcmp.same_file(pid, r, pid, d) and not kcmp.same_file(pid, r, pid, w)
    finally:
        for fd in (r, w, d):
            os.close(fd)
