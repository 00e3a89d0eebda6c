"""`--shell-job` on real pseudo-terminals.

The workload (tests/workloads/shj_echo.c) has the slave of pty A on fds 0, 1 and 2 and
answers each line "echo N: <line>" (a line "err" gets "err N" on fd 2), N counting every
line since it started. The test plays the user at pty A's master.

- `dump` without --shell-job refuses in one line naming the terminal, leaves no images dir
  and leaves the task running, neither stopped nor traced: it goes on counting.
- `dump --shell-job` writes the images and kills the task; we reap it and wait for the PID.
- `restore -d --shell-job` runs with fds 0, 1, 2 on the slave of a NEW pty B (pty A is kept
  open until the end, so B is a different /dev/pts/N and a restore that reopened the old
  path could not pass for a correct one). The restored process's fds 0-2 are pty B's slave,
  the counter carries on from before the dump at B's master, and pty A hears nothing.
- `restore` without --shell-job (even with a terminal at hand) refuses in one line naming
  the old terminal; `--shell-job` with no terminal on coldsnap's fds 0-2 refuses too. No
  process is left either way.

Controlling terminals and SIGHUP. In the plain tests every process runs with
start_new_session=True and nobody does TIOCSCTTY: the workload and coldsnap are session
leaders *without* a controlling terminal. A restored process is a clone of coldsnap (the
restore does not recreate sessions or process groups), so it lives in coldsnap's session;
had coldsnap made pty B its controlling terminal as a session leader, its exit would hang
B up and SIGHUP the foreground group -- coldsnap's own, holding the restored process. With
no controlling terminal anywhere, coldsnap's exit and our closing the masters send no
SIGHUP; the terminal is only a file on fds 0-2, which is what --shell-job re-attaches.

`test_shell_job_under_a_job_control_shell` plays it the way a user meets it: a tiny
"shell" (a session leader owning its pty as controlling terminal) runs the workload, and
later coldsnap, as its foreground job in a process group of its own. The restored process
then belongs to shell B's session with B as controlling terminal, in coldsnap's process
group, which the shell keeps in the foreground after coldsnap exits (a background reader
would be stopped by SIGTTIN); killing shell B hangs B up and SIGHUPs it, as for any job.

The serial-terminal tests: dump counts /dev/ttyS* (major 4) as a terminal and wants
--shell-job for it; restore must recognise it again from the images (it once reopened it by
path instead).
"""
from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from procs import build_workload, proc_state
from procs import coldsnap_argv
from restore_helpers import (assert_one_line_error, coldsnap, exists, kill_and_reap, our_children, reap,
                             state_of, wait_adopted, wait_gone)


# ---------------------------------------------------------------- ptys

class Pty:
    """A pseudo-terminal; the test talks at the master. ECHO is off on the slave so that
    what we type does not come back mixed with the answers (ICANON stays: line reads)."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        attrs = termios.tcgetattr(self.slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        self.pending = b""

    def rdev(self) -> int:
        return os.stat(self.path).st_rdev

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def _fill(self, timeout: float) -> bool:
        r, _, _ = select.select([self.master], [], [], max(timeout, 0))
        if not r:
            return False
        try:
            data = os.read(self.master, 4096)
        except OSError:         # EIO: no slave open anywhere any more
            return False
        self.pending += data
        return bool(data)

    def read_line(self, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            if not self._fill(deadline - time.monotonic()) and time.monotonic() >= deadline:
                raise AssertionError(f"no line from {self.path} within {timeout} s "
                                     f"(got {self.pending!r})")
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode(errors="replace").rstrip("\r")

    def drain(self, quiet: float = 0.2) -> list[str]:
        """Every line that arrives until the terminal stays quiet for `quiet` s."""
        while self._fill(quiet):
            pass
        text, self.pending = self.pending, b""
        return [ln.rstrip("\r") for ln in text.decode(errors="replace").split("\n") if ln.strip()]

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def ask(pty: Pty, line: str) -> str:
    pty.type(line)
    return pty.read_line()


# ---------------------------------------------------------------- processes

def start_echo(pty: Pty) -> subprocess.Popen:
    """The workload with pty's slave on fds 0-2, in a new session without a controlling tty."""
    exe = build_workload("shj_echo")
    proc = subprocess.Popen([str(exe)], stdin=pty.slave, stdout=pty.slave, stderr=pty.slave,
                            start_new_session=True)
    try:
        assert pty.read_line() == "ready"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def fd_paths(pid: int) -> list[str]:
    return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)]


def restore_on(pty: Pty | None, images: Path, *extra: str, timeout: float = 30.0):
    """`coldsnap restore -D images -d EXTRA` with fds 0-2 on pty's slave (or /dev/null and
    files when pty is None). Returns (exit code, output lines)."""
    argv = coldsnap_argv("restore", "-D", images, "-d", *extra)
    if pty is None:
        run = coldsnap(*argv[3:], timeout=timeout)
        return run.returncode, (run.stdout + run.stderr).splitlines()
    proc = subprocess.run(argv, stdin=pty.slave, stdout=pty.slave, stderr=pty.slave,
                          start_new_session=True, timeout=timeout)
    return proc.returncode, pty.drain()


def wait_sleeping(pid: int, timeout: float = 2.0) -> None:
    """The process settles in interruptible sleep (its read of the terminal)."""
    deadline = time.monotonic() + timeout
    while state_of(pid) != "S":
        assert time.monotonic() < deadline, f"{pid} is in state {state_of(pid)!r}, not sleeping"
        time.sleep(0.01)


def stat_fields(pid: int) -> dict[str, int]:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"pgrp": int(f[2]), "session": int(f[3]), "tty_nr": int(f[4]), "tpgid": int(f[5])}


def coldsnap_dump(pid: int, images: Path) -> None:
    coldsnap("dump", "-t", pid, "-D", images, "--shell-job").check()


def dumped_echo(pty: Pty, images: Path, lines=("one", "two"), dump=coldsnap_dump) -> int:
    """Start the workload on pty, have it answer LINES ("err" on fd 2), DUMP(pid, images)
    it with --shell-job (killed), reap: its PID."""
    proc = start_echo(pty)
    try:
        for n, line in enumerate(lines, 1):
            assert ask(pty, line) == (f"err {n}" if line == "err" else f"echo {n}: {line}")
        dump(proc.pid, images)
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    wait_gone(proc.pid)
    return proc.pid


class Terminals:
    """Pty A (the job before its dump) and pty B (after its restore), both open throughout so
    that B is another /dev/pts/N. Leaving `with` kills and reaps the job (pid, once set)
    and closes both."""

    def __init__(self):
        self.a, self.b, self.pid = Pty(), Pty(), None

    def __enter__(self) -> "Terminals":
        return self

    def __exit__(self, *exc) -> None:
        if self.pid is not None:
            kill_and_reap(self.pid)
        self.a.close()
        self.b.close()

    def restore_on_b(self, images: Path, restore=None) -> list[str]:
        """Restore the job with fds 0-2 on B (RESTORE(b), default `coldsnap restore -d
        --shell-job`), back under its PID as our child with B on fds 0-2; coldsnap's output."""
        if restore is None:
            rc, out = restore_on(self.b, images, "--shell-job")
            assert rc == 0, out
        else:
            out = restore(self.b)
        wait_adopted(self.pid)
        assert fd_paths(self.pid) == [self.b.path] * 3, "fds 0-2 are not the restorer's terminal"
        return out


def assert_no_new_process(before: set[int], pid: int) -> None:
    time.sleep(0.1)     # let anything left behind show up
    new = our_children() - before
    for child in new:
        kill_and_reap(child)
    assert not new, f"restore left processes behind: {sorted(new)}"
    assert not exists(pid), f"PID {pid} exists after a refused restore"


# ---------------------------------------------------------------- tests

def test_dump_refuses_a_terminal_without_shell_job(tmp_path):
    a = Pty()
    proc = start_echo(a)
    try:
        assert ask(a, "hello") == "echo 1: hello"
        images = tmp_path / "img"
        run = coldsnap("dump", "-t", proc.pid, "-D", images)
        assert run.returncode == 1, run
        assert_one_line_error(run)
        assert f"terminal {a.path}" in run.stderr and "--shell-job" in run.stderr, run.stderr
        assert not images.exists(), "a refused dump left its images dir"
        assert not [p for p in tmp_path.iterdir()], f"left behind: {list(tmp_path.iterdir())}"
        time.sleep(0.05)
        state, tracer = proc_state(proc.pid)
        assert state in ("S", "R") and tracer == 0, (state, tracer)
        assert proc.poll() is None
        # untouched: still reading its terminal and still counting
        assert ask(a, "again") == "echo 2: again"
        assert ask(a, "err") == "err 3"
    finally:
        proc.kill()
        proc.wait()
        a.close()


def test_shell_job_dump_and_restore_on_a_new_pty(tmp_path):
    def dump(pid: int, images: Path) -> None:
        assert fd_paths(pid) == [t.a.path] * 3
        assert "killed" in coldsnap("dump", "-t", pid, "-D", images, "-j").check().stdout

    with Terminals() as t:
        t.pid = pid = dumped_echo(t.a, tmp_path / "img", ("one", "err", "three"), dump)  # err: fd 2 too
        assert t.a.drain(0.05) == []
        assert t.b.path != t.a.path
        out = t.restore_on_b(tmp_path / "img")
        assert len(out) == 1 and out[0].startswith(f"restored {pid} "), out  # coldsnap's own line, on B
        assert os.stat(f"/proc/{pid}/fd/0").st_rdev == t.b.rdev()

        assert ask(t.b, "four") == "echo 4: four"           # the counter carries on
        assert ask(t.b, "err") == "err 5"
        t.a.type("to the old terminal")                     # nobody reads pty A any more
        assert t.a.drain(0.2) == []
        assert ask(t.b, "six") == "echo 6: six"             # ...and that line was not counted
        assert stat_fields(pid)["tty_nr"] == 0              # coldsnap had no controlling tty
        wait_sleeping(pid)                                  # back in read(), nothing else


def test_restore_without_shell_job_is_refused(tmp_path):
    a, b = Pty(), Pty()
    try:
        pid = dumped_echo(a, tmp_path / "img")
        before = our_children()
        # coldsnap has a terminal at hand (pty B) but was not asked to give it
        rc, out = restore_on(b, tmp_path / "img")
        assert rc == 6, out
        assert len(out) == 1 and out[0].startswith("coldsnap:"), out
        assert f"terminal {a.path}" in out[0] and "--shell-job" in out[0], out
        assert_no_new_process(before, pid)
        # same without a terminal: files and /dev/null on fds 0-2
        rc, out = restore_on(None, tmp_path / "img")
        assert rc == 6 and len(out) == 1 and f"terminal {a.path}" in out[0], out
        assert_no_new_process(before, pid)
    finally:
        a.close()
        b.close()


def test_restore_with_shell_job_but_no_terminal_is_refused(tmp_path):
    a = Pty()
    try:
        pid = dumped_echo(a, tmp_path / "img")
        before = our_children()
        rc, out = restore_on(None, tmp_path / "img", "--shell-job")
        assert rc == 6, out
        assert len(out) == 1 and out[0].startswith("coldsnap:") and "terminal" in out[0], out
        assert_no_new_process(before, pid)
    finally:
        a.close()


# ---------------------------------------------------------------- under a job-control shell

# A minimal job-control shell: session leader (start_new_session) that takes its fd 0 as
# controlling terminal, runs argv as a foreground job in a process group of its own, writes
# "pid P" and "exit RC" to the status fd, and stays (the session leader) until killed. It
# never takes the terminal back, so whatever remains in the job's group stays foreground.
SHELL = r"""
import fcntl, os, signal, subprocess, sys, termios
status = int(sys.argv[1])
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)

def foreground():
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpid())      # in the child too: no window where it reads in background

job = subprocess.Popen(sys.argv[2:], preexec_fn=foreground)
try:
    os.setpgid(job.pid, job.pid)
except OSError:
    pass
os.tcsetpgrp(0, job.pid)
os.write(status, b"pid %d\n" % job.pid)
rc = job.wait()
os.write(status, b"exit %d\n" % rc)
while True:
    signal.pause()
"""


class Shell:
    def __init__(self, pty: Pty, argv: list[str]):
        r, w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-c", SHELL, str(w), *argv], stdin=pty.slave,
                                     stdout=pty.slave, stderr=pty.slave, pass_fds=(w,),
                                     start_new_session=True)
        os.close(w)
        self.status = os.fdopen(r, "rb")

    def report(self, timeout: float = 30.0) -> str:
        r, _, _ = select.select([self.status], [], [], timeout)
        assert r, "the shell reported nothing"
        return self.status.readline().decode().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.status.close()


def test_shell_job_under_a_job_control_shell(tmp_path):
    exe = build_workload("shj_echo")
    a, b = Pty(), Pty()
    shells: list[Shell] = []
    pid = None
    try:
        sh_a = Shell(a, [str(exe)])
        shells.append(sh_a)
        pid = int(sh_a.report().split()[1])
        assert a.read_line() == "ready"
        assert ask(a, "one") == "echo 1: one"
        st = stat_fields(pid)
        assert st["tty_nr"] == a.rdev() and st["tpgid"] == st["pgrp"] == pid   # a foreground job
        coldsnap("dump", "-t", pid, "-D", tmp_path / "img", "--shell-job").check()
        assert sh_a.report(5) == f"exit {-signal.SIGKILL}"                    # the shell reaped it
        wait_gone(pid)

        sh_b = Shell(b, coldsnap_argv("restore", "-D", tmp_path / "img", "-d", "--shell-job"))
        shells.append(sh_b)
        job = int(sh_b.report().split()[1])
        assert sh_b.report() == "exit 0", b.drain()
        assert b.read_line().startswith(f"restored {pid} ")
        wait_adopted(pid)      # coldsnap exited: reparented past shell B to us, the subreaper
        st = stat_fields(pid)
        assert st["session"] == sh_b.proc.pid and st["tty_nr"] == b.rdev(), st
        assert st["pgrp"] == job and st["tpgid"] == job, st                    # still the foreground job
        assert fd_paths(pid) == [b.path] * 3
        assert ask(b, "two") == "echo 2: two"
        assert ask(b, "err") == "err 3"
        wait_sleeping(pid)

        # The shell (session leader) goes: B is hung up and its foreground job gets SIGHUP.
        sh_b.stop()
        status = reap(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGHUP, hex(status)
        wait_gone(pid)
        pid = None
    finally:
        for sh in shells:
            sh.stop()
        if pid is not None:
            kill_and_reap(pid)
        a.close()
        b.close()


# ---------------------------------------------------------------- a terminal that is not a pty

def _serial_tty() -> tuple[str, int]:
    """(path, fd) of an openable /dev/ttyS* (major 4, like /dev/ttyN), or skip."""
    for path in sorted(Path("/dev").glob("ttyS*"), key=lambda p: (len(p.name), p.name)):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        if os.major(os.fstat(fd).st_rdev) == 4:
            return str(path), fd
        os.close(fd)
    pytest.skip("no openable /dev/ttyS* here")


def _dumped_with_serial(tmp_path: Path) -> tuple[int, str, int]:
    """shj_echo with a FIFO on fd 0, /dev/null on 1-2 and a serial tty on a higher fd (so that
    the serial tty is its only terminal), dumped with --shell-job and reaped:
    (pid, serial tty path, its fd number)."""
    serial, sfd = _serial_tty()
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    inp = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    tfd = fcntl.fcntl(sfd, fcntl.F_DUPFD, 10)     # a free number >= 10, inherited
    try:
        proc = subprocess.Popen([str(build_workload("shj_echo"))], stdin=inp, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, pass_fds=(tfd,), start_new_session=True)
    finally:
        for fd in (inp, sfd, tfd):
            os.close(fd)
    try:
        deadline = time.monotonic() + 5
        while fd_count(proc.pid) < 4 or state_of(proc.pid) != "S":   # exec'd and blocked in read
            assert time.monotonic() < deadline, "workload did not start"
            time.sleep(0.01)
        assert os.readlink(f"/proc/{proc.pid}/fd/{tfd}") == serial
        refused = coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "refused")
        assert_one_line_error(refused)          # dump counts it as a terminal...
        assert f"fd {tfd}: terminal {serial}" in refused.stderr, refused.stderr
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", "--shell-job").check()
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    wait_gone(proc.pid)
    return proc.pid, serial, tfd


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def test_restore_refuses_a_serial_terminal_without_shell_job(tmp_path):
    pid, serial, _ = _dumped_with_serial(tmp_path)
    before = our_children()
    try:
        rc, out = restore_on(None, tmp_path / "img")
        assert rc == 6 and len(out) == 1 and f"terminal {serial}" in out[0], \
            f"restore without --shell-job gave {rc}: {out}"
    finally:
        assert_no_new_process(before, pid)


def test_shell_job_replaces_a_serial_terminal_with_coldsnaps(tmp_path):
    pid, serial, tfd = _dumped_with_serial(tmp_path)
    b = Pty()
    try:
        rc, out = restore_on(b, tmp_path / "img", "-j")
        assert rc == 0, out
        wait_adopted(pid)
        assert os.readlink(f"/proc/{pid}/fd/{tfd}") == b.path, f"fd {tfd} was reopened, not given pty B"
    finally:
        kill_and_reap(pid)
        b.close()
