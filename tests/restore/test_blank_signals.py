"""The blank processes inherit the restorer's signal actions and reset only those that are
not the default (restore/blank.py): a restorer with handlers and ignored signals of its own
(Python ignores SIGPIPE; here also a handler for SIGUSR1 and SIGWINCH ignored) gives none of
them to the restored process, whose actions are the dumped ones."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from procs import coldsnap
from tree_helpers import reap_orphans

RESTORER = """
import signal, sys
signal.signal(signal.SIGUSR1, lambda *a: None)
signal.signal(signal.SIGWINCH, signal.SIG_IGN)
from coldsnap.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _sig_masks(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v, 16) for k, v in (ln.split(":") for ln in f) if k in ("SigIgn", "SigCgt")}


def test_restorer_signal_actions_do_not_leak_into_the_restored_process(tmp_path):
    from coldsnap.restore.blank import _changed_signal_actions
    assert signal.SIGPIPE in _changed_signal_actions()          # ignored by Python
    assert signal.SIGUSR2 not in _changed_signal_actions()
    log = open(tmp_path / "log", "wb")
    # a target that catches SIGTERM and ignores SIGHUP (and, as Python does, SIGPIPE and SIGINT)
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, print); "
                             "signal.signal(signal.SIGHUP, signal.SIG_IGN); print('ready', flush=True); "
                             "time.sleep(1000)"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    pid = proc.pid
    restored = False
    try:
        deadline = time.monotonic() + 10
        while b"ready" not in (tmp_path / "log").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = _sig_masks(pid)
        coldsnap("dump", "-t", pid, "-D", tmp_path / "img", check=True)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        run = subprocess.run([sys.executable, "-c", RESTORER, "restore", "-D", str(tmp_path / "img"), "-d"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        restored = True
        assert _sig_masks(pid) == before
        for sig in (signal.SIGUSR1, signal.SIGWINCH):
            assert not before["SigIgn"] >> (sig - 1) & 1 and not before["SigCgt"] >> (sig - 1) & 1
    finally:
        if restored:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            proc.kill()
            proc.wait()
        reap_orphans(pids=[pid])
        log.close()
