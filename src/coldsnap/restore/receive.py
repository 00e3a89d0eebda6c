"""`coldsnap migrate-receive`: the destination of `coldsnap migrate`.

A page server (transport/server.py) that also restores: pre-dump iterations arrive as a
chain of sessions, the final dump as a session with every image; when the source asks
(CS_RESTORE, its tree still frozen), the final session is restored here and the answer is
the running pid, or the error. One migration, then it exits with the process running
(keep_serving: wait for more). Without an images directory the sessions go to a temporary
one, removed at the end (the restored process needs none of it any more).

The restore runs in a child `coldsnap restore -d` so that the restored tree is no child of
the receiver: it is reparented to this host's init (or subreaper) and outlives the receiver.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

from ..errors import CsError, Interrupted
from ..transport.server import PageServer, ServerOptions


def _restore_here(images: Path) -> dict:
    p = subprocess.run([sys.executable, "-m", "coldsnap", "restore", "-D", str(images), "-d", "--json"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = {}
    if p.returncode == 0 and "pid" in out:
        return {"pid": out["pid"], "total_ms": out.get("total_ms")}
    line = (p.stderr.strip().splitlines() or ["restore failed"])[-1]
    return {"error": line.removeprefix("coldsnap: ")}


def migrate_receive(address: str, port: int, *, images_dir: str | None = None, keep_serving: bool = False,
                    options: ServerOptions | None = None, ready: Callable[[int], None] = lambda port: None) -> dict:
    """Serve until one migration is restored here (or forever with keep_serving); returns the
    last restore's answer. Raises CsError when that restore failed."""
    own_dir = images_dir is None
    root = Path(tempfile.mkdtemp(prefix="coldsnap-receive-") if own_dir else images_dir)
    root.mkdir(parents=True, exist_ok=True)
    done = threading.Event()
    last: dict = {}
    opts = options or ServerOptions()

    def restore(images: Path) -> dict:
        answer = _restore_here(images)
        opts.log(f"migrate-receive: {images.name}: " + (f"restored, pid {answer['pid']} runs"
                                                        if "pid" in answer else f"restore failed: {answer['error']}"))
        last.clear()
        last.update(answer)
        if not keep_serving:
            done.set()
        return answer

    opts.restore = restore
    server = PageServer(root, address, port, opts)
    try:
        server.start()
        ready(server.port)
        while not done.wait(0.5):
            pass
        server.drain(5.0)                 # the answer reaches the source before we go
    except KeyboardInterrupt:
        raise Interrupted(2) from None
    finally:
        server.stop()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    if "error" in last:
        raise CsError(f"migrate-receive: the restore failed: {last['error']}")
    return last
