"""`coldsnap dump -t PID` of a process tree: every process in one freeze, its images, the
end of every process, and the refusals of what a tree restore cannot do yet."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import coldsnap, crit_decode_each, need_crit, proc_state
from tree_helpers import ROLES, ids_now, reap_orphans, start_counter_tree, tids_now


def test_dump_tree_images_and_kill(tmp_path):
    need_crit()
    tree = start_counter_tree(tmp_path / "logs")
    try:
        tree.wait_ticks(2)
        want = {tree.ids[r].pid: tree.ids[r] for r in ROLES}
        tids = {p: tids_now(p) for p in want}
        assert len(tids[tree.ids["b"].pid]) == 2
        d = tmp_path / "img"
        coldsnap("dump", "-t", tree.proc.pid, "-D", d, check=True)
        assert tree.proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=want)
        assert not [p for p in want if ids_now(p)], "a process of the tree survived the dump"
        names = (["pstree.img"] + [f"{k}-{p}.img" for p in want for k in ("ids", "mm", "pagemap", "fs")]
                 + [f"core-{t}.img" for p in want for t in tids[p]])
        decoded = crit_decode_each([d / n for n in names])
        entries = decoded[d / "pstree.img"]["entries"]
        assert [e["pid"] for e in entries][0] == tree.proc.pid
        got = {e["pid"]: (e["ppid"], e["pgid"], e["sid"], e["threads"]) for e in entries}
        root = tree.proc.pid
        assert got == {p: (0 if p == root else i.ppid, i.pgid, i.sid, tids[p]) for p, i in want.items()}
        files_ids = {decoded[d / f"ids-{p}.img"]["entries"][0]["files_id"] for p in want}
        assert len(files_ids) == len(want)          # one fd table each
        for p in files_ids:
            assert (d / f"fdinfo-{p}.img").exists()
        assert tree.fails() == []
        shown = coldsnap("show", d, check=True).stdout
        for r in ROLES:
            i = tree.ids[r]
            place = "" if r == "m" else f"child of {i.ppid}, "
            threads = "2 threads" if r == "b" else "1 thread"
            assert f"{threads}, running; fds: " in shown
            assert f"; {place}group {i.pgid}, session {i.sid}\n" in shown, shown
    finally:
        tree.kill_all()
        tree.proc.wait(timeout=10)
        reap_orphans(pids=tree.pids)


def test_dump_tree_leave_running(tmp_path):
    tree = start_counter_tree(tmp_path / "logs")
    try:
        tree.wait_ticks(1)
        coldsnap("dump", "-t", tree.proc.pid, "-D", tmp_path / "img", "--leave-running", check=True)
        for r in ROLES:
            now = ids_now(tree.ids[r].pid)
            assert now is not None and now.pgid == tree.ids[r].pgid
        tree.wait_ticks(3)
        assert tree.fails() == []
    finally:
        tree.kill_all()
        tree.proc.wait(timeout=10)
        reap_orphans(pids=tree.pids)


def test_dump_tree_keeps_a_zombie(tmp_path):
    """A zombie child is saved as one (pstree entry, core with TASK_DEAD and its wait status),
    not refused; `show` names it."""
    code = "import os, sys, time\nif os.fork() == 0: os._exit(3)\ntime.sleep(0.2); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        kid = next(int(c) for c in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split())
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", "--leave-running", check=True)
        from coldsnap.images.directory import ImageDir
        d = ImageDir.open(tmp_path / "img")
        entry = next(e for e in d.read("pstree.img") if e.pid == kid)
        assert (entry.ppid, list(entry.threads)) == (proc.pid, [kid])
        tc = d.read_single(f"core-{kid}.img").tc
        assert (tc.task_state, tc.exit_code) == (2, 3 << 8)
        assert not (tmp_path / "img" / f"mm-{kid}.img").exists()
        assert "zombie" in coldsnap("show", tmp_path / "img", check=True).stdout
        assert open(f"/proc/{kid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        proc.kill()
        proc.wait()
        reap_orphans()


def test_dump_tree_refuses_processes_sharing_a_table(tmp_path, spawn, workload_bin):
    w = spawn([workload_bin("tree_family")])
    main = int(w.ready.split()[1])
    run = coldsnap("dump", "-t", main, "-D", tmp_path / "img")
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1, run.stderr
    assert "shares its" in lines[0] and f"with process {main}" in lines[0], lines
    assert not (tmp_path / "img").exists()
    assert ids_now(main) is not None


def test_dump_refuses_a_thread_with_its_own_fd_table(tmp_path, spawn, workload_bin):
    w = spawn([workload_bin("tree_unshared")])
    tid = int(w.ready.split()[1])
    run = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img")
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1, run.stderr
    assert f"thread {tid} of process {w.pid} has its own fd table" in lines[0], lines
    assert not (tmp_path / "img").exists()
    assert ids_now(w.pid) is not None


def test_a_process_in_namespaces_of_its_own_is_refused(tmp_path):
    """`unshare --pid --fork --mount-proc sleep`: its child is PID 1 of a new PID namespace
    with mounts of its own. Restore makes every process in coldsnap's namespaces, so the
    dump took it and it came back as a plain pid with none of its mounts; now refused in one
    line naming the process and the namespaces (exit 5), both processes running on."""
    import shutil
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    top = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sleep", "1000"],
                           stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (kids := Path(f"/proc/{top.pid}/task/{top.pid}/children").read_text().split()):
            assert time.monotonic() < deadline, "unshare made no child"
            time.sleep(0.01)
        inner = int(kids[0])
        # unshare itself moved to the new mount namespace; the PID namespace is its child's
        for target, words in ((top.pid, f"process {top.pid} is in mnt namespace"),
                              (inner, f"process {inner} is in pid, mnt namespaces")):
            run = coldsnap("dump", "-t", target, "-D", tmp_path / f"d{target}")
            assert run.returncode == 5, run.stderr
            assert run.stderr == f"coldsnap: {words} of its own, not coldsnap's; not supported\n", run.stderr
            assert not (tmp_path / f"d{target}").exists()
        for pid in (top.pid, inner):
            assert proc_state(pid) == ("S", 0)
    finally:
        top.kill()
        top.wait(timeout=10)
        reap_orphans(pids=[inner])
