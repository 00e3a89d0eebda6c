"""The restore worker of migrate-receive (restore/receive.py): imports the restore, waits for
one request on stdin (a JSON line: the images directory, and for a post-copy where its lazy
pages are), restores it detached and prints one JSON line, then exits at once, so the
restored tree is reparented to this host's init. Everything is imported before the request."""
from __future__ import annotations

import json
import os
import sys

from ..errors import CsError
from ..images.source import LocalPages
from ..transport.client import ClientOptions
from ..transport.source import RemotePages
from ..transport.wire import Endpoint, TlsFiles
from .restore import restore


def main() -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    line = sys.stdin.readline().strip()
    if not line:
        return 0
    try:
        request = json.loads(line)
        r = restore(request["images"], detach=True, **_post_copy(request))
        answer = {"pid": r.pid, "total_ms": round(r.total_ns / 1e6, 2), "lazy_pages": r.stats.lazy_pages}
    except (CsError, OSError) as e:
        answer = {"error": str(e)}
    print(json.dumps(answer), flush=True)
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
    return {"lazy_pages": True, "pages": LocalPages(lazy=remote)}


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)      # nothing left to clean up: the interpreter's teardown (~100 ms loaded) is downtime
