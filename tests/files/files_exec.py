"""Workload for the fd-table tests: runs each stdin line as Python, answers repr(out)."""
import os
import sys

ns: dict = {"os": os}
exec("import fcntl, select, socket, stat, struct, signal", ns)
print("ready", flush=True)
for line in sys.stdin:
    ns["out"] = None
    try:
        exec(line, ns)
        print(repr(ns["out"]), flush=True)
    except Exception as e:  # the test reads the error as the answer
        print(f"ERR {type(e).__name__}: {e}", flush=True)
