"""Real servers from Debian with clients connected through dump and restore: the client's
own connection goes on after the restore (TCP_REPAIR), as issue 9 asks."""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from pathlib import Path

import pytest

from restore_helpers import alive, coldsnap, kill_and_reap, wait_gone
from tcp_helpers import lift_left_locks, assert_no_table, dump_lock, run_coldsnap, tables_of  # noqa: F401  (the fixture)
from test_redis_roundtrip import _free_port, _resp, _wait_answering
from tree_helpers import in_session, kill_tree, reap_orphans

pytestmark = pytest.mark.usefixtures("lift_left_locks")
REDIS = shutil.which("redis-server")


class RedisCounter:
    """One connection issuing INCR after INCR (each waits for its reply) from a thread:
    the replies must be 1, 2, 3, ... with no gap, repeat or error, whatever happens meanwhile."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.local = self.sock.getsockname()
        self.replies: list[bytes] = []
        self.error: BaseException | None = None
        self.max_wait = 0.0
        self._stop = threading.Event()
        self._buf = b""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("redis closed the connection")
            self._buf += data
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t = time.monotonic()
                self.sock.sendall(_resp("INCR", "counter"))
                self.replies.append(self._line())
                self.max_wait = max(self.max_wait, time.monotonic() - t)
        except BaseException as e:      # noqa: BLE001 - checked by stop()
            self.error = e

    def wait_for(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.replies) < n:
            assert self.error is None, f"client error: {self.error!r}"
            assert time.monotonic() < deadline, f"only {len(self.replies)} replies"
            time.sleep(0.01)

    def stop(self) -> int:
        """End the loop; check the replies; returns how many commands went through."""
        self._stop.set()
        self._thread.join(30)
        assert self.error is None, f"client error: {self.error!r}"
        assert self.replies == [b":%d" % i for i in range(1, len(self.replies) + 1)]
        return len(self.replies)

    def command(self, *args: str) -> bytes:
        self.sock.sendall(_resp(*args))
        return self._line()


@pytest.mark.skipif(REDIS is None, reason="redis-server not installed")
def test_redis_client_carries_on_on_its_connection(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tmp_path, start_new_session=True)
    pid = proc.pid
    client = None
    try:
        _wait_answering(port, lambda: alive(pid))
        client = RedisCounter(port)
        client.wait_for(200)
        images = tmp_path / "img"
        coldsnap("dump", "-t", pid, "-D", images).check()      # the client keeps asking meanwhile
        proc.wait(timeout=10)
        wait_gone(pid)
        at_dump = len(client.replies)
        lock = dump_lock(images)
        run, rpid = run_coldsnap("restore", "-D", images, "-d")
        run.check()
        assert_no_table(lock, *tables_of(rpid))
        client.wait_for(at_dump + 500)
        n = client.stop()
        assert client.sock.getsockname() == client.local
        assert client.command("GET", "counter") == b"$%d" % len(str(n))
        assert client._line() == str(n).encode()
        _wait_answering(port, lambda: alive(pid))          # new connections are served too
    finally:
        if client is not None:
            client.sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill_and_reap(pid)


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
PAGE = b"hello from a restored nginx\n" * 100


def _nginx_conf(prefix, port: int) -> str:
    p = str(prefix)
    return f"""daemon off;
master_process on;
worker_processes 2;
pid {p}/nginx.pid;
error_log {p}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {p}/logs/access.log;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    keepalive_timeout 300;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {p}/html;
    }}
}}
"""


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(out)


def _get(conn: http.client.HTTPConnection) -> bytes:
    conn.request("GET", "/index.html")
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200 and not r.will_close, (r.status, r.headers)
    return body


def _get_new(port: int) -> bytes:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return _get(c)
    finally:
        c.close()


@pytest.mark.skipif(NGINX is None, reason="nginx not installed")
def test_nginx_keepalive_connection_survives(tmp_path):
    """nginx from Debian, a master and two workers: a keep-alive connection open across dump
    and restore fetches again on the very same connection, new connections are served, and
    `nginx -s reload` replaces the workers afterwards (master/worker channels and signals)."""
    # workers run as nobody: the prefix must be readable by them (pytest's tmp_path is not)
    prefix = Path(tempfile.mkdtemp(prefix="coldsnap-nginx-"))
    prefix.chmod(0o755)
    for d in ("html", "logs", "tmp"):
        (prefix / d).mkdir()
    (prefix / "html" / "index.html").write_bytes(PAGE)
    port = _free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(_nginx_conf(prefix, port))
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    master = proc.pid
    known: set[int] = {master}
    restored = False
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        deadline = time.monotonic() + 10
        while len(_children(master)) < 2 or not _answers(port):
            assert proc.poll() is None, (prefix / "logs" / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        workers = _children(master)
        known.update(workers)
        assert _get(client) == PAGE
        local = client.sock.getsockname()
        images = tmp_path / "img"
        coldsnap("dump", "-t", master, "-D", images).check()
        proc.wait(timeout=10)
        reap_orphans(pids=workers)              # the killed workers, reparented to us
        for p in [master, *workers]:
            wait_gone(p)
        lock = dump_lock(images)
        run, rpid = run_coldsnap("restore", "-D", images, "-d")
        run.check()
        restored = True
        assert_no_table(lock, *tables_of(rpid))
        assert _children(master) == workers
        sock = client.sock
        assert _get(client) == PAGE                 # on the connection opened before the dump
        assert client.sock is sock and sock.getsockname() == local
        for _ in range(6):
            assert _get_new(port) == PAGE
        reload = subprocess.run([NGINX, "-p", str(prefix), "-c", str(conf), "-s", "reload"],
                                capture_output=True, text=True, timeout=30)
        assert reload.returncode == 0, reload.stderr
        deadline = time.monotonic() + 10
        while True:
            now = _children(master)
            known.update(now)
            if len(now) == 2 and not set(now) & set(workers):
                break
            assert time.monotonic() < deadline, f"workers after reload: {now} (before: {workers})"
            time.sleep(0.05)
        assert _get_new(port) == PAGE
        log = (prefix / "logs" / "error.log").read_text()
        bad = [ln for ln in log.splitlines() if any(f"[{lvl}]" in ln for lvl in ("alert", "crit", "emerg"))]
        assert not bad, "\n".join(bad)
    finally:
        client.close()
        # the master first: it respawns a worker that dies, so killing a listing of its
        # children could leave one made meanwhile; then everything of its session
        try:
            os.kill(master, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_tree(proc, sorted(known | set(in_session(master))), restored)
        shutil.rmtree(prefix, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        return _get_new(port) == PAGE
    except OSError:
        return False
