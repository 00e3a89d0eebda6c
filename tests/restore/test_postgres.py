"""PostgreSQL 15 from Debian, its whole postmaster tree dumped and restored: anonymous shared
memory (shared_buffers), its SysV segment, /dev/shm dynamic shared memory, unnamed POSIX
semaphores inside shared memory, the postmaster-death pipe, signalfd/epoll latches, the
listening TCP and unix sockets. A new session after restore sees every row, writes, and
CHECKPOINT runs through the restored checkpointer; a session held open over TCP with a
transaction under way goes on and commits; `pg_ctl stop` shuts it down cleanly."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pg_wire import PgSession
from procs import coldsnap
from shm_helpers import remove_ipc
from tree_helpers import reap_orphans

BIN = Path("/usr/lib/postgresql/15/bin")
pytestmark = pytest.mark.skipif(not (BIN / "postgres").exists(), reason="PostgreSQL 15 not installed")
BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum launcher",
              "logical replication launcher")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A private cluster: initdb'ed in a fresh directory owned by user postgres."""

    def __init__(self):
        self.top = Path(tempfile.mkdtemp(prefix="cs-pg-"))
        shutil.chown(self.top, "postgres", "postgres")
        self.data, self.sock, self.log = self.top / "data", self.top / "sock", self.top / "log"
        self.sock.mkdir()
        shutil.chown(self.sock, "postgres", "postgres")
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.dsm_before = set(Path("/dev/shm").glob("PostgreSQL.*"))
        self.pid = 0
        self._as_postgres([BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-N"])

    def _as_postgres(self, argv, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in argv], user="postgres", group="postgres", cwd=self.top,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True,
                              timeout=60, **kw)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.sock),
                 "-c", "listen_addresses=127.0.0.1", "-c", "logging_collector=off"],
                user="postgres", group="postgres", cwd=self.top, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while self.sql("SELECT 1", check=False) != "1":
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.1)

    def sql(self, query: str, *, tcp: bool = False, check: bool = True) -> str:
        host = "127.0.0.1" if tcp else str(self.sock)
        try:
            r = self._as_postgres([BIN / "psql", "-h", host, "-p", self.port, "-U", "postgres", "-d", "postgres",
                                   "-v", "ON_ERROR_STOP=1", "-Atc", query])
        except subprocess.CalledProcessError as e:
            if check:
                raise AssertionError(f"psql {query!r}: {e.stderr}") from None
            return ""
        return r.stdout.strip()

    def children(self) -> dict[str, int]:
        """Background process title -> pid, of the postmaster's children."""
        out = {}
        for p in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split():
            try:
                title = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode()
            except (FileNotFoundError, ProcessLookupError):
                continue        # a backend (the last psql's) or autovacuum worker gone meanwhile
            out[title.removeprefix("postgres: ").strip()] = int(p)
        return out

    def stop(self) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"],
                              user="postgres", group="postgres", cwd=self.top, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)

    def cleanup(self) -> None:
        """Kill whatever is left, reap it, remove the SysV segment and the directory."""
        shm_key = _shm_key(self.data)
        pids = [self.pid] + list(_descendants(self.pid))
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except ChildProcessError:
                pass
        reap_orphans(pids=pids)
        if shm_key is not None:
            remove_ipc(shm_key)
        for f in set(Path("/dev/shm").glob("PostgreSQL.*")) - self.dsm_before:
            if not _mapped_anywhere(f):
                f.unlink(missing_ok=True)      # left by a postmaster that was killed
        shutil.rmtree(self.top, ignore_errors=True)


def _shm_key(data: Path) -> int | None:
    """The SysV key postmaster.pid records (line 7: key and id)."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        return int(lines[6].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(pid: int):
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return
    for k in kids:
        yield int(k)
        yield from _descendants(int(k))


def _mapped_anywhere(f: Path) -> bool:
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            if str(f) in maps.read_text():
                return True
        except OSError:
            pass
    return False


def test_postgres_tree_dump_restore(tmp_path):
    pg = Postgres()
    try:
        pg.start()
        pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text); "
               "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
        want = pg.sql("SELECT count(*), sum(id), max(v) FROM t")
        assert want.startswith("5000|")
        deadline = time.monotonic() + 20
        while not set(BACKGROUND) <= set(pg.children()):
            assert time.monotonic() < deadline, pg.children()
            time.sleep(0.1)
        before = {k: v for k, v in pg.children().items() if k in BACKGROUND}
        session = PgSession(pg.port)                         # held open across dump and restore
        session.query("BEGIN")
        session.query("INSERT INTO t SELECT g, 'open' FROM generate_series(6001, 6010) g")
        assert session.status == "T"

        coldsnap("dump", "-t", pg.pid, "-D", tmp_path / "img", timeout=120, check=True)
        assert pg.proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=list(before.values()))
        coldsnap("restore", "-D", tmp_path / "img", "-d", timeout=120, check=True)
        pg.proc = None                      # the restored postmaster is our child as a subreaper

        after = {k: v for k, v in pg.children().items() if k in BACKGROUND}
        assert after == before                               # the same processes, alive
        assert pg.sql("SELECT count(*), sum(id), max(v) FROM t") == want           # unix socket
        assert pg.sql("SELECT count(*), sum(id), max(v) FROM t", tcp=True) == want  # TCP
        # the open session goes on in its transaction, which others do not see yet, and commits
        assert session.query("SELECT count(*) FROM t WHERE v = 'open'") == [("10",)]
        assert pg.sql("SELECT count(*) FROM t WHERE v = 'open'") == "0"
        session.query("INSERT INTO t VALUES (6011, 'open')")
        session.query("COMMIT")
        assert session.status == "I"
        assert pg.sql("SELECT count(*) FROM t WHERE v = 'open'", tcp=True) == "11"
        session.close()
        pg.sql("INSERT INTO t SELECT g, 'after' FROM generate_series(5001, 5100) g")
        pg.sql("CHECKPOINT")                                 # the restored checkpointer does it
        assert pg.sql("SELECT count(*) FROM t WHERE v = 'after'", tcp=True) == "100"
        assert int(pg.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'checkpointer'")) == 1

        r = pg.stop()
        assert r.returncode == 0, r.stderr
        reap_orphans(pids=[pg.pid, *after.values()])
        assert not Path(f"/proc/{pg.pid}").exists()
        assert "database system is shut down" in pg.log.read_text()
    finally:
        pg.cleanup()
