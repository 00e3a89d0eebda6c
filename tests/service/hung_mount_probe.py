"""Run in a mount namespace of its own (unshare --mount --propagation private), with a test's
directory: mounts there a FUSE file system whose server never answers (a lookup in it hangs,
as on a hung NFS server), starts a `coldsnap service`, sends it a request that names a
package directory in that mount, then runs `coldsnap check` through the service meanwhile.
Prints the check's exit code and the reply to the request; aborts the mount at the end."""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

from coldsnap.service import protocol as P  # noqa: E402
from procs import coldsnap_argv  # noqa: E402
from service_helpers import start_service  # noqa: E402

MNT_DETACH = 2


def mount_hung_fuse(where: Path) -> int:
    """A FUSE mount on WHERE (a new directory) whose server is us, never reading /dev/fuse:
    the fd that aborts the mount once closed."""
    where.mkdir()
    fuse = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    options = b"fd=%d,rootmode=40000,user_id=0,group_id=0" % fuse
    if libc.mount(b"hung", bytes(where), b"fuse", 0, options) != 0:
        raise OSError(ctypes.get_errno(), "mount fuse")
    return fuse


def main(where: Path) -> None:
    hung = where / "hung"
    fuse = mount_hung_fuse(hung)
    svc = start_service(where)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.settimeout(30)
        s.connect(str(svc.address))
        request = P.encode_request(["check"], [b"%s=%s" % kv for kv in os.environb.items()], 0o022,
                                   str(hung / "coldsnap"))
        null = os.open(os.devnull, os.O_RDWR)
        s.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               b"".join(fd.to_bytes(4, sys.byteorder) for fd in (null, null, null, null)))])
        try:
            check = subprocess.run(coldsnap_argv("check"), capture_output=True, text=True, timeout=10,
                                   env={**os.environ, "COLDSNAP_SERVICE": str(svc.address)})
            print(f"check: exit {check.returncode}")
        except subprocess.TimeoutExpired:
            print("check: no end within 10 s")
        os.close(fuse)              # aborts the mount: whatever waits in it fails now
        fuse = -1
        print(f"request: {s.recv(P.MAX_REPLY).decode(errors='replace')}")
    finally:
        s.close()
        if fuse >= 0:
            os.close(fuse)
        svc.stop()
        ctypes.CDLL(None, use_errno=True).umount2(bytes(hung), MNT_DETACH)
    print("\n".join(svc.lines()), file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
