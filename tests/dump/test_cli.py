"""The command line as a user meets it: series, show, check."""
import json
import os

import pytest

from coldsnap.kernel.procfs import read_status
from coldsnap.memory.tracking import PARK_FD_MIN
from predump_helpers import coldsnap, wait_quiet


def test_series_show_and_nothing_left_in_the_target(spawn, workload_bin, tmp_path):
    w = spawn([workload_bin("mem_pattern"), 1024, 8])
    wait_quiet(w.pid)
    r = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "s", "--iterations", 3)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["1", "2", "3"] and all(row[1] == "uffd" for row in rows)
    assert float(rows[1][2]) == 0.0 and float(rows[2][2]) == 0.0      # no freeze after arming
    assert int(rows[0][3]) > 1024 and int(rows[2][3]) < 16            # quiet target: ~nothing new
    assert os.readlink(tmp_path / "s" / "3" / "parent") == "../2"
    info = json.loads(coldsnap("show", "--json", tmp_path / "s" / "3", check=True).stdout)
    assert [lv["stats"]["track_backend"] for lv in info["chain"]] == ["uffd"] * 3
    assert info["chain_disk_bytes"] >= 1024 * 4096
    links = [os.readlink(f"/proc/{w.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{w.pid}/fd")]
    assert not any("userfaultfd" in link for link in links)
    assert w.send("write 1 9") == "wrote 1"


def test_show_text_and_check(spawn, workload_bin, tmp_path):
    w = spawn([workload_bin("mem_pattern"), 64, 8])
    wait_quiet(w.pid)
    coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "img", check=True)
    out = coldsnap("show", tmp_path / "img", check=True).stdout
    assert f"pid {w.pid}:" in out and "anon-private" in out and "chain total on disk" in out
    check = coldsnap("check", check=True).stdout
    assert "pagemap_scan" in check and "uffd_wp_async" in check and "soft_dirty" in check
    assert "images tested both ways with CRIU 4.2" in check


def test_show_of_a_missing_dir_is_one_line(tmp_path):
    r = coldsnap("show", tmp_path / "nope")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and r.stderr.startswith("coldsnap: ")


def _uffds(pid: int) -> list[int]:
    return [int(fd) for fd in os.listdir(f"/proc/{pid}/fd") if "userfaultfd" in os.readlink(f"/proc/{pid}/fd/{fd}")]


@pytest.mark.parametrize("mode", [[], ["--track-mem", "uffd"], ["--pre-dump-mode", "nofreeze"]],
                         ids=["default", "track-mem", "nofreeze"])
def test_tracking_survives_between_separate_runs_until_untrack(spawn, workload_bin, tmp_path, mode):
    """No-freeze tracked pre-dumps are the default where userfaultfd tracking works."""
    w = spawn([workload_bin("mem_pattern"), 1024, 8])
    wait_quiet(w.pid)
    first = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "1", *mode, check=True)
    assert "write tracking stays in" in first.stdout
    assert int(first.stdout.split()[5]) > 1024
    parked = [fd for fd in os.listdir(f"/proc/{w.pid}/fd")
              if "userfaultfd" in os.readlink(f"/proc/{w.pid}/fd/{fd}")]
    # out of the program's own fd numbering: the last slot of its fd table (no table growth)
    assert parked and int(parked[0]) == int(read_status(w.pid)["FDSize"]) - 1 >= PARK_FD_MIN
    assert w.send("write 4 7") == "wrote 4"
    wait_quiet(w.pid)
    second = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "2", *mode,
                      "--prev-images-dir", tmp_path / "1", check=True)
    written = int(second.stdout.split()[5])
    assert 4 <= written <= 32 and "frozen 0.00 ms" in second.stdout, second.stdout
    assert coldsnap("untrack", w.pid, check=True).stdout.startswith("closed")
    assert not any("userfaultfd" in os.readlink(f"/proc/{w.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{w.pid}/fd"))
    assert "no coldsnap tracking" in coldsnap("untrack", w.pid, check=True).stdout
    assert w.send("write 1 9") == "wrote 1"


def test_auto_dedup_frees_the_parent_copies_and_the_chain_still_reads(spawn, workload_bin, tmp_path):
    from coldsnap.images.chain import PageChain, disk_usage
    w = spawn([workload_bin("mem_pattern"), 2048, 8])
    wait_quiet(w.pid)
    # untracked (live) pre-dumps: the second one saves every page again, superseding the first
    coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "1", "--pre-dump-mode", "live", check=True)
    before = disk_usage(tmp_path / "1")
    r = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "2", "--prev-images-dir", tmp_path / "1",
                 "--pre-dump-mode", "live", "--auto-dedup", check=True)
    assert "auto-dedup:" in r.stdout
    assert disk_usage(tmp_path / "1") < before - 2048 * 4096 // 2
    with PageChain(tmp_path / "2", w.pid) as chain, open(f"/proc/{w.pid}/mem", "rb", buffering=0) as mem:
        mem.seek(0x100000000000)
        assert chain.lookup(0x100000000000, 2048) == mem.read(2048 * 4096)


FORKER = r"""
import os, sys
mem = bytearray(8 << 20)
for i in range(0, len(mem), 4096):
    mem[i] = 1
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        for i in range(0, len(mem), 4096):   # the child writes all of its copy
            mem[i] = 2
        os._exit(0 if all(mem[i] == 2 for i in range(0, len(mem), 4096)) else 1)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_a_forking_target_with_parked_tracking(spawn, python_exe, tmp_path):
    w = spawn([python_exe, "-c", FORKER])
    coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "1", "--track-mem", "uffd", check=True)
    assert w.send("fork") == "0"              # the child, holding our inherited fd, is unharmed
    wait_quiet(w.pid)
    r = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "2", "--track-mem", "uffd",
                 "--prev-images-dir", tmp_path / "1", check=True)
    assert int(r.stdout.split()[5]) < 512     # not the 2048 pages the child wrote in its copy
    coldsnap("untrack", w.pid, check=True)
    assert w.send("fork") == "0"


def test_live_mode_leaves_nothing_in_the_target(spawn, workload_bin, tmp_path):
    w = spawn([workload_bin("mem_pattern"), 256, 8])
    wait_quiet(w.pid)
    r = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "1", "--pre-dump-mode", "live", check=True)
    assert "(live)" in r.stdout and "tracking" not in r.stdout
    assert _uffds(w.pid) == []
    for combo in (["--pre-dump-mode", "frozen", "--track-mem", "uffd"],
                  ["--pre-dump-mode", "nofreeze", "--track-mem", "none"]):
        bad = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "2", *combo)
        assert bad.returncode != 0 and bad.stderr.startswith("coldsnap: ") and bad.stderr.count("\n") == 1
        assert "does not go with" in bad.stderr
        assert not (tmp_path / "2").exists()


def test_soft_dirty_is_refused_in_one_line_where_the_kernel_lacks_it(spawn, workload_bin, tmp_path):
    from coldsnap.kernel.features import probe
    if probe().soft_dirty:
        pytest.skip("this kernel has soft-dirty")
    w = spawn([workload_bin("mem_pattern"), 64, 8])
    for extra in ([], ["--iterations", "2"]):
        r = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "sd", "--track-mem", "soft-dirty", *extra)
        assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
        assert "no soft-dirty" in r.stderr and "--track-mem uffd" in r.stderr
        assert not (tmp_path / "sd").exists()
    assert _uffds(w.pid) == [] and w.send("write 1 2") == "wrote 1"


def test_tracking_is_chosen_from_what_the_kernel_offers():
    from coldsnap.dump.plan import default_track
    from coldsnap.kernel.features import Features, probe

    def feats(**kw):
        base = dict(pagemap_scan=True, uffd_wp_async=True, soft_dirty=False, pidfd_getfd=True,
                    clone3_set_tid=True)
        return Features(**{**base, **kw})
    assert default_track(feats()) == "uffd"
    assert default_track(feats(uffd_wp_async=False, soft_dirty=True)) == "soft-dirty"
    assert default_track(feats(pidfd_getfd=False, soft_dirty=True)) == "soft-dirty"
    assert default_track(feats(uffd_wp_async=False)) == "none"
    assert default_track(probe()) == "uffd"            # this machine


def test_live_mode_with_uffd_tracking_plans_in_a_short_freeze(spawn, workload_bin, tmp_path):
    """--pre-dump-mode live --track-mem uffd: written pages are read and re-armed, and the page
    scan done, while the task is held; the copy runs after it resumes."""
    w = spawn([workload_bin("mem_pattern"), 1024, 8])
    wait_quiet(w.pid)
    live = ["--pre-dump-mode", "live", "--track-mem", "uffd"]
    first = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "1", *live, check=True)
    assert "write tracking stays in" in first.stdout
    assert w.send("write 4 7") == "wrote 4"
    wait_quiet(w.pid)
    second = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "2", *live,
                      "--prev-images-dir", tmp_path / "1", check=True)
    assert 4 <= int(second.stdout.split()[5]) <= 32, second.stdout
    assert "frozen 0.00 ms" not in second.stdout           # this mode does freeze, briefly
    info = json.loads(coldsnap("show", tmp_path / "2", "--json", check=True).stdout)
    assert info["chain"][0]["stats"]["mode"] == "live"
    assert info["chain"][0]["stats"]["track_backend"] == "uffd"
    coldsnap("untrack", w.pid, check=True)
    assert _uffds(w.pid) == []
