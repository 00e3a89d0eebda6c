"""The name a lazy restore's server answers on (an abstract unix socket) and whether it is
bound: what every dump asks first (a process whose pages are still to come must not be
dumped). Apart from lazy_start.py so that a dump imports neither it nor the socket module
(its enums: ~2 ms of each start); `_socket` has the system calls."""
from __future__ import annotations

import _socket


def status_name(root: int) -> bytes:
    return f"\0coldsnap-lazy-{root}".encode()


def lazy_server_listening(root: int) -> bool:
    """Whether a lazy restore of ROOT still has its server (its status name is bound)."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.connect(status_name(root))
        return True
    except OSError:
        return False
    finally:
        s.close()
