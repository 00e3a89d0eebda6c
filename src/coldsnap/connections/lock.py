"""The network lock: nftables rules that drop every packet of chosen TCP connections, both
ways, so that neither end's kernel answers the other while a stream is being saved, moved
or rebuilt (a socket-less port would answer the peer with a RST).

One table per run, `inet CRIU-<run id>`: an input and an output chain, each dropping
what matches the set `conns4` or `conns6` (local addr . port . remote addr . port, both
orientations) -- except coldsnap's own packets, marked LOCK_MARK (fin.py). The run id goes
into the images (inventory.dump_criu_run_id), so that a later command -- `restore`, or
`network-unlock` -- finds the table a dump left and removes it. The name and the table's
shape are the ones CRIU derives from that field (its name buffer keeps 26 characters of
`CRIU-<id>`), so that either tool lifts the lock the other's dump left. Only exactly the listed connections are touched; the rest of the machine's traffic
flows.

    lock = NetworkLock.new()
    try:
        lock.add(conns)          # creates the table on first use
        ...
    finally:
        lock.remove()            # idempotent: a missing table is fine
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from coldsnap.errors import CsError
from coldsnap.kernel import nftables

from .fin import LOCK_MARK

TABLE_PREFIX = "CRIU-"
TABLE_NAME_MAX = 26      # "inet " + name in CRIU's 32-byte buffer, its NUL included
NFTABLES_METHOD = 1      # inventory.network_lock_method of a lock left by a dump
_MISSING = "No such file or directory"


@dataclass(frozen=True, slots=True)
class Conn:
    """A TCP connection as the wire sees it: our end and the peer's."""
    family: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int

    def wire(self) -> tuple[int, str, str]:
        """(family on the wire, local, remote) with IPv4-mapped IPv6 addresses unmapped:
        an AF_INET6 socket talking to an IPv4 peer sends IPv4 packets."""
        if self.family == socket.AF_INET6:
            import ipaddress
            lo, re_ = ipaddress.IPv6Address(self.local_addr), ipaddress.IPv6Address(self.remote_addr)
            if lo.ipv4_mapped is not None and re_.ipv4_mapped is not None:
                return socket.AF_INET, str(lo.ipv4_mapped), str(re_.ipv4_mapped)
        return self.family, self.local_addr, self.remote_addr

    def __str__(self) -> str:
        fmt = (lambda a, p: f"[{a}]:{p}") if self.family == socket.AF_INET6 else (lambda a, p: f"{a}:{p}")
        return f"{fmt(self.local_addr, self.local_port)} <-> {fmt(self.remote_addr, self.remote_port)}"


class LockError(CsError):
    """nftables refused to take or lift the lock."""


@dataclass
class NetworkLock:
    run_id: str
    _present: bool | None = None   # whether the table exists, when this object knows

    @classmethod
    def new(cls) -> NetworkLock:
        """A lock with a table name no other run uses (our pid and random bits)."""
        return cls(f"{os.getpid()}-{os.urandom(4).hex()}", _present=False)

    @property
    def table(self) -> str:
        return f"{TABLE_PREFIX}{self.run_id}"[:TABLE_NAME_MAX]

    def exists(self) -> bool:
        try:
            nftables.run(f"list table inet {self.table}")
        except nftables.NftError:
            return False
        return True

    def add(self, conns: list[Conn]) -> None:
        """Drop the packets of CONNS from now on (one transaction; the table, its chains and
        rules are made with the first connections, or found when an earlier command made
        them)."""
        if not conns:
            return
        if self._present is None:
            self._present = self.exists()
        script = [] if self._present else self._table_script()
        for family, elems in _elements(conns).items():
            script.append(f"add element inet {self.table} conns{family} {{ {', '.join(elems)} }}")
        try:
            nftables.run("\n".join(script))
        except nftables.NftError as e:
            raise LockError(f"cannot lock {len(conns)} TCP connection(s) with nftables: {e}") from None
        self._present = True

    def remove(self) -> None:
        """Lift the lock (drop the whole table); nothing to do if it is gone already."""
        try:
            nftables.run(f"delete table inet {self.table}")
        except nftables.NftError as e:
            if _MISSING not in str(e):
                raise LockError(f"cannot remove nftables table inet {self.table}: {e}") from None
        self._present = False

    def _table_script(self) -> list[str]:
        t = f"inet {self.table}"
        out = [f"add table {t}",
               f"add set {t} conns4 {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; }}",
               f"add set {t} conns6 {{ type ipv6_addr . inet_service . ipv6_addr . inet_service; }}"]
        for hook in ("input", "output"):
            out += [f"add chain {t} {hook} {{ type filter hook {hook} priority 0; }}",
                    f"add rule {t} {hook} meta mark {LOCK_MARK:#x} accept",     # our own crafted FINs
                    f"add rule {t} {hook} ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop",
                    f"add rule {t} {hook} ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop"]
        return out


def our_tables() -> list[str]:
    """Names of the lock tables present now (any run, of coldsnap or CRIU)."""
    out = nftables.run("list tables")
    return [w for line in out.splitlines() for w in line.split()[-1:] if w.startswith(TABLE_PREFIX)]


def _elements(conns: list[Conn]) -> dict[int, list[str]]:
    """Set elements, both orientations of each connection, by set (4 or 6)."""
    out: dict[int, list[str]] = {}
    for c in conns:
        family, lo, re_ = c.wire()
        v = 4 if family == socket.AF_INET else 6
        out.setdefault(v, []).extend([f"{lo} . {c.local_port} . {re_} . {c.remote_port}",
                                      f"{re_} . {c.remote_port} . {lo} . {c.local_port}"])
    return out
