"""The TCP connections of a restore: the network lock around it and repair mode turned off
once the tree is whole.

    with RestoreNetwork.of(images_dir) as net:    # the lock the dump left, if it names one
        images = load_tree(...)
        net.lock(tcp_connections(images.files))   # that lock, or a new one, over them
        ... blank processes rebuild each stream in repair mode (files/inet.py) ...
        ... transplant, while every process is held: net.finish()   (repair off)
    # out of the `with`, on every path: the lock is lifted (the processes run by then)

The lock's and the sockets' modules are imported only when the images hold connections or
name a lock (most restores have neither).

Who lifts a dump's lock: the next `restore` of its images, whatever its outcome (a failed
restore cannot leave the peers waiting on dropped packets for ever), or `network-unlock`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import TargetError
from ..images.directory import ImageDir
from ..kernel.pidfd import pidfd_getfd, pidfd_open

if TYPE_CHECKING:
    from ..connections.lock import NetworkLock
    from ..files.inet import InetSocket


def recorded_lock(images_dir: str | os.PathLike | ImageDir) -> NetworkLock | None:
    """The lock a dump left in place, as its inventory names it (None: it left none)."""
    d = images_dir if isinstance(images_dir, ImageDir) else ImageDir.open(images_dir)
    inv = d.inventory
    if not inv.dump_criu_run_id:
        return None
    from ..connections.lock import NFTABLES_METHOD, NetworkLock
    return NetworkLock(inv.dump_criu_run_id) if inv.network_lock_method == NFTABLES_METHOD else None


@dataclass(eq=False, repr=False)
class RestoreNetwork:
    """The network lock of a restore: the one the dump recorded, the one taken, the connections."""
    recorded: NetworkLock | None
    lock_: NetworkLock | None = None
    conns: list[tuple[int, int, InetSocket]] = field(default_factory=list)

    @classmethod
    def of(cls, images_dir: str | os.PathLike | ImageDir) -> RestoreNetwork:
        return cls(recorded_lock(images_dir))

    def lock(self, conns: list[tuple[int, int, InetSocket]], *, take: bool = True) -> None:
        """Drop the packets of CONNS ((pid, fd, socket) each) until the end: the dump's lock
        takes them (it holds them already when the dump ran here) or a new one does
        (take=False: none does; the dump's is still lifted at the end)."""
        self.conns = conns
        if conns and take:
            from ..connections.lock import NetworkLock
            from ..files.inet import conn_of
            self.lock_ = self.recorded or NetworkLock.new()
            self.lock_.add([conn_of(f) for _, _, f in conns])

    def finish(self) -> None:
        """Repair mode off on every rebuilt connection (its processes held, not running)."""
        if not self.conns:
            return
        import socket
        from ..connections.tcp import finish
        from ..files.inet import conn_of
        for pid, fd, f in self.conns:
            pidfd = pidfd_open(pid)
            try:
                s = socket.socket(fileno=pidfd_getfd(pidfd, fd))
            finally:
                os.close(pidfd)
            try:
                finish(s, f.opts.reuseaddr)
            except OSError as e:
                raise TargetError(f"pid {pid} fd {fd}: TCP connection {conn_of(f)}: cannot leave repair mode: "
                                  f"{e.strerror}") from None
            finally:
                s.close()

    def __enter__(self) -> RestoreNetwork:
        return self

    def __exit__(self, *exc) -> None:
        for lock in {id(x): x for x in (self.lock_, self.recorded) if x is not None}.values():
            lock.remove()


def unlock_images(images_dir: str | os.PathLike) -> str | None:
    """Lift the lock a dump left (for images that will not be restored); its table name, or
    None when the images name no lock."""
    lock = recorded_lock(images_dir)
    if lock is None:
        return None
    lock.remove()
    return lock.table

