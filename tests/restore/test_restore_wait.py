"""`coldsnap restore` without -d waits for the restored process and passes its exit status on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from procs import coldsnap, coldsnap_argv
from restore_helpers import state_of

WORKLOAD = r"""
import os, sys, time
flag = sys.argv[1]
os.write(1, b"ready\n")
while not os.path.exists(flag):
    time.sleep(0.02)
sys.exit(7)
"""


def test_restore_waits_and_passes_exit_status(spawn, python_exe, tmp_path):
    flag = tmp_path / "exit-now"
    w = spawn([python_exe, "-c", WORKLOAD, str(flag)], stderr=subprocess.DEVNULL)
    pid = w.pid
    r = coldsnap("dump", "-t", str(pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    w.proc.wait(timeout=10)
    restorer = subprocess.Popen(coldsnap_argv("restore", "-D", tmp_path / "img", "--json"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(f"/proc/{pid}/task"):
            assert restorer.poll() is None, restorer.stderr.read()
            assert time.monotonic() < deadline, "the process did not come back"
            time.sleep(0.02)
        time.sleep(0.2)
        assert restorer.poll() is None, "restore without -d must wait for the process"
        flag.touch()
        assert restorer.wait(timeout=20) == 7, restorer.stderr.read()
        result = json.loads(restorer.stdout.read())
        assert result["pid"] == pid and result["exit_code"] == 7 and result["signal"] is None
        assert not os.path.exists(f"/proc/{pid}")      # coldsnap reaped its child
    finally:
        if restorer.poll() is None:
            restorer.kill()
            restorer.wait()


COUNTER = r"""
import os, sys, time
os.write(1, b"ready\n")
n = 0
while True:
    n += 1
    with open(sys.argv[1], "w") as f:
        f.write(str(n))
    time.sleep(0.01)
"""


def _read(path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_stopped_process_is_dumped_and_restored_stopped(spawn, python_exe, tmp_path):
    count = tmp_path / "count"
    w = spawn([python_exe, "-c", COUNTER, str(count)], stderr=subprocess.DEVNULL)
    pid = w.pid
    deadline = time.monotonic() + 5
    while not (count.exists() and count.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)                # it has counted at least once
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while state_of(pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    r = coldsnap("dump", "-t", str(pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    w.proc.wait(timeout=10)
    r = coldsnap("restore", "-D", str(tmp_path / "img"), "-d")
    assert r.returncode == 0, r.stderr
    try:
        time.sleep(0.2)
        assert state_of(pid) == "T", "the restored process must stay stopped"
        frozen = count.read_text() if count.exists() else ""
        time.sleep(0.1)
        assert _read(count) == frozen
        os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while _read(count) in ("", frozen) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _read(count) not in ("", frozen), "it did not carry on after SIGCONT"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
