"""Progress on a terminal, nothing extra on a pipe: a pre-dump, a dump and a restore run with
stderr on a pseudo-terminal, then again with pipes."""
import os
import pty
import subprocess
import time

from predump_helpers import wait_quiet
from procs import coldsnap, coldsnap_argv

from coldsnap import progress


def _on_a_terminal(*args) -> tuple[int, str, str]:
    """Run coldsnap with stderr on a pty (stdout a pipe): (exit code, stdout, what the pty got)."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLDSNAP_PROGRESS_AFTER": "0", "COLUMNS": "100", "TERM": "xterm"}
    p = subprocess.Popen(coldsnap_argv(*args), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:              # EIO: every writer closed the pty
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    out = p.stdout.read().decode()
    return p.wait(timeout=60), out, seen.decode(errors="replace")


def test_progress_on_a_terminal_and_nothing_on_a_pipe(spawn, workload_bin, tmp_path):
    w = spawn([workload_bin("mem_pattern"), 16384, 8], stderr=subprocess.DEVNULL)
    wait_quiet(w.pid)
    rc, out, tty = _on_a_terminal("pre-dump", "-t", w.pid, "-D", tmp_path / "t1", "--pre-dump-mode", "live",
                                  "--buffer-size", "64k")
    assert rc == 0, tty
    assert "reading pages" in tty and "MB" in tty and "\x1b[" in tty      # a bar, drawn with escapes
    assert out.startswith(f"pre-dump of {w.pid} (live): ")
    piped = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "p1", "--pre-dump-mode", "live",
                     "--buffer-size", "64k", check=True)
    assert piped.stderr == "" and piped.stdout.startswith(f"pre-dump of {w.pid} (live): ")
    assert piped.stdout.count("\n") == out.count("\n") == 1

    rc, out, tty = _on_a_terminal("dump", "-t", w.pid, "-D", tmp_path / "t2", "--leave-running")
    assert rc == 0 and "copying pages" in tty, tty
    assert out.startswith(f"dump of {w.pid} ") and out.count("\n") == 1
    w.stop()
    time.sleep(0.1)
    rc, out, tty = _on_a_terminal("restore", "-D", tmp_path / "t2", "-d", "--json")
    try:
        assert rc == 0 and "writing pages" in tty, tty
    finally:
        subprocess.run(["kill", "-9", str(w.pid)], stderr=subprocess.DEVNULL)


def test_the_hook_is_off_unless_the_cli_installs_it():
    assert progress.reporter is None
    from coldsnap import terminal
    shown = terminal.install()
    assert progress.reporter is shown
    shown.close()
    assert progress.reporter is None
