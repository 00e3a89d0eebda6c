"""Established TCP connections through dump and restore (TCP_REPAIR and the network lock):
a server in the dumped tree, its peer outside, data flowing both ways the whole time."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coldsnap.connections.lock import our_tables
from coldsnap.images import framing

from restore_helpers import LogWorkload, alive, coldsnap, exists
from procs import coldsnap_argv
from tree_helpers import reap_orphans
from tcp_helpers import lift_left_locks, EchoPeer, assert_no_table, dump_lock, echo_server_argv, run_coldsnap, tables_of  # noqa: F401  (the fixture)

WORKLOADS = Path(__file__).resolve().parent.parent / "workloads"
pytestmark = pytest.mark.usefixtures("lift_left_locks")
FAMILIES = [pytest.param(socket.AF_INET, id="ipv4"), pytest.param(socket.AF_INET6, id="ipv6")]


def _start_server(tmp_path, family: int, memory_mib: int = 0) -> tuple[LogWorkload, int]:
    w = LogWorkload(echo_server_argv(family, memory_mib), tmp_path / "server.log")
    w.wait_ready()
    port = int(next(ln for ln in w.lines() if ln.startswith("ready")).split()[1])
    return w, port


def _streams(images) -> list:
    return [framing.read_entries(p)[0] for p in sorted(images.glob("tcp-stream-*.img"))]


@pytest.mark.parametrize("family", FAMILIES)
def test_connection_goes_on_after_restore(tmp_path, family, monkeypatch):
    """Both queues hold data at dump time; the peer, outside the tree, keeps sending through
    dump and restore and gets every byte echoed once, in order: it saw only a pause."""
    # a small send buffer: the server's echo blocks after a few KiB, so that what the peer
    # sent beyond them waits in the server's receive queue, however the machine is loaded
    monkeypatch.setenv("TCP_ECHO_SNDBUF", "8192")
    w, port = _start_server(tmp_path, family)
    peer = EchoPeer(family, port)
    try:
        peer.wait_until_sent(200_000)        # the server reads slowly: its queues fill up
        images = tmp_path / "img"
        coldsnap("dump", "-t", w.pid, "-D", images, "--tcp-established").check()
        w.reap_dumped()
        lock = dump_lock(images)
        assert lock in our_tables(), "the dump's lock stays until the restore"
        [(entry, queues)] = _streams(images)
        assert entry.inq_len > 0 and entry.outq_len > 0, "both queues were full at dump time"
        sent_at_dump = len(peer.sent)
        run, pid = run_coldsnap("restore", "-D", images, "-d")
        run.check()
        w.adopt_restored()
        assert_no_table(lock, *tables_of(pid))
        peer.start_reading()
        peer.wait_until_sent(sent_at_dump + 100_000)
        peer.finish()
        w.wait_line(f"done {len(peer.sent)}")
    finally:
        peer.close()
        w.stop()


@pytest.mark.parametrize("family", FAMILIES)
def test_connection_closed_by_the_peer(tmp_path, family, monkeypatch):
    """The peer shut its side before the dump while the server had not read everything: the
    server's socket is in CLOSE_WAIT with data in both queues. After restore the server reads
    the rest, then the end of the stream, and its echo reaches the peer whole."""
    monkeypatch.setenv("TCP_ECHO_SNDBUF", "8192")   # its echo blocks soon: it stops reading
    w, port = _start_server(tmp_path, family)
    peer = EchoPeer(family, port)
    try:
        peer.wait_until_sent(60_000)        # well within the server's receive window
        peer.close_sending()
        time.sleep(0.3)                     # the FIN is in: CLOSE_WAIT
        images = tmp_path / "img"
        coldsnap("dump", "-t", w.pid, "-D", images).check()
        w.reap_dumped()
        [(entry, _)] = _streams(images)
        assert entry.inq_len > 0 and entry.outq_len > 0
        [isk] = [e.isk for e in framing.read_image(images / "files.img") if e.HasField("isk") and e.isk.dst_port]
        assert isk.state == 8, "CLOSE_WAIT"
        coldsnap("restore", "-D", images, "-d").check()
        w.adopt_restored()
        peer.finish()
        w.wait_line(f"done {len(peer.sent)}")
    finally:
        peer.close()
        w.stop()


def test_leave_running_lets_the_connection_go_on(tmp_path):
    """--leave-running: repair mode off and the lock lifted before the server runs again."""
    w, port = _start_server(tmp_path, socket.AF_INET)
    peer = EchoPeer(socket.AF_INET, port)
    try:
        peer.wait_until_sent(100_000)
        run, pid = run_coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img", "--leave-running")
        run.check()
        assert tables_of(pid) == [] and dump_lock(tmp_path / "img") == ""
        assert len(_streams(tmp_path / "img")) == 1
        peer.start_reading()
        peer.wait_until_sent(len(peer.sent) + 100_000)
        peer.finish()
        w.wait_line(f"done {len(peer.sent)}")
    finally:
        peer.close()
        w.stop()


def test_network_lock_skip_takes_no_lock(tmp_path):
    """--network-lock skip (CRIU's spelling): the stream is saved without any nftables table.
    Nothing then holds the peer's packets back, so the peer is quiet during the dump (with
    bytes still queued both ways)."""
    w, port = _start_server(tmp_path, socket.AF_INET)
    peer = EchoPeer(socket.AF_INET, port)
    try:
        peer.wait_until_sent(50_000)
        peer.pause_sending()
        dumper = subprocess.Popen(coldsnap_argv("dump", "-t", w.pid, "-D", tmp_path / "img", "--leave-running",
                                                "--network-lock", "skip"),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = []
        while dumper.poll() is None:
            seen += tables_of(dumper.pid)
        assert dumper.returncode == 0 and seen == []
        assert len(_streams(tmp_path / "img")) == 1 and dump_lock(tmp_path / "img") == ""
        peer.resume_sending()
        peer.start_reading()
        peer.wait_until_sent(len(peer.sent) + 50_000)
        peer.finish()
        w.wait_line(f"done {len(peer.sent)}")
    finally:
        peer.close()
        w.stop()


def test_tcp_close_drops_connections_keeps_listeners(tmp_path):
    """--tcp-close: no stream saved, no lock; the connection comes back closed (the server's
    read fails) and the listener accepts a new one."""
    w, port = _start_server(tmp_path, socket.AF_INET)
    peer = EchoPeer(socket.AF_INET, port)
    try:
        peer.wait_until_sent(50_000)
        images = tmp_path / "img"
        run, pid = run_coldsnap("dump", "-t", w.pid, "-D", images, "--tcp-close")
        run.check()
        w.reap_dumped()
        assert tables_of(pid) == [] and dump_lock(images) == ""
        assert _streams(images) == []
        assert framing.read_single(images / "inventory.img").tcp_close
        peer.close()
        coldsnap("restore", "-D", images, "-d").check()
        w.adopt_restored()
        w.wait_for("lost line", lambda: any(ln.startswith("lost") for ln in w.lines()))
        again = EchoPeer(socket.AF_INET, port, rcvbuf=1 << 20)
        try:
            again.start_reading()
            again.wait_until_sent(10_000)
            again.finish()
        finally:
            again.close()
    finally:
        peer.close()
        w.stop()


def test_restore_tcp_close_brings_connections_back_closed(tmp_path):
    """`restore --tcp-close` of a dump that saved the stream: the connection comes back
    closed (the server's read fails, its listener serves a new one) and the dump's lock is
    lifted; --tcp-established is accepted and changes nothing."""
    w, port = _start_server(tmp_path, socket.AF_INET)
    peer = EchoPeer(socket.AF_INET, port)
    try:
        peer.wait_until_sent(50_000)
        images = tmp_path / "img"
        coldsnap("dump", "-t", w.pid, "-D", images).check()
        w.reap_dumped()
        assert len(_streams(images)) == 1
        lock = dump_lock(images)
        assert coldsnap("restore", "-D", images, "--tcp-close", "--tcp-established").returncode == 2
        run, pid = run_coldsnap("restore", "-D", images, "-d", "--tcp-close")
        run.check()
        w.adopt_restored()
        assert_no_table(lock, *tables_of(pid))
        w.wait_for("lost line", lambda: any(ln.startswith("lost") for ln in w.lines()))
        again = EchoPeer(socket.AF_INET, port, rcvbuf=1 << 20)
        try:
            again.start_reading()
            again.wait_until_sent(10_000)
            again.finish()
        finally:
            again.close()
    finally:
        peer.close()
        w.stop()


def test_a_failed_dump_lifts_the_lock(tmp_path):
    """A dump refused after the lock was taken (a unix socket connected outside the tree is
    only seen when the whole tree is known): repair off, lock lifted, the server goes on."""
    outside = socket.socket(socket.AF_UNIX)
    outside.bind(str(tmp_path / "outside.sock"))
    outside.listen()
    w = LogWorkload(echo_server_argv(socket.AF_INET, 0, tmp_path / "outside.sock"), tmp_path / "server.log")
    peer = None
    try:
        w.wait_ready()
        port = int(next(ln for ln in w.lines() if ln.startswith("ready")).split()[1])
        peer = EchoPeer(socket.AF_INET, port)
        peer.wait_until_sent(100_000)
        run, pid = run_coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img")
        assert run.returncode != 0 and "connected to" in run.stderr, run.stderr
        assert tables_of(pid) == []
        assert not (tmp_path / "img").exists()
        peer.start_reading()
        peer.wait_until_sent(len(peer.sent) + 100_000)
        peer.finish()
        w.wait_line(f"done {len(peer.sent)}")
    finally:
        if peer is not None:
            peer.close()
        w.stop()
        outside.close()


def test_a_failed_restore_lifts_the_lock(tmp_path):
    """The dump's lock stays until a restore; one that fails (the listener's port taken)
    lifts it all the same: the peer's next packet meets a RST instead of silence."""
    w, port = _start_server(tmp_path, socket.AF_INET)
    peer = EchoPeer(socket.AF_INET, port)
    blocker = socket.socket()
    try:
        peer.wait_until_sent(50_000)
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img").check()
        w.reap_dumped()
        lock = dump_lock(tmp_path / "img")
        assert lock in our_tables()
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        run, pid = run_coldsnap("restore", "-D", tmp_path / "img", "-d")
        assert run.returncode != 0 and f"127.0.0.1:{port}" in run.stderr, run.stderr
        assert_no_table(lock, *tables_of(pid))
        peer.start_reading()
        peer._reader.join(10)
        assert isinstance(peer.error, ConnectionResetError), peer.error
    finally:
        blocker.close()
        peer.close()
        w.stop()


def _interrupt(proc: subprocess.Popen, when, timeout: float = 30) -> None:
    """SIGINT coldsnap (stopped first, so that it is caught where `when` saw it) once
    `when()` holds; it must exit 130."""
    deadline = time.monotonic() + timeout
    while not when():
        assert proc.poll() is None, f"coldsnap ended ({proc.returncode}) before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout) == 128 + signal.SIGINT


def test_ctrl_c_during_the_dump_lifts_the_lock(tmp_path):
    """SIGINT while the lock is held (the server's memory is being copied): repair off, lock
    lifted, the server resumed, its connection whole."""
    w, port = _start_server(tmp_path, socket.AF_INET, memory_mib=256)
    peer = EchoPeer(socket.AF_INET, port)
    try:
        peer.wait_until_sent(50_000)
        dumper = subprocess.Popen(coldsnap_argv("dump", "-t", w.pid, "-D", tmp_path / "img"),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _interrupt(dumper, lambda: tables_of(dumper.pid) != [])
        assert tables_of(dumper.pid) == []
        assert not (tmp_path / "img").exists()
        peer.start_reading()
        peer.wait_until_sent(len(peer.sent) + 50_000)
        peer.finish()
        w.wait_line(f"done {len(peer.sent)}")
    finally:
        peer.close()
        w.stop()


def test_ctrl_c_during_the_restore_lifts_the_lock(tmp_path):
    """SIGINT while the restore rebuilds the tree: every process made is gone, the lock the
    dump left is lifted."""
    w, port = _start_server(tmp_path, socket.AF_INET, memory_mib=256)
    peer = EchoPeer(socket.AF_INET, port)
    try:
        peer.wait_until_sent(50_000)
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img").check()
        w.reap_dumped()
        lock = dump_lock(tmp_path / "img")
        assert lock in our_tables()
        restorer = subprocess.Popen(coldsnap_argv("restore", "-D", tmp_path / "img", "-d"),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _interrupt(restorer, lambda: exists(w.pid))
        assert_no_table(lock, *tables_of(restorer.pid))
        deadline = time.monotonic() + 5
        while alive(w.pid):
            assert time.monotonic() < deadline, "a process of the interrupted restore is left"
            time.sleep(0.01)
    finally:
        peer.close()
        w.stop()


@pytest.mark.parametrize("family", FAMILIES)
def test_both_ends_inside_the_tree(tmp_path, family):
    """A parent and its child talking over TCP: both sockets repaired and rebuilt, the two
    streams go on where they were (ticks keep counting, no line lost or repeated)."""
    w = LogWorkload([sys.executable, WORKLOADS / "tcp_pair_tree.py", "6" if family == socket.AF_INET6 else "4"],
                    tmp_path / "tree.log")
    child = None
    try:
        w.wait_ready()
        child = int(next(ln for ln in w.lines() if ln.startswith("ready")).split()[2])
        w.wait_ticks(3)
        images = tmp_path / "img"
        coldsnap("dump", "-t", w.pid, "-D", images).check()
        w.reap_dumped()
        reap_orphans(pids=[child])
        assert len(_streams(images)) == 2
        coldsnap("restore", "-D", images, "-d").check()
        w.adopt_restored()
        w.wait_ticks(5)
        w.assert_healthy()
    finally:
        w.stop()
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
            reap_orphans(pids=[child])
