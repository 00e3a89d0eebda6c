"""Helpers shared by test files: compiled workloads and /proc process states.

A module of its own (not conftest.py) so that any test file can import it by name, whichever
directory-level conftest pytest loaded first.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

WORKLOADS = Path(__file__).parent / "workloads"
BIN = WORKLOADS / "bin"


def build_workload(name: str, *extra: str) -> Path:
    """Compile tests/workloads/NAME.c (once per source change) and return the binary."""
    src = WORKLOADS / f"{name}.c"
    BIN.mkdir(exist_ok=True)
    out = BIN / name
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O1", "-g", "-pthread", "-o", str(out), str(src), *extra], check=True)
    return out


def proc_state(pid: int, tid: int | None = None) -> tuple[str, int]:
    """(state letter, tracer pid) of a process or one of its threads, or ('', 0) when gone."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    try:
        status = Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "", 0
    state = tracer = ""
    for line in status.splitlines():
        if line.startswith("State:"):
            state = line.split()[1]
        elif line.startswith("TracerPid:"):
            tracer = line.split()[1]
    return state, int(tracer or 0)
