"""A Python program using multiprocessing (tests/workloads/mp_pool.py: a Pool fed through
pipes, a multiprocessing.Queue with its feeder thread, a consumer Process) dumped and
restored: the work goes on from where it was and every result is right.

multiprocessing's locks are POSIX semaphores: files of /dev/shm, unlinked at once and kept
mapped by every process of the family. The dump saves each as a ghost file (files/ghost.py),
made once at restore and mapped shared by all of them again."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from procs import WORKLOADS, coldsnap
from tree_helpers import in_session, kill_tree, reap_orphans


def numbers(log: Path, word: str) -> list[tuple[int, str]]:
    return [(int(i), ok) for i, ok in re.findall(rf"^{word} (\d+) (\w+)$", log.read_text(), re.M)]


def wait_count(log: Path, word: str, n: int, timeout: float = 20.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while len(got := numbers(log, word)) < n:
        assert time.monotonic() < deadline, log.read_text()[-500:]
        time.sleep(0.02)
    return got


def test_multiprocessing_pool_and_queue_go_on_after_restore(tmp_path):
    log = tmp_path / "log"
    log.touch()
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, WORKLOADS / "mp_pool.py", log], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err, start_new_session=True)
    pids: list[int] = []
    restored = False
    try:
        wait_count(log, "consumed", 5)
        pids = in_session(proc.pid)
        assert len(pids) == 5                      # root, consumer, 3 workers
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", check=True)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        before = len(numbers(log, "consumed"))
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        wait_count(log, "consumed", before + 10)
        for word in ("batch", "consumed"):
            got = numbers(log, word)
            assert [i for i, _ in got] == list(range(0, 20 * len(got), 20)), got    # none lost or repeated
            assert all(ok == "True" for _, ok in got), got
    finally:
        kill_tree(proc, pids or in_session(proc.pid), restored)
