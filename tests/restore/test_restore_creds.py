"""Credentials come back as they were: ids, groups, every capability set, no_new_privs.
A restore must never hand a process privileges it had given up."""
from __future__ import annotations

import json
import subprocess

import pytest

from restore_helpers import coldsnap, kill_and_reap, wait_gone

KEYS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")


def creds(pid: int) -> dict[str, str]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in KEYS:
            out[key] = " ".join(value.split())
    return out


@pytest.mark.parametrize("mode", ["caps", "nobody"])
def test_credentials_survive_dump_and_restore(spawn, workload_bin, tmp_path, mode):
    w = spawn([str(workload_bin("rst_creds")), mode], stderr=subprocess.DEVNULL)
    pid = w.pid
    try:
        before = creds(pid)
        assert before["CapEff"] != creds(1)["CapEff"]        # it really gave something up
        coldsnap("dump", "-t", pid, "-D", tmp_path / "img").check()
        w.proc.wait(timeout=10)
        wait_gone(pid)
        restored = json.loads(coldsnap("restore", "-D", tmp_path / "img", "-d", "--json").check().stdout)
        assert restored["pid"] == pid and restored["threads"] == 1
        assert creds(pid) == before
    finally:
        kill_and_reap(pid)
