"""`coldsnap migrate` of a server holding an established TCP connection (its peer stays on
the source, on loopback): no coldsnap lock table is left in either host's network namespace,
whatever the outcome; a failed migration leaves the source's connection working."""
from __future__ import annotations

import socket
import subprocess
import time

from coldsnap.connections.lock import TABLE_PREFIX, NetworkLock, our_tables

from ps_helpers import PageServerProc  # noqa: F401  (test helper paths)
from procs import coldsnap_argv
from restore_helpers import LogWorkload, end_migration
from tcp_helpers import EchoPeer, echo_server_argv
from test_migrate import _receiver, _take_pid_there, hosts  # noqa: F401  (the fixture)


def _tables_there(hosts) -> list[str]:
    """coldsnap's lock tables in the destination's network namespace (all of them are ours)."""
    out = subprocess.run(["ip", "netns", "exec", hosts.netns, "nft", "list", "tables"],
                         capture_output=True, text=True, check=True).stdout
    return [w for line in out.splitlines() for w in line.split()[-1:] if w.startswith(TABLE_PREFIX)]


def _server_and_peer(tmp_path) -> tuple[LogWorkload, EchoPeer]:
    w = LogWorkload(echo_server_argv(socket.AF_INET), tmp_path / "server.log")
    w.wait_ready()
    port = int(next(ln for ln in w.lines() if ln.startswith("ready")).split()[1])
    peer = EchoPeer(socket.AF_INET, port)
    peer.start_reading()
    peer.wait_until_sent(50_000)
    return w, peer


def _migrate(w: LogWorkload, to: str, *args) -> tuple[subprocess.CompletedProcess, int]:
    p = subprocess.Popen(coldsnap_argv("migrate", "-t", w.pid, "--to", to, "--max-iterations", "2", *args),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), p.pid


def _tables_here(migrate_pid: int) -> list[str]:
    return [t for t in our_tables() if t.startswith(f"{TABLE_PREFIX}{migrate_pid}-")]


def _lift_left(migrate_pid: int | None) -> None:
    """A failing test lifts what the migration left here (the destination's go with its netns)."""
    for t in _tables_here(migrate_pid) if migrate_pid else []:
        NetworkLock(t[len(TABLE_PREFIX):]).remove()


def _no_tables(hosts, migrate_pid: int) -> None:
    here = _tables_here(migrate_pid)
    assert here == [], f"the source's lock was left behind: {here}"
    assert _tables_there(hosts) == [], "a lock table was left in the destination's namespace"


def test_migrated_connection_leaves_no_lock_and_the_stay_behind_peer_is_reset(hosts, tmp_path):
    """The connection's address (loopback) does not move: it is rebuilt over there, and the
    peer, once the source's lock is lifted, gets a reset instead of waiting for ever."""
    to = _receiver(hosts, tmp_path)
    w, peer = _server_and_peer(tmp_path)
    mpid = None
    try:
        r, mpid = _migrate(w, to)
        assert r.returncode == 0, r.stderr + hosts.log.read_text()
        w.reap_dumped()
        hosts.wait_log("runs here")
        _no_tables(hosts, mpid)
        deadline = time.monotonic() + 30
        while peer.error is None:
            assert time.monotonic() < deadline, "the peer of a connection left behind hangs"
            time.sleep(0.05)
        assert isinstance(peer.error, (ConnectionResetError, BrokenPipeError)), repr(peer.error)
    finally:
        _lift_left(mpid)
        peer.close()
        end_migration(w)


def test_failed_migration_keeps_the_connection_and_leaves_no_lock(hosts, tmp_path):
    to = _receiver(hosts, tmp_path)
    w, peer = _server_and_peer(tmp_path)
    squatter = _take_pid_there(hosts, w.pid)
    mpid = None
    try:
        r, mpid = _migrate(w, to)
        assert r.returncode != 0 and "runs on here" in r.stderr, r.stderr
        hosts.wait_log("restore failed")
        _no_tables(hosts, mpid)
        peer.wait_until_sent(len(peer.sent) + 100_000)
        peer.finish()
        w.wait_line(f"done {len(peer.sent)}")
    finally:
        _lift_left(mpid)
        peer.close()
        w.stop()
        hosts.close()
        squatter.kill()
        squatter.wait()
