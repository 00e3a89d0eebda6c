"""dump, restore, migrate and migrate-receive without CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN
(a user who forgot sudo): one line saying so and exit 4, before anything is touched (it was a
raw "Operation not permitted: /proc/N/map_files/..." half-way, exit 1)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from procs import coldsnap_argv, proc_state


def _without_caps(*args) -> subprocess.CompletedProcess:
    """`coldsnap ARGS` as root with every capability gone (bounding set emptied first: an
    exec as uid 0 then gains none)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    env = dict(os.environ, COLDSNAP_SERVICE="")
    return subprocess.run([setpriv, "--bounding-set=-all", "--inh-caps=-all", *coldsnap_argv(*args)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, env=env)


def test_commands_that_need_the_capabilities_say_so(spawn, workload_bin, tmp_path):
    w = spawn([workload_bin("mem_pattern"), 64, 8])
    images = tmp_path / "img"
    for argv in (["dump", "-t", w.pid, "-D", images], ["restore", "-D", images],
                 ["migrate", "-t", w.pid, "--to", "127.0.0.1:1"], ["migrate-receive", "--port", "0"]):
        run = _without_caps(*argv)
        assert run.returncode == 4, (argv, run.returncode, run.stderr)
        assert run.stderr == (f"coldsnap: {argv[0]}: needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN "
                              "(run it as root)\n"), run.stderr
    assert os.listdir(tmp_path) == []
    assert proc_state(w.pid) in (("S", 0), ("R", 0))
    run = _without_caps("dump", "-t", w.pid, "-D", images, "--json")
    assert json.loads(run.stdout)["error"] == {
        "type": "AccessDenied", "exit_code": 4,
        "message": "dump: needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN (run it as root)"}
