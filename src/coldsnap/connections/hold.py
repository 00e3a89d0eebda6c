"""The established TCP sockets of one dump, held from the freeze to the end of the dump.

    with freeze_tree(pid) as held, TcpHold() as tcp:   # exits before the freezer resumes
        ... collecting fds: tcp.add(fd, key, conn, reuseaddr, "pid P fd N") per connection
        tcp.save()              # lock their packets, repair mode on, read every stream
        ... write images (tcp.streams, tcp.lock_id) ...
        tcp.keep()              # the tasks die: sockets stay in repair mode, lock stays
   (or an exception: repair off and lock lifted before the tasks run again; or, for
    --leave-running, tcp.resume_sockets(), the tasks resumed, tcp.lift())

The lock's undo is armed before the lock is taken: whatever happens after `save` starts
(an error, SIGINT/SIGTERM turned into an exception), leaving the `with` without `keep`
turns repair off on every socket and removes the table.

Every dump holds one; the lock's and the streams' modules are imported only once there is a
connection to save (a dump imports them before its freeze when the process has sockets:
files/kinds.py prepare).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coldsnap.errors import TargetError

if TYPE_CHECKING:
    import socket

    from .lock import Conn, NetworkLock
    from .tcp import TcpStream


@dataclass(eq=False, repr=False)
class _Held:
    """One held TCP socket: our duplicate of it, its connection and how to give it back."""
    key: int
    sock: socket.socket           # our own duplicate of the task's socket
    conn: Conn
    reuseaddr: bool
    what: str                     # "pid P fd N", for messages
    repaired: bool = False


class TcpHold:
    def __init__(self, *, lock: bool = True, close: bool = False):
        self._lock_wanted = lock
        self.close = close          # --tcp-close: connections are dropped, not held
        self._held: list[_Held] = []
        self.lock: NetworkLock | None = None
        self.streams: dict[int, TcpStream] = {}     # key -> stream, after save()
        self._kept = False

    def add(self, fd: int, key: int, conn: Conn, reuseaddr: bool, what: str) -> None:
        """Hold the socket behind FD (duplicated: the caller keeps FD) under KEY; WHAT names
        it in messages ("pid P fd N")."""
        if self.close:
            return
        import socket       # loaded already with the socket kinds (files/kinds.py, before the freeze)
        s = socket.socket(fileno=os.dup(fd))
        self._held.append(_Held(key, s, conn, reuseaddr, what))

    def __bool__(self) -> bool:
        return bool(self._held)

    def save(self) -> None:
        """Lock every connection held and not saved yet, put each socket in repair mode,
        read its stream (one lock transaction per call)."""
        todo = [h for h in self._held if h.key not in self.streams]
        if not todo:
            return
        from coldsnap.kernel import tcp_repair as R

        from .lock import NetworkLock
        from .tcp import save_stream
        if self._lock_wanted:
            if self.lock is None:
                self.lock = NetworkLock.new()      # armed: __exit__ removes it from here on
            self.lock.add([h.conn for h in todo])
        for h in todo:
            try:
                R.set_repair(h.sock, True)
                h.repaired = True
                self.streams[h.key] = save_stream(h.sock)
            except OSError as e:
                raise TargetError(f"{h.what}: TCP connection {h.conn}: {e.strerror or e}") from None

    @property
    def lock_id(self) -> str | None:
        return self.lock.run_id if self.lock is not None else None

    def keep(self) -> None:
        """The dump is committed and its tasks die: sockets stay in repair mode (closing
        them sends nothing), the lock stays for the restore to lift."""
        self._kept = True
        self._close()

    def release(self) -> None:
        """Let the connections go on: repair off, then the lock lifted (a failed dump)."""
        try:
            self.resume_sockets()
        finally:
            self.lift()

    def resume_sockets(self) -> None:
        """Repair mode off on every held socket (before its task may run again)."""
        errors = []
        for h in self._held:
            if h.repaired:
                from .tcp import finish     # loaded by save()
                try:
                    finish(h.sock, h.reuseaddr)
                    h.repaired = False
                except OSError as e:
                    errors.append(e)
        self._close()
        if errors:
            raise errors[0]

    def lift(self) -> None:
        """Remove the lock (its table's deletion waits for the kernel's RCU grace period,
        ~10-15 ms: --leave-running does it once the tasks run again)."""
        if self.lock is not None:
            self.lock.remove()
            self.lock = None

    def _close(self) -> None:
        for h in self._held:
            h.sock.close()
        self._held = []

    def __enter__(self) -> TcpHold:
        return self

    def __exit__(self, *exc) -> None:
        if not self._kept:
            self.release()
