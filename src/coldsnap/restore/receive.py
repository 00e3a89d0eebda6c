"""`coldsnap migrate-receive`: the destination of `coldsnap migrate`.

A page server (transport/server.py) that also restores: pre-dump iterations arrive as a
chain of sessions, the final dump as a session with every image; when the source asks
(CS_RESTORE, its tree still frozen), the final session is restored here and the answer is
the running pid, or the error. A post-copy request names the source's page server: the
restore is lazy, its PE_LAZY pages fetched from there (restore/receive_worker.py). One
migration, then it exits with the process running (keep_serving: wait for more). Without an images directory the sessions go to a temporary
one, removed at the end (the restored process needs none of it any more).

The restore runs in a child (restore/receive_worker.py), started ahead with its imports
done, so that the restored tree is no child of the receiver: it is reparented to this
host's init (or subreaper) when the worker exits, and outlives the receiver. The sessions
are committed without fsync: they are read back at once and thrown away.

Each session stored is handed to the worker as it arrives: the worker builds the root's
private memory from it in its own address space (restore/prebuild.py), so that at
switchover the restore inherits it instead of writing it (prebuild=False: it does not).
The source hears that a session is stored only once it is built from: an iteration's time
includes it, and the final session never waits behind an earlier one.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ..errors import CsError, ImageError, Interrupted
from ..images.directory import make_work_dir
from ..transport.server import PageServer, ServerOptions


class Restorer:
    """A worker process waiting to restore one images directory (its imports already done),
    building the memory ahead from the sessions it is told of meanwhile."""

    def __init__(self, prebuild: bool = True):
        self.proc = subprocess.Popen([sys.executable, "-m", "coldsnap.restore.receive_worker"]
                                     + ([] if prebuild else ["--no-prebuild"]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._lock = threading.Lock()
        self.answered = False

    def apply(self, session: Path) -> None:
        """A session is stored: the worker builds from it, and this returns once it has
        (before the source hears that the session is stored, so that its next iteration,
        and above all the switchover, never wait behind a build). A dead worker shows at
        restore."""
        with self._lock:
            try:
                self.proc.stdin.write(f"apply {session}\n")
                self.proc.stdin.flush()
                self.proc.stdout.readline()     # "applied" ('' if the worker died)
            except OSError:
                pass

    def restore(self, images: Path, request: dict | None = None) -> dict:
        try:
            with self._lock:
                self.proc.stdin.write(json.dumps({"images": str(images), **(request or {})}) + "\n")
                self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            answer = json.loads(line)
            self.answered = True        # the worker exits by itself now (not waited for here:
            return answer               # the source waits for this answer, not for that)
        except (OSError, ValueError) as e:
            self.close()
            return {"error": f"the restore worker failed: {e}"}

    def close(self) -> None:
        if self.answered:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _post_copy(request: dict, opts: ServerOptions) -> dict:
    """What the worker needs of a post-copy request: the source's page server and session,
    and this receiver's own token and TLS files to present there (never sent over the wire)."""
    if not request.get("lazy_from"):
        return {}
    tls = opts.tls
    return {"lazy_from": str(request["lazy_from"]), "session": str(request.get("session") or ""),
            "token": opts.token.decode("latin-1") if opts.token else None,
            "tls": [tls.cacert, tls.cert, tls.key] if tls else None}


def migrate_receive(address: str, port: int, *, images_dir: str | None = None, keep_serving: bool = False,
                    options: ServerOptions | None = None, ready: Callable[[int], None] = lambda port: None,
                    prebuild: bool = True) -> dict:
    """Serve until one migration is restored here (or forever with keep_serving); returns the
    last restore's answer. Raises CsError when that restore failed."""
    own_dir = images_dir is None
    root = make_work_dir("receive") if own_dir else Path(images_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ImageError(f"{root}: exists and is not a directory") from None
    except OSError as e:
        raise ImageError(f"{root}: cannot create the images directory: {e.strerror}") from None
    done = threading.Event()
    last: dict = {}
    opts = options or ServerOptions()

    workers = [Restorer(prebuild)]

    def restore(images: Path, request: dict) -> dict:
        t0 = time.perf_counter()
        answer = workers[-1].restore(images, _post_copy(request, opts))
        answer["asked_ms"] = round((time.perf_counter() - t0) * 1000, 2)    # the restore as this side waited for it
        if keep_serving:
            workers.append(Restorer(prebuild))
        opts.log(f"migrate-receive: {images.name}: " + (f"restored, pid {answer['pid']} runs ({_timing(answer)})"
                                                        if "pid" in answer else f"restore failed: {answer['error']}"))
        last.clear()
        last.update(answer)
        if not keep_serving:
            done.set()
        return answer

    opts.restore = restore
    opts.stored = lambda session: workers[-1].apply(session)
    opts.durable = False
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
        for w in workers:
            w.close()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    if "error" in last:
        raise CsError(f"migrate-receive: the restore failed: {last['error']}")
    return last


def _timing(answer: dict) -> str:
    return (f"restore {answer.get('total_ms')} ms, worker {answer.get('wall_ms')} ms, asked {answer.get('asked_ms')} ms; "
            f"final session applied in {answer.get('last_apply_ms', '-')} ms, "
            f"{answer.get('prebuilt_bytes', 0) / 2**20:.1f} MiB built ahead"
            + (f"; lazy server {answer['lazy_server']}" if answer.get("lazy_server") else ""))
