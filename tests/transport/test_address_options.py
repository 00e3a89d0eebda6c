"""Bad HOST:PORT values and numbers given to migrate and to the --page-server options are
usage errors (exit 2, argparse's usage line and message), found before any process is
touched; a migrate of a process that does not exist is exit 3 without claiming it "runs
on here"."""
from __future__ import annotations

import pytest

from procs import coldsnap


@pytest.mark.parametrize("argv", [
    ["migrate", "-t", "{pid}", "--to", "nothing"],
    ["migrate", "-t", "{pid}", "--to", "127.0.0.1:65536"],
    ["migrate", "-t", "{pid}", "--to", ":80"],
    ["migrate", "-t", "{pid}", "--to", "127.0.0.1:0"],
    ["migrate", "-t", "0", "--to", "127.0.0.1:1"],
    ["migrate", "-t", "{pid}", "--to", "127.0.0.1:1", "--max-downtime", "-1"],
    ["migrate", "-t", "{pid}", "--to", "127.0.0.1:1", "--max-downtime", "nan"],
    ["migrate", "-t", "{pid}", "--to", "127.0.0.1:1", "--max-iterations", "0"],
    ["migrate", "-t", "{pid}", "--to", "127.0.0.1:1", "--timeout", "0"],
    ["dump", "-t", "{pid}", "-D", "{tmp}/d", "--page-server", "bad"],
    ["pre-dump", "-t", "{pid}", "-D", "{tmp}/d", "--page-server", "host:port"],
    ["restore", "-D", "{tmp}/d", "--page-server", "127.0.0.1"],
    ["restore", "-D", "{tmp}/d", "--page-server", "127.0.0.1:1", "--page-session", ""],
    ["restore", "-D", "{tmp}/d", "--page-server", "127.0.0.1:1", "--page-session", "../x"],
])
def test_bad_values_are_usage_errors(argv, tmp_path, spawn, workload_bin):
    target = spawn([workload_bin("mem_pattern"), 64, 8])
    run = coldsnap(*[a.format(pid=target.pid, tmp=tmp_path) for a in argv])
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert "usage:" in run.stderr and "error: argument" in run.stderr, run.stderr
    assert not (tmp_path / "d").exists()


def test_migrate_of_no_process_is_exit_3():
    run = coldsnap("migrate", "-t", "99999999", "--to", "127.0.0.1:1")
    assert run.returncode == 3, run.stderr
    assert run.stderr.strip().splitlines() == ["coldsnap: process 99999999: no such process"], run.stderr


def test_migrate_receive_into_a_file_is_one_line(tmp_path):
    """-D naming a file: it was "coldsnap: File exists: PATH", exit 1."""
    (tmp_path / "file").write_bytes(b"")
    for d, words in ((tmp_path / "file", "exists and is not a directory"),
                     (tmp_path / "file" / "x", "cannot create the images directory: Not a directory")):
        run = coldsnap("migrate-receive", "--port", "0", "-D", d, timeout=30)
        assert (run.returncode, run.stderr) == (6, f"coldsnap: {d}: {words}\n")


def test_migrate_keeps_the_exit_code_of_what_stopped_it(tmp_path):
    """A process traced by someone else: the migration fails before anything moves and the
    source runs on, as said; the exit code is the seize's (4, access denied), not 1."""
    import ctypes
    import os
    import subprocess
    import sys
    from procs import coldsnap_argv, end_child
    libc = ctypes.CDLL(None, use_errno=True)
    traced = subprocess.Popen(["sleep", "1000"], preexec_fn=lambda: libc.ptrace(0, 0, 0, 0))   # PTRACE_TRACEME
    receiver = subprocess.Popen(coldsnap_argv("migrate-receive", "--port", "0"), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = receiver.stdout.readline().rsplit(":", 1)[1].strip()
        run = coldsnap("migrate", "-t", traced.pid, "--to", f"127.0.0.1:{port}", timeout=60)
        assert run.returncode == 4, run.stderr
        assert run.stderr == (f"coldsnap: migration of {traced.pid} to 127.0.0.1:{port} failed, {traced.pid} runs "
                              f"on here: cannot seize {traced.pid}: already traced by {os.getpid()}\n"), run.stderr
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
        end_child(traced.pid)
