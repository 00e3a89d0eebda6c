"""The restore worker of migrate-receive (restore/receive.py): imports the restore, waits for
one images directory on stdin, restores it detached and prints one JSON line, then exits,
so the restored tree is reparented to this host's init."""
from __future__ import annotations

import json
import os
import sys

from ..errors import CsError
from .restore import restore


def main() -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    path = sys.stdin.readline().strip()
    if not path:
        return 0
    try:
        r = restore(path, detach=True)
        answer = {"pid": r.pid, "total_ms": round(r.total_ns / 1e6, 2)}
    except (CsError, OSError) as e:
        answer = {"error": str(e)}
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
