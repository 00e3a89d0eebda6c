"""Established TCP connections across the two tools: a server in the dumped process, its
peer outside, data queued both ways at dump time. One tool dumps (with its nftables lock
left in place), the other restores and lifts that lock: the peer gets every byte echoed
once, in order, and no lock table stays. Both tools name the table after the inventory's
dump_criu_run_id (`inet CRIU-<id>`), which is what makes this work."""
from __future__ import annotations

import socket

import pytest

from coldsnap.connections.lock import our_tables

from criu_peer import DIRECTIONS, dump_with, need_criu, restore_with
from restore_helpers import LogWorkload
from tcp_helpers import EchoPeer, dump_lock, echo_server_argv, lift_left_locks  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("lift_left_locks")
CRIU_TCP = ("--tcp-established", "--network-lock", "nftables")


@pytest.mark.parametrize("family", [pytest.param(socket.AF_INET, id="ipv4"), pytest.param(socket.AF_INET6, id="ipv6")])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_connection_goes_on_across_tools(direction, family, tmp_path, monkeypatch):
    need_criu()
    monkeypatch.setenv("TCP_ECHO_SNDBUF", "8192")    # the echo blocks: data waits in both queues
    w = LogWorkload(echo_server_argv(family), tmp_path / "server.log")
    w.wait_ready()
    port = int(next(ln for ln in w.lines() if ln.startswith("ready")).split()[1])
    peer = EchoPeer(family, port)
    images = tmp_path / "img"
    try:
        peer.wait_until_sent(200_000)
        dump_with(direction, w.pid, images, ("--tcp-established",), CRIU_TCP)
        w.reap_dumped()
        lock = dump_lock(images)
        assert lock and lock in our_tables(), "the dump's lock holds the connection until the restore"
        sent_at_dump = len(peer.sent)
        restore_with(direction, images, CRIU_TCP)
        w.adopt_restored()
        assert lock not in our_tables(), f"{lock} left behind by the restore"
        peer.start_reading()
        peer.wait_until_sent(sent_at_dump + 100_000)
        peer.finish()
        w.wait_line(f"done {len(peer.sent)}")
    finally:
        peer.close()
        w.stop()
