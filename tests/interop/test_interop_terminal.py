"""A shell job across the tools: a process whose stdio is the slave of pty A is dumped with
--shell-job by one tool and restored with --shell-job on pty B by the other; the restorer
puts its own terminal there (coldsnap reads CRIU's TTY entry as the job's terminal, CRIU
inherits its stdin for coldsnap's TTY entry and sets the saved termios on it), and the
counter carries on at B."""
from __future__ import annotations

import subprocess

from criu_peer import criu_dump, criu_path, need_criu
from test_shell_job import Pty, Terminals, ask, dumped_echo, wait_sleeping


def test_coldsnap_restores_a_criu_shell_job_on_a_new_terminal(tmp_path):
    need_criu()
    with Terminals() as t:
        t.pid = dumped_echo(t.a, tmp_path / "img", ("one", "err"),
                            lambda pid, images: criu_dump(pid, images, "--shell-job"))
        t.restore_on_b(tmp_path / "img")
        assert ask(t.b, "three") == "echo 3: three"        # the counter carries on
        assert ask(t.b, "err") == "err 4"                   # fd 2 too
        t.a.type("to the old terminal")
        assert t.a.drain(0.2) == []
        wait_sleeping(t.pid)


def test_criu_tty_entries_read_as_the_jobs_terminal():
    """A TTY entry names its path through regf_id; a pty slave is a terminal to re-attach,
    anything else (a pty master here) is refused in one line."""
    import pytest
    from coldsnap.errors import ImageError
    from coldsnap.files.kinds import OPS
    from coldsnap.files.model import FdType
    from coldsnap.images.pb import fdinfo_pb2, fown_pb2, regfile_pb2, tty_pb2
    fown = fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0)
    regs = {5: regfile_pb2.reg_file_entry(id=5, flags=2, pos=0, fown=fown, name="/dev/pts/3", mode=0o20620),
            6: regfile_pb2.reg_file_entry(id=6, flags=2, pos=0, fown=fown, name="/dev/ptmx", mode=0o20666)}
    e = fdinfo_pb2.file_entry(type=fdinfo_pb2.TTY, id=4, tty=tty_pb2.tty_file_entry(
        id=4, tty_info_id=0, flags=2, fown=fown, regf_id=5))
    f = OPS[FdType.TTY].from_image(e, regs)
    assert (f.id, f.path, f.flags, f.terminal) == (4, "/dev/pts/3", 2, True)
    e.tty.regf_id = 6
    with pytest.raises(ImageError, match="/dev/ptmx"):
        OPS[FdType.TTY].from_image(e, regs)


def test_criu_restores_a_coldsnap_shell_job_on_a_new_terminal(tmp_path):
    need_criu()

    def criu_restore(b: Pty) -> list[str]:
        run = subprocess.run([str(criu_path()), "restore", "-D", str(tmp_path / "img"), "-d", "--shell-job",
                              "-o", "restore.log"], stdin=b.slave, stdout=b.slave, stderr=subprocess.PIPE,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return []

    with Terminals() as t:
        t.pid = dumped_echo(t.a, tmp_path / "img", ("one",))
        t.restore_on_b(tmp_path / "img", criu_restore)
        assert ask(t.b, "two") == "echo 2: two"
        assert ask(t.b, "err") == "err 3"
        wait_sleeping(t.pid)
