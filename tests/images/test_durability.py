"""A committed images directory survives a crash of the machine: before the rename that
publishes it, every file in it and the staging directory itself are fsynced, and the
directory holding it is fsynced after the rename. Observed from the kernel's side: strace
of a real `coldsnap dump` / `pre-dump` records the system calls, nothing in coldsnap is
replaced."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from procs import coldsnap_argv

SYNC = re.compile(r"^\d+\s+(?:fsync|fdatasync)\(\d+<(?P<path>[^>]*)>\)\s*=\s*0")
RENAME = re.compile(r'^\d+\s+rename(?:at2?)?\(.*?"(?P<old>[^"]*)".*?"(?P<new>[^"]*)".*\)\s*=\s*0')

IDLE = "import sys; print('ready', flush=True); sys.stdin.read()"


def _traced(log, *args) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/setup installs it)")
    argv = [strace, "-f", "-y", "-qq", "-e", "signal=none",
            "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o", str(log), *coldsnap_argv(*args)]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def _events(log) -> list[tuple[str, str, str]]:
    """('sync', path, '') and ('rename', old, new), in the order the kernel ran them."""
    out = []
    for line in open(log):
        if m := SYNC.match(line):
            out.append(("sync", m["path"], ""))
        elif m := RENAME.match(line):
            out.append(("rename", m["old"], m["new"]))
    return out


@pytest.mark.parametrize("command", ["dump", "pre-dump"])
def test_the_commit_fsyncs_every_file_the_staging_directory_and_its_parent(spawn, tmp_path, command):
    w = spawn([sys.executable, "-c", IDLE])
    where = tmp_path / "images"
    where.mkdir()
    target = where / "img"
    extra = ["--leave-running"] if command == "dump" else ["--pre-dump-mode", "live"]
    _traced(tmp_path / "strace.log", command, "-t", w.pid, "-D", target, *extra)
    events = _events(tmp_path / "strace.log")
    commits = [i for i, (kind, _, new) in enumerate(events) if kind == "rename" and new == str(target)]
    assert len(commits) == 1, events
    commit = commits[0]
    staging = events[commit][1]
    assert os.path.dirname(staging) == str(where)
    before = {path for kind, path, _ in events[:commit] if kind == "sync"}
    after = {path for kind, path, _ in events[commit + 1:] if kind == "sync"}
    files = sorted(e.name for e in os.scandir(target) if e.is_file(follow_symlinks=False))
    assert "inventory.img" in files and any(f.startswith("pages-") for f in files)
    assert [f for f in files if os.path.join(staging, f) not in before] == [], "files not fsynced"
    assert staging in before, "the staging directory is not fsynced before the rename"
    assert str(where) in after, "the directory holding the images is not fsynced after the rename"
