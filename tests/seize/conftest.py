"""Fixtures of the seize tests (the shared ones live in tests/conftest.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from seize_helpers import holder_script


@pytest.fixture
def holder(tmp_path):
    """holder(pid, calls=False) -> Popen of a Python child that freezes PID and sleeps."""
    script = holder_script(tmp_path / "holder.py")
    started: list[subprocess.Popen] = []

    def start(pid: int, calls: bool = False) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, str(script), str(pid), "calls" if calls else "-"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(p)
        line = p.stdout.readline().decode().strip()
        assert line == "frozen", (line, p.stderr.read().decode() if p.poll() is not None else "")
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate()
