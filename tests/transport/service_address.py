"""A third "host" for a client, and a service address that moves from the source to the
destination of a TwoHosts set-up (tests/transport/twohosts.py).

    client netns ──veth── this namespace (the source) ──veth── destination netns
    10.X.Y.6            10.X.Y.5   10.X.Y.1                10.X.Y.2        S = 10.X.Y.9

The service address S (a /32 of its own) sits on `lo` here and on `lo` over there from the
start (a restored socket binds to it, so it must be there before the restore). While S is
on this host's `lo`, the local route wins and the client talks to the source; this host
also has a route S via the destination, and forwards between the two veths (those two
interfaces only: `net.ipv4.conf.IF.forwarding`, never the machine-wide switch), so that
`ip addr del S/32 dev lo` here (`move_command`, given to `migrate --on-switchover`) is all
the switchover needs: from then on the client's packets go to the destination. Removed by
close().
"""
from __future__ import annotations

import os
from pathlib import Path

from twohosts import TwoHosts, _ip


class MovingService:
    def __init__(self, hosts: TwoHosts):
        pid = os.getpid()
        self.hosts = hosts
        self.netns = f"cscli{pid}"
        self.veth_here, self.veth_there = f"csc{pid}h", f"csc{pid}c"
        net = hosts.src_addr.rsplit(".", 1)[0]          # the hosts' 10.X.Y.0/30 is this run's
        self.here_addr, self.client_addr = f"{net}.5", f"{net}.6"     # 10.X.Y.4/30
        self.address = f"{net}.9"                                       # S
        self._added_here = False
        try:
            _ip("netns", "add", self.netns)
            _ip("link", "add", self.veth_here, "type", "veth", "peer", "name", self.veth_there)
            _ip("link", "set", self.veth_there, "netns", self.netns)
            _ip("addr", "add", f"{self.here_addr}/30", "dev", self.veth_here)
            _ip("link", "set", self.veth_here, "up")
            for cmd in (["addr", "add", f"{self.client_addr}/30", "dev", self.veth_there],
                        ["link", "set", self.veth_there, "up"], ["link", "set", "lo", "up"],
                        ["route", "add", "default", "via", self.here_addr]):
                _ip("netns", "exec", self.netns, "ip", *cmd)
            _ip("addr", "add", f"{self.address}/32", "dev", "lo")
            self._added_here = True
            _ip("route", "add", f"{self.address}/32", "via", hosts.dst_addr, "dev", hosts.veth_src)
            for cmd in (["addr", "add", f"{self.address}/32", "dev", "lo"],
                        ["route", "add", f"{self.client_addr}/32", "via", hosts.src_addr]):
                _ip("netns", "exec", hosts.netns, "ip", *cmd)
            for dev in (self.veth_here, hosts.veth_src):
                Path(f"/proc/sys/net/ipv4/conf/{dev}/forwarding").write_text("1\n")
        except BaseException:
            self.close()
            raise

    @property
    def move_command(self) -> str:
        """What `migrate --on-switchover` runs here to send S to the destination."""
        return f"ip addr del {self.address}/32 dev lo"

    def client_argv(self, *argv) -> list[str]:
        """argv run in the client's network namespace."""
        return ["ip", "netns", "exec", self.netns, *map(str, argv)]

    def close(self) -> None:
        if self._added_here:
            _ip("addr", "del", f"{self.address}/32", "dev", "lo", check=False)
        _ip("route", "del", f"{self.address}/32", check=False)
        _ip("link", "del", self.veth_here, check=False)
        _ip("netns", "del", self.netns, check=False)
