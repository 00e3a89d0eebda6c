"""Run as pid 1 of a new pid namespace (unshare --pid --fork --mount-proc), with the directory
of a test's own: a confined process (no_new_privs) connects to a `coldsnap service` started
here, leaves its connection to a child of its own and ends; an unconfined process then takes
its pid (ns_last_pid), and only then does the child send its request. Prints the service's
first reply: the service must not take the new process for its caller."""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

from coldsnap.service import protocol as P  # noqa: E402
from service_helpers import start_service  # noqa: E402

PR_SET_NO_NEW_PRIVS = 38


def send_request(s: socket.socket) -> None:
    request = P.encode_request(["check"], [b"%s=%s" % kv for kv in os.environb.items()], 0o022,
                               os.path.dirname(os.path.dirname(os.path.realpath(P.__file__))))
    null = os.open(os.devnull, os.O_RDWR)
    s.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                           b"".join(fd.to_bytes(4, sys.byteorder) for fd in (null, null, null, null)))])
    reply = s.recv(P.MAX_REPLY)
    print(reply.decode(errors="replace"), flush=True)
    if reply.startswith(b"started"):
        s.recv(P.MAX_REPLY)         # its end


def main(where: Path) -> None:
    svc = start_service(where)
    try:
        go_r, go_w = os.pipe()
        confined = os.fork()
        if confined == 0:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(str(svc.address))
            if os.fork() == 0:
                os.read(go_r, 1)    # its parent's pid is taken
                send_request(s)
                os._exit(0)
            os._exit(0)
        os.waitpid(confined, 0)
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(confined - 1))
        taker = subprocess.Popen(["sleep", "60"])
        assert taker.pid == confined, (taker.pid, confined)
        os.write(go_w, b"g")
        while True:                 # the child (ours now: we are pid 1) sends and reads
            pid, _ = os.wait()
            if pid != taker.pid and pid != svc.proc.pid:
                break
        taker.kill()
        taker.wait()
    finally:
        svc.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
