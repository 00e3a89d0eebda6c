"""A restore right after a dump, while the dumped process is still a zombie its parent has
not reaped yet (an init that reaps slowly does this to every dumped tree's children): the
restore waits for the PID to be freed instead of calling it "in use (by 'sleep')"; a
zombie that nobody reaps is named as one."""
from __future__ import annotations

import subprocess
import sys
import time

from procs import coldsnap
from restore_helpers import assert_one_line_error, kill_and_reap, state_of, wait_adopted

# The parent forks a child running `sleep`, says its pid, and reaps it DELAY seconds after
# the test's line on stdin (never, with a negative DELAY).
PARENT = r"""
import os, sys, time
kid = os.fork()
if kid == 0:
    os.execvp("sleep", ["sleep", "1000"])
print(kid, flush=True)
sys.stdin.readline()
delay = float(sys.argv[1])
if delay >= 0:
    time.sleep(delay)
    os.waitpid(kid, 0)
time.sleep(1000)
"""


def _dumped_zombie(tmp_path, delay: float):
    """(the parent's Popen, the dumped child's pid, images): the child dumped (so killed) and
    left a zombie of the parent, which reaps it DELAY s after this returns."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(delay)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    kid = int(parent.stdout.readline())
    deadline = time.monotonic() + 5
    while not open(f"/proc/{kid}/cmdline", "rb").read().startswith(b"sleep"):
        assert time.monotonic() < deadline, "the child never ran sleep"
        time.sleep(0.005)
    images = tmp_path / "img"
    coldsnap("dump", "-t", kid, "-D", images, check=True)
    deadline = time.monotonic() + 5
    while state_of(kid) != "Z":
        assert time.monotonic() < deadline, f"dumped {kid} is {state_of(kid)!r}, not a zombie"
        time.sleep(0.005)
    parent.stdin.write("dumped\n")
    parent.stdin.flush()
    return parent, kid, images


def _end(parent: subprocess.Popen) -> None:
    parent.kill()
    parent.wait(timeout=10)


def test_a_restore_waits_for_the_dumped_zombie_to_be_reaped(tmp_path):
    parent, kid, images = _dumped_zombie(tmp_path, delay=0.7)
    try:
        run = coldsnap("restore", "-D", images, "-d")
        assert run.returncode == 0, run.stderr
        wait_adopted(kid)
        assert open(f"/proc/{kid}/cmdline", "rb").read().startswith(b"sleep")
    finally:
        kill_and_reap(kid)
        _end(parent)


def test_a_zombie_nobody_reaps_is_named_as_one(tmp_path):
    parent, kid, images = _dumped_zombie(tmp_path, delay=-1)
    try:
        started = time.monotonic()
        run = coldsnap("restore", "-D", images, "-d")
        assert_one_line_error(run)
        assert run.returncode == 1
        assert f"PID {kid} is held by 'sleep', which exited but is not reaped yet" in run.stderr
        assert f"its parent {parent.pid} did not wait for it" in run.stderr
        assert time.monotonic() - started > 4, "gave up before the zombie had time to be reaped"
        assert state_of(kid) == "Z"
    finally:
        _end(parent)
