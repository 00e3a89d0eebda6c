"""Unix sockets through `coldsnap dump -t` / `restore` on real processes: socketpairs of
every type with queued messages both ways (boundaries kept, nothing consumed by the dump),
a parent and child talking over a pair, listeners on a path and in the abstract namespace,
and the refusal of a socket connected outside the dumped tree."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from procs import CRIT, coldsnap, crit_decode_each
from restore_helpers import assert_one_line_error
from tree_helpers import reap_orphans, wait_for_log

WORKLOAD = Path(__file__).resolve().parents[1] / "workloads" / "unix_pairs.py"


def _wait_for(path: Path, line: str, timeout: float = 15.0) -> str:
    return wait_for_log(path, rf"^{re.escape(line)}$", timeout)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def _kill(pids) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_socketpairs_and_listeners_survive_dump_and_restore(tmp_path):
    abstract = f"coldsnap-test-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "listener.sock"
    proc = subprocess.Popen([sys.executable, WORKLOAD, tmp_path, path, abstract], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = [proc.pid]
    log = tmp_path / "log"
    restored = False
    try:
        _wait_for(log, "ready")
        _wait_for(log, "child 3")
        pids += _children(proc.pid)
        assert len(pids) == 2
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", check=True)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        img = tmp_path / "img"
        if os.path.exists(CRIT):       # CRIU's own decoder takes our unix entries and queues
            dec = crit_decode_each([img / "files.img", img / "sk-queues.img"])
            usk = [e["usk"] for e in dec[img / "files.img"]["entries"] if "usk" in e]
            assert len(usk) == 23 and sorted(e["backlog"] for e in usk)[-3:] == [2, 3, 5]
            assert len(dec[img / "sk-queues.img"]["entries"]) >= 3 * 2 + 2 * 3 + 1 + 2 + 2   # + the server's
        before = sum(1 for x in log.read_text().splitlines() if x.startswith("child"))
        assert path.exists()           # the dead listener's socket file: restore replaces it
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        (tmp_path / "go").touch()
        for addr, stype in ((str(path), socket.SOCK_STREAM), (b"\0" + abstract.encode(), socket.SOCK_SEQPACKET)):
            with socket.socket(socket.AF_UNIX, stype) as c:
                c.settimeout(10)
                c.connect(addr)
                assert c.recv(100).startswith(b"hello from listener")
        text = _wait_for(log, "done")
        lines = text.splitlines()
        ab, ba = [b"one", b"two-longer", b"3"], [b"back-1", b"back-two"]
        for name in ("stream", "dgram", "seqpacket"):
            join = (lambda ms: [b"".join(ms)]) if name == "stream" else (lambda ms: ms)
            assert f"{name} a<-b {join(ba)!r}" in lines, text
            assert f"{name} b<-a {join(ab)!r}" in lines, text
            assert f"{name} after b'ping' b'pong'" in lines, text
        assert "sndbuf 100000 100000" in lines
        assert "nonblock True" in lines
        assert "shutdown b'last words' b''" in lines
        assert "seqpacket shut b'before' b'' EPIPE" in lines, text
        assert "accepted 0" in lines and "accepted 1" in lines
        assert f"unlinked listener {path}.unlinked False" in lines, text
        assert "accepted pair b'to server' b'to client'" in lines, text
        assert "accepted pair after b'again'" in lines, text
        assert "accepted pair of a gone listener b'still'" in lines, text
        assert "bound dgram b'dg-1' b'dg-22' passcred 1" in lines, text
        assert "dgram server True True" in lines, text       # clients of a named one, both processes
        after = [int(x.split()[1]) for x in lines if x.startswith("child")]
        assert after == list(range(1, len(after) + 1))     # no question lost or answered twice
        assert len(after) >= before + 5
    finally:
        _kill(pids)
        if not restored:
            proc.wait(timeout=10)
        reap_orphans(pids=pids)


_OUTSIDE = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("connected", flush=True)
time.sleep(60)
"""


def test_socket_connected_outside_the_tree_is_refused(tmp_path):
    """A client connected to a listener of another process: one line naming both ends;
    the client goes on running."""
    path = tmp_path / "outside.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    client = subprocess.Popen([sys.executable, "-c", _OUTSIDE, path], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert client.stdout.readline() == "connected\n"
        conn, _ = server.accept()
        run = coldsnap("dump", "-t", client.pid, "-D", tmp_path / "img")
        assert_one_line_error(run)
        err = run.stderr
        assert f"pid {client.pid} fd 3" in err and "outside the dumped tree" in err, err
        assert f"pid {os.getpid()} fd {conn.fileno()}" in err, err
        assert "--ext-unix-sk lets a datagram socket" in err, err
        run = coldsnap("dump", "-t", client.pid, "-D", tmp_path / "img", "--ext-unix-sk")
        assert_one_line_error(run)
        assert "--ext-unix-sk cannot rebuild half of a stream connection" in run.stderr, run.stderr
        assert client.poll() is None and not (tmp_path / "img").exists()
        conn.close()
    finally:
        client.kill()
        client.wait(timeout=10)
        server.close()


_LOGGER = """
import signal, socket, sys, time
s, t = (socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2))
for k in (s, t):
    k.connect(sys.argv[1].encode().replace(b"@", b"\\0", 1))
signal.signal(signal.SIGUSR1, lambda *_: (s.send(b"after"), t.send(b"after too")))
s.send(b"before")
while True:
    time.sleep(1)
"""


def test_ext_unix_sk_reconnects_a_datagram_socket_to_its_named_peer_outside(tmp_path):
    """--ext-unix-sk: a datagram socket connected to a named socket outside the tree (a path,
    or an abstract name) is dumped with its peer as a USK_EXTERN entry and connects to that
    name again at restore (two sockets to one peer: one entry for it); without the option the
    dump says how to let it go."""
    from coldsnap.images.directory import ImageDir
    for n, name in enumerate((str(tmp_path / "log.sock"), f"@coldsnap-test-{uuid.uuid4().hex}")):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(name.encode().replace(b"@", b"\0", 1))
        server.settimeout(10)
        client = subprocess.Popen([sys.executable, "-c", _LOGGER, name], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        restored = False
        try:
            assert server.recv(64) == b"before"
            run = coldsnap("dump", "-t", client.pid, "-D", tmp_path / f"no{n}")
            assert_one_line_error(run)
            assert "outside the dumped tree" in run.stderr and "--ext-unix-sk" in run.stderr, run.stderr
            img = tmp_path / f"img{n}"
            coldsnap("dump", "-t", client.pid, "-D", img, "--ext-unix-sk", check=True)
            assert client.wait(timeout=10) == -signal.SIGKILL
            reap_orphans(pids=[client.pid])
            ext = [e.usk for e in ImageDir.open(img).read("files.img") if e.HasField("usk") and e.usk.uflags & 1]
            assert [(x.type, x.name) for x in ext] == [(socket.SOCK_DGRAM, name.encode().replace(b"@", b"\0", 1))]
            if n == 0:          # the peer gone: refused before any process is made
                server.close()
                run = coldsnap("restore", "-D", img, "-d")
                assert_one_line_error(run)
                assert "cannot connect to the external unix socket" in run.stderr, run.stderr
                assert not os.path.exists(f"/proc/{client.pid}")
                os.unlink(name)
                server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                server.bind(name)
                server.settimeout(10)
            coldsnap("restore", "-D", img, "-d", *(["--ext-unix-sk"] if n else []), check=True)   # CRIU's spelling
            restored = True
            os.kill(client.pid, signal.SIGUSR1)
            assert {server.recv(64), server.recv(64)} == {b"after", b"after too"}
        finally:
            _kill([client.pid])
            if not restored:
                client.wait(timeout=10)
            reap_orphans(pids=[client.pid])
            server.close()


_PENDING = """
import socket, sys, time
l = socket.socket(socket.AF_UNIX)
l.bind(b"\\0" + sys.argv[1].encode())
l.listen(1)
c = socket.socket(socket.AF_UNIX)
c.connect(b"\\0" + sys.argv[1].encode())
print(l.fileno(), flush=True)
time.sleep(60)
"""


def test_listener_with_a_connection_not_accepted_is_refused(tmp_path):
    name = f"coldsnap-pending-{uuid.uuid4().hex[:8]}"
    p = subprocess.Popen([sys.executable, "-c", _PENDING, name], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        fd = int(p.stdout.readline())
        run = coldsnap("dump", "-t", p.pid, "-D", tmp_path / "img")
        assert_one_line_error(run)
        assert f"pid {p.pid} fd {fd}: listening unix socket @{name} has 1 connection(s) not accepted yet" \
            in run.stderr, run.stderr
        assert p.poll() is None and not (tmp_path / "img").exists()
    finally:
        p.kill()
        p.wait(timeout=10)


_CLOSED_PEER = """
import errno, signal, socket, sys, time
log = open(sys.argv[1], "a", buffering=1)
ends = []
for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    b.send(b"left by " + str(kind).encode())
    b.close()                       # as the JVM does with its dup2 marker pair
    ends.append(a)
def check(*_):
    for a in ends:
        got, eof = a.recv(64), a.recv(64)
        try:
            a.send(b"x")
            sent = "sent"
        except OSError as e:
            sent = errno.errorcode[e.errno]
        log.write(f"{a.type} {got!r} {eof!r} {sent}\\n")
    log.write("checked\\n")
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
signal.signal(signal.SIGUSR1, check)
log.write("ready\\n")
while True:
    time.sleep(1)
"""


def test_a_socket_whose_peer_was_closed_comes_back_with_its_data_then_eof(tmp_path):
    """A socketpair end whose other end was closed (the JVM keeps one): dumped as a connected
    entry without a peer, both directions shut down, its queue kept (as CRIU writes it);
    restored, it reads what the peer sent, then EOF, and sending fails with EPIPE."""
    from coldsnap.images.directory import ImageDir
    log = tmp_path / "log"
    p = subprocess.Popen([sys.executable, "-c", _CLOSED_PEER, log], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    restored = False
    try:
        _wait_for(log, "ready")
        img = tmp_path / "img"
        coldsnap("dump", "-t", p.pid, "-D", img, check=True)
        assert p.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=[p.pid])
        usk = [e.usk for e in ImageDir.open(img).read("files.img") if e.HasField("usk")]
        assert sorted((u.type, u.state, u.peer, u.shutdown) for u in usk) == \
            [(socket.SOCK_STREAM, 1, 0, 3), (socket.SOCK_SEQPACKET, 1, 0, 3)]
        coldsnap("restore", "-D", img, "-d", check=True)
        restored = True
        os.kill(p.pid, signal.SIGUSR1)
        _wait_for(log, "checked")
        lines = log.read_text().splitlines()
        assert lines[-3:-1] == [f"{int(socket.SOCK_STREAM)} b'left by {int(socket.SOCK_STREAM)}' b'' EPIPE",
                                f"{int(socket.SOCK_SEQPACKET)} b'left by {int(socket.SOCK_SEQPACKET)}' b'' EPIPE"]
    finally:
        _kill([p.pid])
        if not restored:
            p.wait(timeout=10)
        reap_orphans(pids=[p.pid])


_FULL = """
import hashlib, os, socket, sys, time
d = sys.argv[1]
log = open(os.path.join(d, "log"), "a", buffering=1)
pairs = {t: socket.socketpair(socket.AF_UNIX, t) for t in (socket.SOCK_STREAM, socket.SOCK_DGRAM)}
for s in pairs[socket.SOCK_DGRAM]:      # room for datagrams of up to 120 KB
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
sent = {}
for t, (a, b) in pairs.items():
    n, out = 0, []
    while True:         # fill a's direction until the kernel says no more
        msg = (b"%06d" % n) * (1 + n * 5000 % 20000) if t == socket.SOCK_DGRAM else os.urandom(4096)
        try:
            k = a.send(msg, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        out.append(msg[:k])
        n += 1
    sent[t] = out
log.write("ready %d %d\\n" % (sum(map(len, sent[1])), len(sent[2])))
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.01)
a, b = pairs[socket.SOCK_STREAM]
want = b"".join(sent[socket.SOCK_STREAM])
got = bytearray()
b.setblocking(False)
while len(got) < len(want):
    try:
        got += b.recv(1 << 16)
    except BlockingIOError:
        break
log.write("stream %s\\n" % (bytes(got) == want))
a, b = pairs[socket.SOCK_DGRAM]
msgs = []
while True:
    try:
        msgs.append(b.recv(1 << 20, socket.MSG_DONTWAIT))
    except BlockingIOError:
        break
log.write("dgram %s %d\\n" % (msgs == sent[socket.SOCK_DGRAM], len(msgs)))
log.write("done\\n")
"""


def test_full_queues_come_back_whole(tmp_path):
    """A stream pair and a datagram pair filled until the sender would block: every byte
    and every datagram (some larger than 64 KiB) is back after restore, in order, nothing more."""
    p = subprocess.Popen([sys.executable, "-c", _FULL, tmp_path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = tmp_path / "log"
    restored = False
    try:
        ready = next(x for x in _wait_for_prefix(log, "ready ").splitlines() if x.startswith("ready "))
        nbytes, ndgrams = map(int, ready.split()[1:])
        assert nbytes > 100_000 and ndgrams > 5
        coldsnap("dump", "-t", p.pid, "-D", tmp_path / "img", check=True)
        assert p.wait(timeout=10) == -signal.SIGKILL
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        (tmp_path / "go").touch()
        lines = _wait_for(log, "done").splitlines()
        assert "stream True" in lines and f"dgram True {ndgrams}" in lines, lines
    finally:
        _kill([p.pid])
        if not restored:
            p.wait(timeout=10)
        reap_orphans(pids=[p.pid])


def _wait_for_prefix(path: Path, prefix: str, timeout: float = 15.0) -> str:
    return wait_for_log(path, f"^{re.escape(prefix)}", timeout)


_EMPTY_DGRAM = """
import socket, sys, time
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
for m in (b"first", b"", b"after the empty one"):
    a.send(m)
print(b.fileno(), flush=True)
time.sleep(600)
"""


def test_zero_length_datagram_in_a_queue_is_refused_and_nothing_consumed(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", _EMPTY_DGRAM], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        fd = int(p.stdout.readline())
        run = coldsnap("dump", "-t", p.pid, "-D", tmp_path / "img")
        assert_one_line_error(run)
        assert run.returncode == 5, run
        assert f"pid {p.pid} fd {fd}: unix socket has a zero-length message" in run.stderr, run.stderr
        assert p.poll() is None and not (tmp_path / "img").exists()
        # the queue is as it was: take the receiving end from the process and read it all
        pidfd = os.pidfd_open(p.pid)
        try:
            own = socket.socket(fileno=_getfd(pidfd, fd))
        finally:
            os.close(pidfd)
        with own:
            got = [own.recv(64, socket.MSG_DONTWAIT) for _ in range(3)]
        assert got == [b"first", b"", b"after the empty one"]
    finally:
        p.kill()
        p.wait(timeout=10)


def _getfd(pidfd: int, fd: int) -> int:
    from coldsnap.kernel.pidfd import pidfd_getfd
    return pidfd_getfd(pidfd, fd)
