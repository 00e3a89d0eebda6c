"""A child cloned with CLONE_FILES | CLONE_FS (a process, not a thread) comes back sharing
its parent's fd table and fs: an fd the child opens after restore is the parent's too, its
chdir moves the parent, and the parent's waitpid reaps it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from coldsnap.images.directory import ImageDir
from coldsnap.kernel import kcmp as K
from procs import build_workload, coldsnap
from tree_helpers import kill_tree, reap_orphans


def wait_log(log: Path, pattern: str, timeout: float = 10.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while not (m := re.search(pattern, log.read_text(), re.M)):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    return m


def test_child_sharing_fd_table_and_fs_with_its_parent(tmp_path):
    log = tmp_path / "log"
    log.touch()
    there = tmp_path / "there"
    there.mkdir()
    proc = subprocess.Popen([build_workload("tree_clone_files"), log, there], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            cwd=tmp_path)
    pids: list[int] = []
    restored = False
    try:
        main, kid = map(int, wait_log(log, r"^ready (\d+) (\d+)$").groups())
        pids = [main, kid]
        assert K.same(main, kid, K.KCMP_FILES) and K.same(main, kid, K.KCMP_FS)
        coldsnap("dump", "-t", main, "-D", tmp_path / "img", check=True)
        ids = {p: ImageDir.open(tmp_path / "img").read_single(f"ids-{p}.img") for p in pids}
        assert ids[main].files_id == ids[kid].files_id and ids[main].fs_id == ids[kid].fs_id
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        assert K.same(main, kid, K.KCMP_FILES) and K.same(main, kid, K.KCMP_FS)
        assert not K.same(main, kid, K.KCMP_VM) and not K.same(main, kid, K.KCMP_SIGHAND)
        assert sorted(os.listdir(f"/proc/{main}/fd")) == sorted(os.listdir(f"/proc/{kid}/fd"))
        assert os.readlink(f"/proc/{main}/cwd") == str(tmp_path)
        os.kill(kid, signal.SIGUSR1)
        fd = wait_log(log, r"^fd (\d+)$").group(1)
        assert os.readlink(f"/proc/{main}/fd/{fd}") == "/dev/null"     # the child's open is the parent's
        os.kill(kid, signal.SIGUSR2)
        wait_log(log, r"^cd$")
        assert os.readlink(f"/proc/{main}/cwd") == str(there)             # the child's chdir too
        os.kill(kid, signal.SIGTERM)
        wait_log(log, r"^child exited 0$")                                # the parent's waitpid
        reap_orphans(pids=pids)
    finally:
        kill_tree(proc, pids, restored)
