"""The CLI edge: one line per error, exit codes by error class, --json for scripts."""
import json
import signal
import subprocess
import time

import pytest

from predump_helpers import wait_quiet
from procs import coldsnap, coldsnap_argv, proc_state

from coldsnap.cli import (EXIT_ACCESS_DENIED, EXIT_BAD_IMAGE, EXIT_NO_SUCH_PROCESS, EXIT_USAGE,
                          build_parser)


def _gone_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _one_line(r) -> str:
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("coldsnap: "), r.stderr
    return r.stderr.strip()


def test_exit_codes_name_the_error_class(spawn, workload_bin, tmp_path):
    pid = _gone_pid()
    r = coldsnap("pre-dump", "-t", pid, "-D", tmp_path / "x", "--pre-dump-mode", "live")
    assert r.returncode == EXIT_NO_SUCH_PROCESS
    assert _one_line(r) == f"coldsnap: cannot seize {pid}: no such process"
    r = coldsnap("show", tmp_path / "nope")
    assert r.returncode == EXIT_BAD_IMAGE and "cannot open images directory" in _one_line(r)
    w = spawn([workload_bin("mem_pattern"), 64, 8])
    r = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "x", "--pre-dump-mode", "frozen",
                 "--track-mem", "uffd")
    assert r.returncode == EXIT_USAGE and "does not go with" in _one_line(r)
    assert coldsnap("dump", "-t", "nope", "-D", tmp_path / "x").returncode == EXIT_USAGE
    tracer = subprocess.Popen(["strace", "-o", "/dev/null", "-p", str(w.pid)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if "TracerPid:\t0" not in open(f"/proc/{w.pid}/status").read():
                break
            subprocess.run(["sleep", "0.01"])
        r = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "x", "--leave-running")
        assert r.returncode == EXIT_ACCESS_DENIED and "already traced by" in _one_line(r)
    finally:
        tracer.terminate()
        tracer.wait()
    assert not (tmp_path / "x").exists()


def test_help_documents_the_exit_codes():
    text = build_parser().format_help()
    assert "exit status:" in text and "130" in text and "143" in text and "--json" in text


def test_json_results(spawn, workload_bin, tmp_path):
    w = spawn([workload_bin("mem_pattern"), 256, 8], stderr=subprocess.DEVNULL)
    wait_quiet(w.pid)
    r = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "1", "--json", check=True)
    pre = json.loads(r.stdout)
    assert pre["pid"] == w.pid and pre["stats"]["pages_written"] > 256 and pre["stats"]["uffd_fd"] >= 0
    r = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "2", "--prev-images-dir", tmp_path / "1",
                 "--leave-running", "--json", check=True)
    dump = json.loads(r.stdout)
    assert dump["left_running"] is True and dump["stats"]["mode"] == "dump"
    assert json.loads(coldsnap("untrack", w.pid, "--json", check=True).stdout) == {"pid": w.pid, "closed_fds": [], "processes": {}}
    assert json.loads(coldsnap("show", tmp_path / "2", "--json", check=True).stdout)["chain"]
    assert set(json.loads(coldsnap("check", "--json", check=True).stdout)) >= {"pagemap_scan", "uffd_wp_async"}
    series = json.loads(coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "s", "--iterations", 2,
                                 "--json", check=True).stdout)
    assert len(series["iterations"]) == 2
    coldsnap("untrack", w.pid, check=True)


def test_untrack_refuses_init():
    # init's tree is every process: the tracking of every other chain would be closed
    r = coldsnap("untrack", 1)
    assert r.returncode == 1
    assert _one_line(r) == "coldsnap: cannot untrack 1: it is init (PID 1); name the process whose tracking to close"


def test_json_error_object_and_the_line_on_stderr(tmp_path):
    pid = _gone_pid()
    r = coldsnap("dump", "-t", pid, "-D", tmp_path / "x", "--json")
    assert r.returncode == EXIT_NO_SUCH_PROCESS
    err = json.loads(r.stdout)["error"]
    assert err == {"type": "NoSuchProcess", "message": f"cannot seize {pid}: no such process",
                   "exit_code": EXIT_NO_SUCH_PROCESS, "pid": pid}
    assert _one_line(r) == f"coldsnap: {err['message']}"
    r = coldsnap("dump", "-t", "nope", "-D", tmp_path / "x", "--json")
    assert r.returncode == EXIT_USAGE and "usage:" in r.stderr
    assert json.loads(r.stdout)["error"]["type"] == "UsageError"


def _draining(where) -> bool:
    """A pre-dump's temporary images directory has pages in it."""
    try:
        return any(f.name.startswith("pages-") and f.stat().st_size
                   for d in where.iterdir() if d.name.startswith(".") for f in d.iterdir())
    except FileNotFoundError:       # committed or removed meanwhile
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_after_the_freeze_exits_128_plus_its_number(sig, spawn, workload_bin, tmp_path):
    """Ctrl-C (or SIGTERM) while a live pre-dump drains, the target already running again:
    one line, exit 130 (143), no images left behind."""
    w = spawn([workload_bin("mem_pattern"), 65536, 8], stderr=subprocess.DEVNULL)
    wait_quiet(w.pid)
    p = subprocess.Popen(coldsnap_argv("pre-dump", "-t", w.pid, "-D", tmp_path / "img", "--pre-dump-mode",
                                       "live", "--buffer-size", "4k"), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not _draining(tmp_path) and time.monotonic() < deadline:    # pages written: resumed
        time.sleep(0.001)
    p.send_signal(sig)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 128 + sig and err.strip() == f"coldsnap: interrupted by {sig.name}", err
    assert proc_state(w.pid) == ("S", 0)
    assert list(tmp_path.iterdir()) == []


SECRET = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = libc.syscall(447, 0)                       # memfd_secret
if fd < 0:
    print("none", flush=True)
    sys.exit(0)
os.ftruncate(fd, 65536)
if sys.argv[1] == "map":
    assert libc.mmap(None, 65536, 3, 1, fd, 0) not in (None, ctypes.c_void_p(-1).value)   # MAP_SHARED
    os.close(fd)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("how", ["fd", "map"])
def test_memfd_secret_is_refused_at_the_dump(how, tmp_path):
    """memfd_secret() memory, held open or mapped: the dump saved the fd as a path
    /secretmem that no restore finds (exit 6 then, the target killed by the dump) and failed
    on the mapping with 'No such device or address: /proc/PID/map_files/...'; now refused in
    one line (exit 5), the target running, no images."""
    import sys
    w = subprocess.Popen([sys.executable, "-c", SECRET, how], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        if w.stdout.readline().strip() != "ready":
            pytest.skip("no memfd_secret() on this kernel")
        r = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img")
        assert r.returncode == 5 and "memfd_secret() memory is not supported" in _one_line(r), r.stderr
        assert proc_state(w.pid) == ("S", 0) and not (tmp_path / "img").exists()
    finally:
        w.kill()
        w.wait()
