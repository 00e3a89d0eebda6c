"""The lazy-restore server's guardian (restore/lazy_server.py's docstring says why it exists):
it holds a copy of every uffd until the server has exited, and kills the restored processes
if the server did not bring every page in. Its own module: the guardian imports no numpy.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time

from ..kernel.pidfd import pidfd_open, pidfd_send_signal
from ..kernel.procfs import child_pids
from .lazy_start import recv_fds


class Guardian:
    """Holds a copy of every uffd until the server has exited: 0 means every page is in;
    anything else kills every restored process (and their descendants) first."""

    def __init__(self, server: int, pidfds: dict[int, int], from_coldsnap: socket.socket,
                 from_server: socket.socket):
        self.server = server
        self.pidfds = pidfds
        self.socks = {s.fileno(): s for s in (from_coldsnap, from_server)}
        self.held: list[int] = []

    def run(self) -> int:
        watch = pidfd_open(self.server)
        poller = select.poll()
        poller.register(watch, select.POLLIN)
        for fd in self.socks:
            poller.register(fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == watch:
                    return self._server_ended()
                got = recv_fds(self.socks[fd])
                if got is None:
                    poller.unregister(fd)
                else:
                    self.held.extend(got[1])

    def _server_ended(self) -> int:
        status = os.waitpid(self.server, 0)[1]
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return 0
        why = f"exit {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else f"signal {os.WTERMSIG(status)}"
        self._kill_all()
        print(f"coldsnap lazy guardian: the server ended ({why}) before every page was in: "
              f"killed the restored processes", file=sys.stderr)
        return 1

    def _kill_all(self) -> None:
        """SIGKILL the restored processes and their descendants, then wait until they are gone:
        only then may the uffds close."""
        fds = dict(self.pidfds)
        todo = list(fds)
        while todo:          # descendants made while the pages came in (forks) die too
            kids = [k for ks in child_pids(todo).values() for k in ks if k not in fds]
            todo = []
            for k in kids:
                try:
                    fds[k] = pidfd_open(k)
                    todo.append(k)
                except OSError:
                    pass
        for fd in fds.values():
            try:
                pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for fd in fds.values():
            left = max(0.0, deadline - time.monotonic())
            select.select([fd], [], [], left)
