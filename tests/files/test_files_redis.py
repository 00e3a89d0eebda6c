"""The real program a restore must handle: Redis's fd table is fully supported."""
from __future__ import annotations

import collections
import os
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest

from coldsnap.files.inet import InetSocket
from coldsnap.kernel.pidfd import pidfd_getfd, pidfd_open
from coldsnap.restore.fdtable import validate_files

from helpers import assert_same_table, collect_files, strip_unstored, through_images

REDIS = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, "redis-server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                # QUIT: Redis closes its end itself, so no client fd is left to refuse.
                c.sendall(b"PING\r\nQUIT\r\n")
                answer = b""
                while chunk := c.recv(64):
                    answer += chunk
                if answer.startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("redis-server did not answer")


def kinds(snap) -> dict[str, int]:
    """fd kinds by count, e.g. {'INETSK': 1, 'EVENTPOLL': 1, 'PIPE': 4, 'REG': 1}."""
    return dict(collections.Counter(snap.file_of(e.fd).kind.name for e in snap.fds))


@pytest.mark.skipif(REDIS is None, reason="redis-server not installed")
@pytest.mark.parametrize("binds", [["127.0.0.1"], ["127.0.0.1", "::1"]])
def test_redis_fd_table_is_supported_and_rebuilt(spawn, rebuild, tmp_path, binds):
    port = _free_port()
    redis = spawn([REDIS, "--port", str(port), "--bind", *binds, "--save", "", "--appendonly", "no",
                   "--daemonize", "no", "--dir", str(tmp_path)],
                  ready_line=False, stderr=subprocess.DEVNULL, cwd=tmp_path)
    _wait_listening(port, redis.proc)
    os.kill(redis.pid, signal.SIGSTOP)      # frozen as at a real dump: its cron opens files
    try:
        snap = collect_files(redis.pid)     # raises if any fd is unsupported
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    found = kinds(snap)
    print(f"redis fds: {[(e.fd, snap.file_of(e.fd).kind.name) for e in snap.fds]} -> {found}")
    listeners = [f for f in snap.files.values() if isinstance(f, InetSocket)]
    assert sorted((s.addr, s.port, s.state) for s in listeners) == sorted((b, port, 10) for b in binds)
    for s in listeners:
        assert s.backlog == 511 and s.flags & os.O_NONBLOCK and s.opts.reuseaddr  # Redis defaults
    assert found.get("EVENTPOLL") == 1
    epoll = next(f for f in snap.files.values() if f.kind.name == "EVENTPOLL")
    listen_fd = next(e.fd for e in snap.fds if snap.files[e.file_id] is listeners[0])
    assert {e.fd for e in snap.fds if e.file_id in {s.id for s in listeners}} <= {t.tfd for t in epoll.targets}
    back = through_images(snap, tmp_path / "img")
    redis.stop()
    validate_files(back)
    kid = rebuild(back)
    assert kid.report == "ok"
    assert_same_table(strip_unstored(snap), kid.snapshot())
    # The rebuilt listener (same port, same epoll registration) takes a real client.
    pidfd = pidfd_open(kid.pid)
    lsock = socket.socket(fileno=pidfd_getfd(pidfd, listen_fd))
    os.close(pidfd)
    with lsock, socket.create_connection(("127.0.0.1", port), timeout=5):
        assert select.select([lsock], [], [], 5)[0]
        lsock.accept()[0].close()
