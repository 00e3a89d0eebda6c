"""`coldsnap show` of a dumped process tree: the tree drawn, and in JSON."""
from __future__ import annotations

import json

from procs import coldsnap
from tree_helpers import ROLES, reap_orphans, start_counter_tree, tids_now


def test_show_draws_the_tree(tmp_path):
    tree = start_counter_tree(tmp_path / "logs")
    try:
        tree.wait_ticks(1)
        d = tmp_path / "img"
        coldsnap("dump", "-t", tree.proc.pid, "-D", d, "--leave-running", check=True)
        threads = {tree.ids[r].pid: len(tids_now(tree.ids[r].pid)) for r in ROLES}
    finally:
        tree.kill_all()
        tree.proc.wait(timeout=10)
        reap_orphans(pids=tree.pids)
    info = json.loads(coldsnap("show", d, "--json", check=True).stdout)
    level = info["chain"][0]
    procs = {p["pid"]: p for p in level["tree"]}
    assert list(procs)[0] == tree.proc.pid and set(procs) == set(threads)
    for r in ROLES:
        i, p = tree.ids[r], procs[tree.ids[r].pid]
        assert (p["pgid"], p["sid"], p["threads"]) == (i.pgid, i.sid, threads[i.pid])
        assert p["ppid"] == (0 if i.pid == tree.proc.pid else i.ppid)
        assert p["comm"] == "tree_counters"
        assert p["pages_present"] == level["processes"][str(i.pid)]["pages_present"] > 0
    kids = {tree.ids[r].pid for r in ROLES if r != "m" and tree.ids[r].ppid == tree.proc.pid}
    assert set(procs[tree.proc.pid]["children"]) == kids
    text = coldsnap("show", d, check=True).stdout
    lines = text.splitlines()
    at = lines.index(f"  process tree ({len(ROLES)} processes):")
    drawn = lines[at + 1:at + 1 + len(ROLES)]
    assert drawn[0].startswith(f"    {tree.proc.pid} 'tree_counters', ")
    for r in ROLES:
        pid = tree.ids[r].pid
        line = next(ln for ln in drawn if f" {pid} " in ln)
        assert f"{threads[pid]} thread" in line and f"{procs[pid]['pages_present']} pages" in line
    # a grandchild is drawn below its parent, one level deeper
    a, a1 = (next(i for i, ln in enumerate(drawn) if f" {tree.ids[r].pid} " in ln) for r in ("a", "a1"))
    assert a1 > a and drawn[a1].index(str(tree.ids["a1"].pid)) > drawn[a].index(str(tree.ids["a"].pid))


ZOMBIES = """
import os, signal, sys, time
kids = []
for how in ("exit", "kill"):
    kid = os.fork()
    if kid == 0:
        if how == "exit":
            os._exit(7)
        time.sleep(1000)
    kids.append(kid)
os.kill(kids[1], signal.SIGTERM)
print(*kids, flush=True)
time.sleep(1000)
"""


def test_show_names_the_zombies_of_a_tree(tmp_path, python_exe):
    """A dumped tree's zombies (no memory, no pagemap) were drawn without a name and left
    out of the per-process lines: now each is a zombie with the status its parent will get."""
    import subprocess
    import time
    from procs import proc_state
    parent = subprocess.Popen([python_exe, "-c", ZOMBIES], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        z7, zterm = map(int, parent.stdout.readline().split())
        deadline = time.monotonic() + 10
        while not all(proc_state(z)[0] == "Z" for z in (z7, zterm)):
            assert time.monotonic() < deadline, "no zombies"
            time.sleep(0.01)
        d = tmp_path / "img"
        coldsnap("dump", "-t", parent.pid, "-D", d, "--leave-running", check=True)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        reap_orphans(pids=[z7, zterm])
    lines = coldsnap("show", d, check=True).stdout.splitlines()
    assert f"    ├─ {z7} 'python3', zombie" in lines and f"    └─ {zterm} 'python3', zombie" in lines, lines
    for pid, words in ((z7, "zombie (exit 7)"), (zterm, "zombie (killed by signal 15)")):
        at = lines.index(f"  pid {pid}: 0 pages written (0.0 MiB), 0 in parent, 0 skipped")
        assert f"'python3', 1 thread, {words}; fds: none; child of {parent.pid}" in lines[at + 1], lines[at + 1]
    info = json.loads(coldsnap("show", d, "--json", check=True).stdout)["chain"][0]
    assert info["processes"][str(z7)]["task"]["exit_code"] == 7 << 8
    assert {p["pid"]: p["state"] for p in info["tree"]}[zterm] == "zombie"
