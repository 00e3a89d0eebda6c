"""The restore worker of migrate-receive (restore/receive.py): imports the restore, then reads
one command a line on stdin:

    apply PATH      a session of the migration is stored: build the root's memory ahead
                    from it, in this process (restore/prebuild.py); answers "applied" once
                    done (the source's next iteration waits for it: a switchover must never
                    wait behind earlier sessions still being built)
    {JSON}          the restore request: the images directory, and for a post-copy where its
                    lazy pages are; restore it detached (keeping what was built ahead), print
                    one JSON line and exit at once, so the restored tree is reparented to this
                    host's init. Everything is imported before the request.

`--no-prebuild` as argument: apply lines are only answered (the whole memory is written at restore).
"""
from __future__ import annotations

import json
import os
import sys
import time

from ..errors import CsError
from ..images.source import LocalPages
from ..transport.client import ClientOptions
from ..transport.source import RemotePages
from ..transport.wire import Endpoint, TlsFiles
from .prebuild import Prebuilt
from .restore import restore


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    prebuild = "--no-prebuild" not in (argv if argv is not None else sys.argv[1:])
    built = Prebuilt()
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("apply "):
            if prebuild:
                built.apply(line[len("apply "):])
            print("applied", flush=True)
            continue
        if not line:
            return 0
        t0 = time.perf_counter()
        try:
            request = json.loads(line)
            lazy = _post_copy(request)
            # post-copy too: what was built stays, only the final delta is fetched lazily
            r = restore(request["images"], detach=True, prebuilt=built if prebuild else None, **lazy)
            answer = {"pid": r.pid, "total_ms": round(r.total_ns / 1e6, 2), "lazy_pages": r.stats.lazy_pages,
                      "prebuilt_bytes": r.prebuilt_bytes, "prebuilt_areas": [[s, e] for s, e in r.prebuilt],
                      "wall_ms": round((time.perf_counter() - t0) * 1000, 2), "lazy_server": r.lazy_server}
            if built.stats:
                answer["last_apply_ms"] = built.stats[-1].ms
        except (CsError, OSError, ValueError, KeyError) as e:
            answer = {"error": str(e)}
        print(json.dumps(answer), flush=True)
        return 0
    return 0


def _post_copy(request: dict) -> dict:
    """restore()'s arguments for a post-copy request: lazy, the PE_LAZY pages from the
    source's page server (with the receiver's token and TLS files, passed in the request)."""
    if not request.get("lazy_from"):
        return {}
    tls = TlsFiles(*request["tls"]) if request.get("tls") else None
    token = request["token"].encode("latin-1") if request.get("token") else None
    remote = RemotePages(Endpoint.parse(request["lazy_from"]), ClientOptions(token=token, tls=tls),
                         str(request["session"]))
    remote.client()         # the source's page server unreachable: an error now, while the source waits
    return {"lazy_pages": True, "pages": LocalPages(lazy=remote)}


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)      # nothing left to clean up: the interpreter's teardown (~100 ms loaded) is downtime
