"""Every unsupported object is refused (Unsupported) with one line naming the fd; restores check first."""
from __future__ import annotations

import os
import socket

import pytest

from coldsnap.errors import ImageError, TargetError, Unsupported
from coldsnap.files.ghost import GhostTable
from coldsnap.files.registry import FileRegistry
from coldsnap.restore.fdtable import validate_files

from helpers import assert_same_table, collect_files, through_images

LIBC = "import ctypes; L = ctypes.CDLL(None); "


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


CASES = {
    "connected udp": ("u = socket.socket(type=socket.SOCK_DGRAM); u.connect(('127.0.0.1', 9)); out = u.fileno()",
                      r"connected UDP socket is not supported yet"),
    "fanotify": (LIBC + "out = L.fanotify_init(0, 0)", r"fanotify is not supported"),
    "packet pipe": ("r, w = os.pipe2(os.O_DIRECT); out = w", r"packet-mode \(O_DIRECT\) pipe is not supported"),
    "raw char device": ("out = os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY)",
                        r"character device /dev/ptmx \(5:2\) is not supported"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsupported_kinds_are_refused_naming_the_fd(pyload, case):
    code, message = CASES[case]
    w = pyload()
    fd = w.run(code)
    assert fd > 2
    with pytest.raises(Unsupported, match=rf"^fd {fd}: {message}$"):
        collect_files(w.pid)


def test_unix_socket_with_fds_in_flight_is_refused(pyload):
    """SCM_RIGHTS in a queue: refused naming pid and fd; the peek neither consumes the
    message nor leaves the fds it was handed open in coldsnap."""
    w = pyload()
    fd = w.run("a, b = socket.socketpair(); socket.send_fds(a, [b'x'], [0]); out = b.fileno()")
    ours = len(os.listdir("/proc/self/fd"))
    with pytest.raises(Unsupported, match=rf"^pid {w.pid} fd {fd}: unix socket has file descriptors in flight "):
        collect_files(w.pid)
    assert len(os.listdir("/proc/self/fd")) == ours
    assert w.run("m, fds, _, _ = socket.recv_fds(b, 10, 1); out = (m, len(fds))") == (b"x", 1)


def test_connected_tcp_is_refused_without_a_hold(pyload, listener):
    """A registry without a dump's TcpHold (no network lock to take) refuses a connection,
    naming both ends."""
    w = pyload()
    port = listener.getsockname()[1]
    fd = w.run(f"c = socket.create_connection(('127.0.0.1', {port})); out = c.fileno()")
    with pytest.raises(Unsupported, match=rf"^fd {fd}: TCP connection 127\.0\.0\.1:\d+ <-> 127\.0\.0\.1:{port}: "
                                          "established connections are not saved here$"):
        collect_files(w.pid)


def test_a_deleted_file_is_saved_as_a_ghost_up_to_the_limit(pyload, tmp_path):
    gone = tmp_path / "gone"
    gone.write_text("x" * 5000)
    w = pyload()
    fd = w.run(f"out = os.open({str(gone)!r}, os.O_RDONLY); os.unlink({str(gone)!r})")
    snap = collect_files(w.pid)
    f = snap.file_of(fd)
    assert f.path == str(gone) and f.ghost and f.size == 5000
    assert snap.registry.ghosts.ghosts[f.ghost].chunks == [(0, b"x" * 5000)]
    with pytest.raises(Unsupported, match=rf"^fd {fd}: deleted file {gone} holds \d+ bytes, more than the ghost limit 4096"):
        FileRegistry(ghosts=GhostTable(4096)).collect(w.pid, 1)


def test_epoll_watching_a_closed_fd_is_kept_through_the_fd_that_holds_its_file(pyload):
    w = pyload()
    ep, r, keep = w.run("ep = select.epoll(); r, wr = os.pipe(); ep.register(r, select.EPOLLIN); "
                        "keep = os.dup(r); os.close(r); out = (ep.fileno(), r, keep)")
    targets = collect_files(w.pid).file_of(ep).targets
    assert [(t.tfd, t.via) for t in targets] == [(r, keep)]


def test_terminal_needs_shell_job_and_is_reattached(pyload, rebuild, tmp_path):
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        w = pyload()
        w.run(f"t = os.open({name!r}, os.O_RDWR | os.O_NOCTTY); os.dup2(t, 0); os.dup2(t, 2); os.close(t)")
        with pytest.raises(TargetError, match=rf"^fd 0: terminal {name} is attached \(use --shell-job\)$") as e:
            collect_files(w.pid)
        assert not isinstance(e.value, Unsupported)     # supported, with the option
        snap = collect_files(w.pid, shell_job=True)
        assert snap.terminal_fds == [0, 2]
        back = through_images(snap, tmp_path / "img")
        assert back.terminal_fds == [0, 2]
        with pytest.raises(ImageError, match=r"^fd 0: was the terminal .* needs --shell-job$"):
            validate_files(back)
        validate_files(back, shell_job=True)
        # The restorer's own terminal (here another pty) is what the child gets.
        master2, slave2 = os.openpty()
        try:
            kid = rebuild(back, shell_job=True, tty=slave2)
            assert kid.report == "ok"
            got = kid.snapshot()
            assert got.terminal_fds == [0, 2]
            assert got.file_of(0).path == os.ttyname(slave2)
            assert os.stat(f"/proc/{kid.pid}/fd/0").st_rdev == os.fstat(slave2).st_rdev
            assert [e.fd for e in got.fds] == [e.fd for e in snap.fds]
        finally:
            os.close(master2)
            os.close(slave2)
    finally:
        os.close(master)
        os.close(slave)


def test_restore_checks_files_and_ports_first(pyload, rebuild, tmp_path):
    ro, rw, gone = tmp_path / "ro", tmp_path / "rw", tmp_path / "gone"
    for p in (ro, rw, gone):
        p.write_bytes(b"1234")
    w = pyload()
    fro, frw, fgone, ls = w.run(
        f"a = os.open({str(ro)!r}, os.O_RDONLY); b = os.open({str(rw)!r}, os.O_RDWR); "
        f"c = os.open({str(gone)!r}, os.O_RDONLY); s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
        "out = (a, b, c, s.fileno())")
    snap = collect_files(w.pid)
    port = snap.file_of(ls).port
    with pytest.raises(ImageError, match=rf"^fd {ls}: cannot bind 127.0.0.1:{port}: Address already in use$"):
        validate_files(snap)       # the original still listens
    w.stop()
    validate_files(snap)
    rw.write_bytes(b"grown, but opened for writing: fine")
    validate_files(snap)
    ro.write_bytes(b"12345")
    with pytest.raises(ImageError, match=rf"^fd {fro}: {ro} changed size \(4 -> 5 bytes\)$"):
        validate_files(snap)
    ro.write_bytes(b"1234")
    gone.unlink()
    with pytest.raises(ImageError, match=rf"^fd {fgone}: {gone} is gone"):
        validate_files(snap)
    kid = rebuild(snap)        # the child refuses too, with the same line
    assert f"ImageError: fd {fgone}: {gone} is gone" in kid.report
    gone.write_bytes(b"1234")
    rw.write_bytes(b"1234")
    kid = rebuild(snap)
    assert kid.report == "ok"
    assert_same_table(snap, kid.snapshot())
