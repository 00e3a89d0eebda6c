"""Dump real fd tables, rebuild them in a forked child, compare."""
from __future__ import annotations

import os
import select
import socket
import subprocess

import pytest

from coldsnap.files.epoll import EpollFile
from coldsnap.files.eventfd import EventfdFile
from coldsnap.files.model import PipeFile, RegFile
from coldsnap.kernel.pidfd import pidfd_getfd, pidfd_open
from coldsnap.restore.fdtable import validate_files

from helpers import assert_same_table, collect_files, sockets, strip_unstored, through_images


def test_regular_files_dirs_devices(pyload, rebuild, tmp_path):
    data = tmp_path / "data.txt"
    data.write_bytes(b"0123456789")
    log = tmp_path / "log.txt"
    w = pyload()
    fds = w.run(
        f"a = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND); os.write(a, b'xyz'); "
        f"r = os.open({str(data)!r}, os.O_RDONLY); os.lseek(r, 3, 0); d = os.dup(r); "
        f"rw = os.open({str(data)!r}, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC); os.lseek(rw, 7, 0); "
        f"dd = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY); "
        f"p = os.open({str(data)!r}, os.O_PATH); "
        "n = os.open('/dev/null', os.O_RDWR); z = os.open('/dev/zero', os.O_RDONLY); "
        "u = os.open('/dev/urandom', os.O_RDONLY); os.dup2(n, 40); "
        f"os.chdir({str(tmp_path)!r}); os.umask(0o027); out = (a, r, d, rw, dd, p, n, z, u)")
    a, r, d, rw, dd, p, n, z, u = fds
    snap = collect_files(w.pid)
    f = snap.file_of(a)
    assert isinstance(f, RegFile) and f.flags & os.O_APPEND and f.pos == 3 and f.size == 3
    assert snap.file_of(r) is snap.file_of(d)            # dup'ed: one open file description
    assert snap.file_of(r) is not snap.file_of(rw)
    assert snap.file_of(r).pos == 3 and snap.file_of(rw).pos == 7
    assert [e.cloexec for e in snap.fds if e.fd == rw] == [True]
    assert snap.file_of(rw).flags & os.O_NONBLOCK
    assert snap.cwd == str(tmp_path) and snap.root == "/" and snap.umask == 0o027
    validate_files(snap)
    kid = rebuild(through_images(snap, tmp_path / "img"))
    assert kid.report == "ok"
    assert_same_table(snap, kid.snapshot())
    # The append flag really works in the child: a write lands at the end of the file.
    os.write(os.open(f"/proc/{kid.pid}/fd/{a}", os.O_WRONLY | os.O_APPEND), b"")
    assert os.readlink(f"/proc/{kid.pid}/cwd") == str(tmp_path)


def test_pipes_fifo_data_kept(pyload, rebuild, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    w = pyload()
    r, wr, big_r, big_w, lone, fr, fw = w.run(
        "r, w = os.pipe(); os.write(w, b'hello pipe'); "
        "br, bw = os.pipe2(os.O_NONBLOCK); fcntl.fcntl(bw, 1031, 1 << 20); os.write(bw, bytes(range(256)) * 400); "
        "lr, lw = os.pipe(); os.write(lw, b'last words'); os.close(lw); "
        f"fr = os.open({str(fifo)!r}, os.O_RDONLY | os.O_NONBLOCK); fw = os.open({str(fifo)!r}, os.O_WRONLY); "
        "os.write(fw, b'through the fifo'); out = (r, w, br, bw, lr, fr, fw)")
    snap = collect_files(w.pid)
    pr, pw = snap.file_of(r), snap.file_of(wr)
    assert isinstance(pr, PipeFile) and pr.pipe_id == pw.pipe_id and pr.kind.name == "PIPE"
    assert snap.pipe_data[pr.pipe_id].data == b"hello pipe"
    big = snap.pipe_data[snap.file_of(big_r).pipe_id]
    assert big.size == 1 << 20 and big.data == bytes(range(256)) * 400
    assert snap.file_of(big_w).flags & os.O_NONBLOCK
    assert snap.pipe_data[snap.file_of(lone).pipe_id].data == b"last words"
    assert snap.registry.lone_pipe_ends() == [(1, 0), (1, 1), (1, lone)]   # stdin/stdout lead to the test
    ff = snap.file_of(fr)
    assert ff.kind.name == "FIFO" and ff.fifo_path == str(fifo)
    assert snap.pipe_data[ff.pipe_id].data == b"through the fifo"
    # Peeking did not consume: the original still reads its bytes (after the dump).
    kid = rebuild(through_images(snap, tmp_path / "img"))
    assert kid.report == "ok"
    assert_same_table(snap, kid.snapshot())
    assert w.run(f"out = os.read({r}, 100)") == b"hello pipe"
    assert w.run(f"out = os.read({fr}, 100)") == b"through the fifo"
    # And the child reads them too, from its own pipes.
    with open(f"/proc/{kid.pid}/fd/{lone}", "rb", buffering=0) as f:
        assert f.read(100) == b"last words"
    with open(f"/proc/{kid.pid}/fd/{r}", "rb", buffering=0) as f:
        assert f.read(100) == b"hello pipe"


def test_eventfd_and_epoll(pyload, rebuild, tmp_path):
    w = pyload()
    e1, e2, ep, r, wr, ls = w.run(
        "e1 = os.eventfd(5, os.EFD_SEMAPHORE | os.EFD_NONBLOCK); e2 = os.eventfd(0); os.eventfd_write(e2, 1 << 40); "
        "ep = select.epoll(); r, w = os.pipe(); s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
        "ep.register(e1, select.EPOLLIN | select.EPOLLET); ep.register(r, select.EPOLLIN); ep.register(s, select.EPOLLIN); "
        "out = (e1, e2, ep.fileno(), r, w, s.fileno())")
    # Custom data words (an epoll user can store pointers there), via a second epoll in C terms.
    w.run("import ctypes; L = ctypes.CDLL(None); "
          "ev = struct.pack('=IQ', 4, 0xdeadbeefcafe); "
          f"ep2 = L.epoll_create1(0); L.epoll_ctl(ep2, 1, {wr}, ev); L.epoll_ctl(ep2, 1, {ep}, struct.pack('=IQ', 1, 7)); out = ep2")
    snap = collect_files(w.pid)
    f1, f2 = snap.file_of(e1), snap.file_of(e2)
    assert isinstance(f1, EventfdFile) and f1.counter == 5 and f1.flags & 1 and f1.flags & os.O_NONBLOCK
    assert f2.counter == 1 << 40 and not f2.flags & 1
    epf = snap.file_of(ep)
    assert isinstance(epf, EpollFile)
    assert sorted(t.tfd for t in epf.targets) == sorted([e1, r, ls])
    ep2 = next(f for f in snap.files.values() if isinstance(f, EpollFile) and f is not epf)
    assert {(t.tfd, t.data) for t in ep2.targets} == {(wr, 0xdeadbeefcafe), (ep, 7)}
    w.stop()    # frees the listening port
    kid = rebuild(through_images(snap, tmp_path / "img"))
    assert kid.report == "ok"
    assert_same_table(snap, kid.snapshot())


@pytest.mark.parametrize("family,addr", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_listening_sockets_survive_the_original(pyload, rebuild, family, addr, tmp_path):
    w = pyload()
    tcp, udp = w.run(
        f"s = socket.socket({int(family)}); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 50000); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); "
        f"s.bind(({addr!r}, 0)); s.listen(17); s.setblocking(False); "
        f"u = socket.socket({int(family)}, socket.SOCK_DGRAM); u.bind(({addr!r}, 0)); out = (s.fileno(), u.fileno())")
    snap = collect_files(w.pid)
    st, su = snap.file_of(tcp), snap.file_of(udp)
    assert st.backlog == 17 and st.state == 10 and st.flags & os.O_NONBLOCK
    assert st.opts.reuseaddr and st.opts.reuseport and st.opts.nodelay and st.opts.keepalive
    assert st.opts.rcvbuf == 100000
    assert su.type == socket.SOCK_DGRAM and su.port != 0
    w.stop()
    validate_files(snap)
    kid = rebuild(snap)
    assert kid.report == "ok"
    assert_same_table(snap, kid.snapshot())
    with socket.create_connection((addr, st.port), timeout=5):
        pass   # completes in the rebuilt listener's backlog
    kid.stop()
    # Through the images (TCP_NODELAY in tcp_opts), then a real accept.
    kid = rebuild(through_images(snap, tmp_path / "img"))
    assert kid.report == "ok"
    assert_same_table(strip_unstored(snap), kid.snapshot())
    # Accept on the child's own listening socket, reached with pidfd_getfd.
    pidfd = pidfd_open(kid.pid)
    lsock = socket.socket(fileno=pidfd_getfd(pidfd, tcp))
    usock = socket.socket(fileno=pidfd_getfd(pidfd, udp))
    os.close(pidfd)
    with lsock, usock, socket.create_connection((addr, st.port), timeout=5) as c:
        c.sendall(b"ping")
        assert select.select([lsock], [], [], 5)[0]
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(5)
            assert conn.recv(4) == b"ping"
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.sendto(b"dgram", (addr, su.port))
        usock.settimeout(5)
        assert usock.recv(10) == b"dgram"
    assert len(sockets(snap)) == 2


def test_c_workload_with_every_kind(spawn, workload_bin, rebuild, tmp_path):
    w = spawn([workload_bin("files_mix"), tmp_path], stderr=subprocess.DEVNULL)
    port, log, dird, pr, pw, efd, ep, tcp = map(int, w.ready.split()[1:])
    snap = collect_files(w.pid)
    assert {snap.file_of(fd).kind.name for fd in (log, dird, 20, pr, efd, ep, tcp)} == \
        {"REG", "PIPE", "EVENTFD", "EVENTPOLL", "INETSK"}
    assert snap.file_of(20) is snap.file_of(dird + 1)        # dup2'ed /dev/null
    assert snap.file_of(pw).flags & os.O_NONBLOCK and snap.file_of(log).flags & os.O_APPEND
    assert {(t.tfd, t.data) for t in snap.file_of(ep).targets} == {(pr, 0x1122334455667788), (efd, 42), (tcp, tcp)}
    assert snap.file_of(tcp).backlog == 33 and snap.file_of(tcp).port == port
    back = through_images(snap, tmp_path / "img")
    w.stop()
    validate_files(back)
    kid = rebuild(back)
    assert kid.report == "ok"
    assert_same_table(snap, kid.snapshot())
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
