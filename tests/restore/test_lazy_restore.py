"""`restore --lazy-pages`: the process runs before its private memory is in; a detached
server fills it on demand and in the background, and its death kills the process."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from coldsnap.errors import CsError
from coldsnap.images.chain import PageChain
from coldsnap.images.directory import ImageDir
from coldsnap.kernel.procfs import child_pids
from coldsnap.restore.lazy_start import lazy_status

from restore_helpers import (LogWorkload, alive, assert_one_line_error, coldsnap, end_lazy_restore, kill_and_reap,
                             reap, reap_quietly, wait_gone)
from rseq_mask import masked, rseq_areas

SIZE_MB = 256


def lazy_restore(images, *more) -> dict:
    """`restore -d --lazy-pages --json`: its result (pid, lazy_server, lazy_guardian...)."""
    run = coldsnap("restore", "-D", images, "-d", "--lazy-pages", "--json", *more).check()
    return json.loads(run.stdout)


def wait_served(res: dict, timeout: float = 60.0) -> int:
    """Reap the guardian (reparented to the test, a subreaper) once the server is done:
    its exit status (0: every page went in)."""
    status = reap(res["lazy_guardian"], timeout)
    wait_gone(res["lazy_server"])
    return status


def dumped(w: LogWorkload, images) -> None:
    coldsnap("dump", "-t", w.pid, "-D", images).check()
    w.reap_dumped()


@contextlib.contextmanager
def lazy_check_restored(workload_bin, tmp_path):
    """lazy_check of SIZE_MB dumped and restored lazily, not started on its checks yet:
    (workload, restore result, the file that starts them); everything reaped at the end."""
    go = tmp_path / "go"
    w = LogWorkload([workload_bin("lazy_check"), SIZE_MB, go], tmp_path / "log")
    res = None
    try:
        w.wait_ready()
        dumped(w, tmp_path / "img")
        res = lazy_restore(tmp_path / "img")
        w.adopt_restored()
        yield w, res, go
    finally:
        end_lazy_restore(w, res)


def test_c_workload_checks_all_its_memory_with_fork_and_munmap(workload_bin, tmp_path):
    """256 MiB: while the pages come in the workload forks (the child checks it all), munmaps,
    discards and mremaps chunks, and checks the rest from two threads."""
    with lazy_check_restored(workload_bin, tmp_path) as (w, res, go):
        assert res["pid"] == w.pid and res["lazy_pages"] >= SIZE_MB << 8
        st = lazy_status(w.pid)
        assert st["pages_total"] >= SIZE_MB << 8 and 0 <= st["pages_left"] <= st["pages_total"]
        assert st["processes"] == [w.pid]
        go.touch()
        w.wait_for("ok line", lambda: any(ln.startswith("ok") for ln in w.lines()), timeout=60)
        assert not w.failures(), w.tail()
        assert wait_served(res) == 0
        with pytest.raises(CsError, match="no lazy restore"):
            lazy_status(w.pid)
        assert alive(w.pid)


def test_fork_advice_holds_for_a_child_made_before_the_pages_are_in(workload_bin, tmp_path):
    """A fork at once after the restore: the child reads zeros in the WIPEONFORK area and has
    no DONTFORK area (both written eagerly: the server cannot tell a child's areas apart),
    while the big area still comes in; the parent has all three."""
    go = tmp_path / "go"
    w = LogWorkload([workload_bin("lazy_fork_advice"), 64, go], tmp_path / "log")
    res = None
    try:
        w.wait_ready()
        dumped(w, tmp_path / "img")
        res = lazy_restore(tmp_path / "img")
        w.adopt_restored()
        assert 64 << 8 <= res["lazy_pages"] < (64 << 8) + 256     # not the two advised areas
        go.touch()
        w.wait_for("ok line", lambda: any(ln.startswith(("ok", "FAIL")) for ln in w.lines()), timeout=60)
        assert not w.failures(), w.tail()
        assert wait_served(res) == 0
    finally:
        end_lazy_restore(w, res)


def test_server_killed_midway_kills_the_process(workload_bin, tmp_path):
    """SIGKILL of the server while the workload reads its memory: the guardian kills the
    workload (and its child) before the uffds close; it never saw a wrong word."""
    with lazy_check_restored(workload_bin, tmp_path) as (w, res, go):
        # held at once, so that its background push cannot bring every page in before the
        # kill (on a loaded machine the test's own steps can take longer than that push)
        os.kill(res["lazy_server"], signal.SIGSTOP)
        assert _state(res["lazy_server"]) in "tT", "the server was done before the test could stop it"
        go.touch()
        time.sleep(0.05)                # the workload now waits for a page that cannot come
        os.kill(res["lazy_server"], signal.SIGKILL)
        status = wait_served(res, timeout=10)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
        st = reap(w.pid, 10)
        assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL
        wait_gone(w.pid)
        assert not w.failures(), w.tail()
        assert not any(ln.startswith("ok") for ln in w.lines()), "finished before the kill: make it bigger"
        with pytest.raises(CsError):
            lazy_status(w.pid)


def _state(pid: int) -> str:
    """The one-letter state of PID (its stop is reported asynchronously: wait for it)."""
    deadline = time.monotonic() + 5
    while True:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in "tTZX" or time.monotonic() > deadline:
            return state
        time.sleep(0.001)


def test_dump_after_lazy_restore_equals_dump_after_eager_restore(spawn, workload_bin, tmp_path):
    from test_state_equal import _all_paused, _process_view, _thread_view
    w = spawn([str(workload_bin("rst_still"))], stderr=open(os.devnull, "w"))
    pid = w.pid
    _all_paused(pid, 4)
    first, eager, lazy = tmp_path / "first", tmp_path / "eager", tmp_path / "lazy"
    try:
        coldsnap("dump", "-t", pid, "-D", first).check()
        w.proc.wait(timeout=10)
        wait_gone(pid)
        coldsnap("restore", "-D", first, "-d").check()
        _all_paused(pid, 4)
        coldsnap("dump", "-t", pid, "-D", eager).check()
        reap(pid)
        wait_gone(pid)
        res = lazy_restore(first)
        assert res["lazy_pages"] > 0
        _all_paused(pid, 4)
        assert wait_served(res) == 0
        coldsnap("dump", "-t", pid, "-D", lazy).check()
        reap(pid)

        a, b = ImageDir.open(eager), ImageDir.open(lazy)
        for tid in sorted(int(n.split("-")[1].split(".")[0]) for n in os.listdir(eager) if n.startswith("core-")):
            assert _thread_view(a.read_single(f"core-{tid}.img")) == _thread_view(b.read_single(f"core-{tid}.img"))
        assert _process_view(a, pid) == _process_view(b, pid)
        rseq = rseq_areas(eager)
        with PageChain(a, pid) as ca, PageChain(b, pid) as cb:
            ra, rb = ca.sources(), cb.sources()
            assert [(v, n) for _, v, n, _ in ra] == [(v, n) for _, v, n, _ in rb]
            for _, vaddr, nbytes, _ in ra:
                n = nbytes >> 12
                assert masked(vaddr, ca.lookup(vaddr, n), rseq) == masked(vaddr, cb.lookup(vaddr, n), rseq)
    finally:
        w.proc.poll()
        kill_and_reap(pid)


REDIS_KEYS, REDIS_VALUE = 160_000, 1000      # ~200 MiB of heap (the bench holds 1 GiB)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_answers_at_once_then_every_key_is_right(tmp_path):
    from test_redis_roundtrip import _free_port, _wait_answering, redis_cmds
    port = _free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp_path),
                             "--enable-debug-command", "yes"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tmp_path)
    pid, res = proc.pid, None
    try:
        _wait_answering(port, lambda: alive(pid))
        assert redis_cmds(port, [("DEBUG", "POPULATE", str(REDIS_KEYS), "key", str(REDIS_VALUE))],
                          timeout=60) == [b"+OK"]
        coldsnap("dump", "-t", pid, "-D", tmp_path / "img").check()
        proc.wait(timeout=10)
        wait_gone(pid)
        res = lazy_restore(tmp_path / "img")
        assert res["lazy_pages"] > 150 << 8          # the heap is left to the server
        assert redis_cmds(port, [("GET", "key:12345")]) == [b"value:12345".ljust(REDIS_VALUE, b"\0")]
        for lo in range(0, REDIS_KEYS, 2000):
            got = redis_cmds(port, [("GET", f"key:{i}") for i in range(lo, lo + 2000)], timeout=30)
            want = [f"value:{i}".encode().ljust(REDIS_VALUE, b"\0") for i in range(lo, lo + 2000)]
            assert got == want, f"a key in {lo}..{lo + 1999} is wrong"
        assert redis_cmds(port, [("DBSIZE",)]) == [b":%d" % REDIS_KEYS]
        assert wait_served(res) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill_and_reap(pid)
        if res:
            reap_quietly(res["lazy_guardian"])


def test_tree_one_server_for_every_process(workload_bin, tmp_path):
    """A parent and its child, 64 MiB each, restored lazily: one server, one uffd each; both
    check all their memory (and fork) while it comes in."""
    from tree_helpers import kill_tree, reap_orphans
    go, binary = tmp_path / "go", workload_bin("lazy_check")
    w = LogWorkload(["bash", "-c", f"{binary} 64 {go} & exec {binary} 64 {go}"], tmp_path / "log")
    pids, res = [w.pid], None
    try:
        w.wait_for("two ready lines", lambda: w.count_lines("ready") == 2)
        pids += child_pids([w.pid])[w.pid]
        assert len(pids) == 2
        dumped(w, tmp_path / "img")
        reap_orphans(pids=pids[1:])
        res = lazy_restore(tmp_path / "img")
        assert res["processes"] == 2 and res["lazy_pages"] > 0      # one restore, one server, both lazy
        try:
            status = lazy_status(w.pid)
        except CsError:     # the server may have brought every page in already (128 MiB, fast)
            status = None
        if status is not None:
            assert status["processes"] == sorted(pids)
        w.adopt_restored()
        go.touch()
        w.wait_for("two ok lines", lambda: w.count_lines("ok") == 2, timeout=60)
        assert not w.failures(), w.tail()
        assert wait_served(res) == 0
    finally:
        kill_tree(w.original, pids, restored=True)
        w.original = None
        if res:
            reap_quietly(res["lazy_guardian"])


def test_pages_come_from_a_pre_dump_chain(workload_bin, tmp_path):
    """A dump on top of a pre-dump: most pages live in the parent's pages file (level 1, pushed
    after the dump's own); the workload still reads every word right."""
    go = tmp_path / "go"
    w = LogWorkload([workload_bin("lazy_check"), 64, go], tmp_path / "log")
    res = None
    try:
        w.wait_ready()
        coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "pre").check()
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img", "--prev-images-dir", tmp_path / "pre").check()
        w.reap_dumped()
        res = lazy_restore(tmp_path / "img")
        assert res["lazy_pages"] >= 64 << 8
        w.adopt_restored()
        go.touch()
        w.wait_for("ok line", lambda: any(ln.startswith("ok") for ln in w.lines()), timeout=60)
        assert not w.failures(), w.tail()
        assert wait_served(res) == 0
    finally:
        end_lazy_restore(w, res)


def test_guardian_killed_the_server_serves_on(workload_bin, tmp_path):
    """The guardian only watches: without it the server still brings every page in (the
    workload's fork is handed to nobody, not a reason to stop) and exits 0."""
    with lazy_check_restored(workload_bin, tmp_path) as (w, res, go):
        os.kill(res["lazy_guardian"], signal.SIGKILL)
        reap(res["lazy_guardian"])              # the server is now an orphan of ours (subreaper)
        go.touch()
        w.wait_for("ok line", lambda: any(ln.startswith("ok") for ln in w.lines()), timeout=60)
        assert not w.failures(), w.tail()
        status = reap(res["lazy_server"], 60)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_cli_words_its_errors_in_one_line(tmp_path):
    run = coldsnap("restore", "-D", tmp_path, "--lazy-log", tmp_path / "log")
    assert run.returncode == 2 and "--lazy-log goes with --lazy-pages" in run.stderr
    assert_one_line_error(run)
    run = coldsnap("lazy-status", os.getpid())
    assert run.returncode == 1 and "no lazy restore" in run.stderr
    assert_one_line_error(run)
    assert not (tmp_path / "log").exists()


def test_dump_is_refused_while_pages_are_outstanding(workload_bin, tmp_path):
    """Pages still in the server look never written in the pagemap: a dump now would save
    zeros for them, so dump and pre-dump refuse in one line (the server held still by SIGSTOP)."""
    with lazy_check_restored(workload_bin, tmp_path) as (w, res, go):
        os.kill(res["lazy_server"], signal.SIGSTOP)
        try:
            for cmd in ("dump", "pre-dump"):
                run = coldsnap(cmd, "-t", w.pid, "-D", tmp_path / cmd)
                assert run.returncode == 5 and "being restored lazily" in run.stderr, run.stderr
                assert_one_line_error(run)
                assert not (tmp_path / cmd).exists()
        finally:
            os.kill(res["lazy_server"], signal.SIGCONT)
        assert wait_served(res) == 0
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "after", "--leave-running").check()


HOLDING_COMMAND = """
import json, sys
from coldsnap.restore import lazy_server
from coldsnap.restore.restore import restore
lazy_server.HOLD_MAX = float(sys.argv[2])       # the server is forked from us: it has ours
r = restore(sys.argv[1], lazy_pages=True, lazy_hold=True)
print(json.dumps({"pid": r.pid, "lazy_server": r.lazy_server, "lazy_guardian": r.lazy_guardian}), flush=True)
sys.stdin.read()                                # the command's end: when the test says
"""


@contextlib.contextmanager
def held_restore(workload_bin, tmp_path, hold_max: float):
    """lazy_check dumped, then restored lazily by a command (HOLDING_COMMAND) that goes on
    until its stdin ends: (workload, its result, the command)."""
    w = LogWorkload([workload_bin("lazy_check"), 32, tmp_path / "go"], tmp_path / "log")
    res = cmd = None
    try:
        w.wait_ready()
        dumped(w, tmp_path / "img")
        cmd = subprocess.Popen([sys.executable, "-c", HOLDING_COMMAND, tmp_path / "img", str(hold_max)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        res = json.loads(cmd.stdout.readline())
        yield w, res, cmd
    finally:
        if cmd is not None:
            cmd.stdin.close()
            cmd.wait()
            w.adopt_restored()
        end_lazy_restore(w, res)


def test_the_push_waits_for_the_end_of_the_command(workload_bin, tmp_path):
    """restore(lazy_hold=True), as `restore -d` runs it: the server answers faults at once but
    pushes nothing until the command that restored has ended (it needs the CPUs until then);
    then every page comes in."""
    with held_restore(workload_bin, tmp_path, hold_max=60) as (w, res, cmd):
        time.sleep(0.3)
        st = lazy_status(w.pid)
        assert st["ready"] and st["pushed_pages"] == 0 and st["pages_left"] > 0, st
        cmd.stdin.close()
        assert cmd.wait() == 0
        assert wait_served(res) == 0
        assert alive(w.pid)


def test_a_command_that_goes_on_holds_the_push_for_a_moment_only(workload_bin, tmp_path):
    """The command lives on (a restore without -d would, or a library's caller): the push
    begins after lazy_server.HOLD_MAX all the same."""
    with held_restore(workload_bin, tmp_path, hold_max=0.2) as (w, res, cmd):
        assert wait_served(res) == 0
        assert cmd.poll() is None and alive(w.pid)


def test_no_more_round_trips_than_an_eager_restore(workload_bin, tmp_path):
    """The lazy pages' userfaultfd is made in the batch of the mmaps and its copy in the
    process closed by the next batch, as the eager restore's own: arming it costs no round
    trip of its own (two, before)."""
    w = LogWorkload([workload_bin("lazy_check"), 32, tmp_path / "go"], tmp_path / "log")
    res = None
    try:
        w.wait_ready()
        dumped(w, tmp_path / "img")
        eager = json.loads(coldsnap("restore", "-D", tmp_path / "img", "-d", "--json").check().stdout)
        w.adopt_restored()
        kill_and_reap(w.pid)
        res = lazy_restore(tmp_path / "img")
        w.adopt_restored()
        assert res["lazy_pages"] > 0
        assert res["round_trips"] <= eager["round_trips"], (res, eager)
    finally:
        end_lazy_restore(w, res)
