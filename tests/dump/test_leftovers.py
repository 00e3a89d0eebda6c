"""What a SIGKILLed coldsnap leaves: its hidden staging directory beside -D
(`.NAME.PID-START.XXXXXXXX.staging`). The next run writing NAME removes it, `coldsnap gc DIR`
does explicitly; a staging directory whose creator still runs is never touched. A killed
migrate or migrate-receive leaves its work directory in the temporary directory
(`coldsnap-KIND-PID-START.XXXXXXXX`): `coldsnap gc` without DIR removes those the same way."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from coldsnap.images.directory import ImageDir, make_work_dir, stagings

from procs import coldsnap, coldsnap_argv

WORKLOAD = ("import sys, time\nb = bytearray(96 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
            "print('ready', flush=True)\nwhile True: time.sleep(1)\n")


def killed_mid_dump(pid: int, images: Path, d_option: Path | None = None) -> Path:
    """Start `coldsnap dump -t PID -D IMAGES` (-D D_OPTION, a symlink to IMAGES, if given),
    SIGKILL it once its staging directory holds a pages file; returns that staging directory
    (left behind)."""
    where = images.parent
    cmd = subprocess.Popen(coldsnap_argv("dump", "-t", pid, "-D", d_option or images, "--leave-running"),
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    try:
        while True:
            found = [s.path for s in stagings(where, images.name)]
            if found and any(n.startswith("pages-") for n in os.listdir(found[0])):
                break
            assert cmd.poll() is None, "the dump ended before it could be killed"
            assert time.monotonic() < deadline, "no staging directory with pages appeared"
            time.sleep(0.001)
    finally:
        cmd.send_signal(signal.SIGKILL)
        cmd.wait(timeout=10)
    assert not images.exists() or os.listdir(images) == []
    (left,) = stagings(where, images.name)
    assert left.pid == cmd.pid and not left.live
    return left.path


def test_sigkilled_dump_leaves_staging_that_gc_and_the_next_run_remove(spawn, python_exe, tmp_path):
    w = spawn([python_exe, "-c", WORKLOAD])
    images = tmp_path / "img"

    left = killed_mid_dump(w.pid, images)
    killer = int(left.name.split(".")[2].split("-")[0])
    run = coldsnap("gc", images, check=True)
    assert run.stdout.splitlines() == [f"removed {left} (left by coldsnap {killer})"]
    assert not left.exists()

    left = killed_mid_dump(w.pid, images)
    assert coldsnap("gc", tmp_path / "other", "--json", check=True).stdout.strip() == '{"removed": [], "kept": []}'
    coldsnap("dump", "-t", w.pid, "-D", images, "--leave-running", check=True)
    assert not left.exists() and (images / "inventory.img").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_gc_through_a_symlinked_images_dir(spawn, python_exe, tmp_path):
    """-D LINK, a symlink to an empty directory: the staging directory lies beside the
    directory it names, and `gc LINK` finds it there."""
    w = spawn([python_exe, "-c", WORKLOAD])
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    left = killed_mid_dump(w.pid, tmp_path / "real", d_option=tmp_path / "link")
    run = coldsnap("gc", tmp_path / "link", check=True)
    assert run.stdout.startswith(f"removed {left} "), run.stdout
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]


def test_gc_says_so_when_it_cannot_remove(spawn, python_exe, tmp_path):
    """A staging directory holding an immutable file: gc said "removed" and left it there;
    now one line naming it, exit 6, and it goes once it can."""
    import shutil
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    w = spawn([python_exe, "-c", WORKLOAD])
    images = tmp_path / "img"
    left = killed_mid_dump(w.pid, images)
    stuck = next(left.iterdir())
    if subprocess.run(["chattr", "+i", stuck], capture_output=True).returncode:
        pytest.skip("this file system has no immutable flag")
    try:
        run = coldsnap("gc", images)
        assert run.returncode == 6, run.stderr
        assert run.stderr == f"coldsnap: {left}: cannot remove what coldsnap {left.name.split('.')[2].split('-')[0]} " \
                             "left: Operation not permitted\n"
        assert run.stdout == "" and left.exists()
    finally:
        subprocess.run(["chattr", "-i", stuck], check=True)
    assert coldsnap("gc", images, check=True).stdout.startswith(f"removed {left} ")
    assert not left.exists()


def test_a_live_runs_staging_is_kept(spawn, python_exe, tmp_path):
    """This process writes images (its staging directory lives): neither gc nor a run
    writing the same name touches it."""
    w = spawn([python_exe, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(60)"])
    images = tmp_path / "img"
    mine = ImageDir.create(images)
    try:
        out = json.loads(coldsnap("gc", images, "--json", check=True).stdout)
        assert out == {"removed": [], "kept": [{"path": str(mine.root), "pid": os.getpid()}]}
        coldsnap("dump", "-t", w.pid, "-D", images, "--leave-running", check=True)
        assert mine.root.is_dir()
    finally:
        mine.abort()


def test_gc_of_a_directory_that_cannot_hold_images(tmp_path):
    run = coldsnap("gc", tmp_path / "no" / "img")
    assert run.returncode == 6 and run.stderr.strip() == f"coldsnap: {tmp_path / 'no'}: no such directory"


def test_gc_removes_the_work_directories_of_killed_runs_only(python_exe, tmp_path, monkeypatch):
    """TMPDIR=tmp_path: a process SIGKILLed after making a migrate and a receive work
    directory leaves both; gc removes them, keeps this (live) process's own and one of a run
    in another PID namespace (its pid means nothing here), and leaves alone what it cannot
    tell the creator of (an older unnamed one, a stream's spool)."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    maker = subprocess.Popen([python_exe, "-c", "import sys, time\nfrom coldsnap.images.directory import make_work_dir\n"
                              "for kind in ('migrate', 'receive'): (make_work_dir(kind) / 'pages-1.img').touch()\n"
                              "print('ready', flush=True)\ntime.sleep(60)"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert maker.stdout.readline() == "ready\n"
    finally:
        maker.kill()
        maker.wait()
    dead = sorted(str(p) for p in tmp_path.glob("coldsnap-*"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)      # gettempdir() reads TMPDIR again
    mine = make_work_dir("migrate")
    elsewhere = tmp_path / "coldsnap-receive-7-1-1.abcdefgh"     # pid 7 of PID namespace inode 1
    elsewhere.mkdir()
    others = [tmp_path / "coldsnap-migrate-a1b2c3", tmp_path / "coldsnap-stream.x1y2"]
    for d in others:
        d.mkdir()
    out = json.loads(coldsnap("gc", "--json", env=env, check=True).stdout)
    assert out == {"removed": [{"path": p, "pid": maker.pid} for p in dead],
                   "kept": [{"path": str(mine), "pid": os.getpid()}, {"path": str(elsewhere), "pid": 7}]}
    assert sorted(tmp_path.glob("coldsnap-*")) == sorted([mine, elsewhere, *others])
