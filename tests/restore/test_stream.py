"""`dump --stream` | `restore --stream`: real processes through a real pipe between two coldsnap
commands, a parent chain carried in the stream, and restores from truncated, corrupt or
hostile streams that must fail in one line (exit 6) leaving no process and no spool behind.

Every coldsnap here runs with TMPDIR set to a directory of the test, so that "no spool left"
is checked without looking at other tests' files.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from coldsnap.images.stream import read_stream

from procs import Run, build_workload, coldsnap_argv, stopped_after_syscall
from restore_helpers import LogWorkload, alive, assert_one_line_error, start_workload, wait_gone

EXIT_BAD_IMAGE = 6


def _env(tmp: Path) -> dict:
    spool = tmp / "spool"
    spool.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(spool)}


def spools_left(tmp: Path) -> list[str]:
    return os.listdir(tmp / "spool")


def run_with(tmp: Path, *args, stdin=subprocess.DEVNULL, stdout=None, timeout: float = 60) -> Run:
    """coldsnap ARGS with the given stdin (a file, bytes) and stdout; stderr captured."""
    argv = coldsnap_argv(*args)
    data = stdin if isinstance(stdin, bytes) else None
    proc = subprocess.run(argv, input=data, stdin=None if data is not None else stdin,
                          stdout=stdout if stdout is not None else subprocess.PIPE,
                          stderr=subprocess.PIPE, env=_env(tmp), timeout=timeout)
    out = proc.stdout.decode(errors="replace") if proc.stdout is not None else ""
    return Run(argv, proc.returncode, out, proc.stderr.decode(errors="replace"))


def pipe_dump_to_restore(w: LogWorkload, tmp: Path, *dump_args) -> tuple[Run, Run]:
    """coldsnap dump --stream | coldsnap restore --stream -d, through one OS pipe. The restore
    starts once the dumped original is reaped (its PID must be free again): the dump kills
    it before writing the stream, which then waits in the pipe."""
    env = _env(tmp)
    dump = subprocess.Popen(coldsnap_argv("dump", "-t", w.pid, "--stream", *dump_args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        w.reap_dumped(timeout=30)
        restore = subprocess.run(coldsnap_argv("restore", "--stream", "-d"), stdin=dump.stdout,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=60)
        dump.stdout.close()
        dump_err = dump.stderr.read().decode()
        dump.wait(timeout=30)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    return (Run(dump.args, dump.returncode, "", dump_err),
            Run(restore.args, restore.returncode, restore.stdout.decode(), restore.stderr.decode()))


def test_dump_stream_through_a_pipe_restores(workload_bin, python_exe, tmp_path):
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        d, r = pipe_dump_to_restore(w, tmp_path)
        d.check()
        r.check()
        assert "streamed 1 images directory" in d.stderr
        w.adopt_restored()
        w.wait_ticks(5)
        w.assert_healthy()
        assert spools_left(tmp_path) == []


def test_dump_stream_carries_the_parent_chain(workload_bin, python_exe, tmp_path):
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        run_with(tmp_path, "pre-dump", "-t", w.pid, "-D", tmp_path / "1", "--track-mem", "uffd").check()
        w.wait_ticks(2)
        d, r = pipe_dump_to_restore(w, tmp_path, "--prev-images-dir", tmp_path / "1", "--json")
        d.check()
        r.check()
        result = json.loads(d.stderr.strip().splitlines()[-1])
        assert result["stream"]["levels"] == 2 and result["images_dir"] is None
        assert result["stats"]["pages_skipped_parent"] > 0
        w.adopt_restored()
        w.wait_ticks(5)
        w.assert_healthy()
        assert spools_left(tmp_path) == []


def test_pre_dump_stream_is_a_pre_dump(workload_bin, python_exe, tmp_path):
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        with open(tmp_path / "s", "wb") as out:
            r = run_with(tmp_path, "pre-dump", "-t", w.pid, "--stream", stdout=out)
        r.check()
        assert "pre-dump of" in r.stderr and "streamed" in r.stderr
        assert alive(w.pid)
        fd = os.open(tmp_path / "s", os.O_RDONLY)
        try:
            (tmp_path / "got").mkdir()
            top, counts = read_stream(fd, tmp_path / "got")
        finally:
            os.close(fd)
        assert (top / f"pagemap-{w.pid}.img").exists() and counts.levels == 1
        assert not any(Path(f"/proc/{w.pid}/fd/{n}").exists() for n in range(900, 901)), \
            "a streamed pre-dump must park no write tracking"
        w.wait_ticks(2)
        w.assert_healthy()
        assert spools_left(tmp_path) == []


def test_stream_refusals(tmp_path):
    r = run_with(tmp_path, "dump", "-t", os.getpid(), "--stream", "-D", tmp_path / "x")
    assert r.returncode == 2 and "one of -D" in r.stderr
    r = run_with(tmp_path, "restore")
    assert r.returncode == 2 and "one of -D" in r.stderr
    r = run_with(tmp_path, "pre-dump", "-t", os.getpid(), "--stream", "--track-mem", "uffd")
    assert r.returncode == 2 and "stranded" in r.stderr
    r = run_with(tmp_path, "dump", "-t", os.getpid(), "--stream", "--page-server", "127.0.0.1:1")
    assert r.returncode == 2
    master, slave = os.openpty()
    try:
        r = run_with(tmp_path, "dump", "-t", os.getpid(), "--stream", stdout=slave)
        assert r.returncode == 2 and "terminal" in r.stderr
        r = run_with(tmp_path, "restore", "--stream", stdin=slave)
        assert r.returncode == 2 and "terminal" in r.stderr
    finally:
        os.close(master)
        os.close(slave)


# -- hostile streams ---------------------------------------------------------------------------

class StreamBuilder:
    """Streams written by hand after the documented format (images/stream.py)."""

    def __init__(self) -> None:
        self.data = bytearray(struct.pack("<8sH", b"CSSTREAM", 1))
        self.entries = self.nbytes = 0
        self.levels = 0

    def crc(self) -> None:
        self.data += struct.pack("<I", zlib.crc32(self.data))

    def file(self, name: bytes, body: bytes, level: int = 0, size: int | None = None) -> "StreamBuilder":
        self.data += struct.pack("<BHHQ", 1, level, len(name), len(body) if size is None else size) + name + body
        self.crc()
        self.entries += 1
        self.nbytes += len(body)
        self.levels = max(self.levels, level + 1)
        return self

    def end(self) -> bytes:
        self.data += struct.pack("<BHIQ", 2, self.levels, self.entries, self.nbytes)
        self.crc()
        return bytes(self.data)


@pytest.fixture(scope="module")
def real_stream(tmp_path_factory) -> bytes:
    """A whole valid stream of a small dump (its process is gone since)."""
    tmp = tmp_path_factory.mktemp("stream")
    with start_workload("rst_memory", build_workload, sys.executable, tmp) as w:
        with open(tmp / "s", "wb") as out:
            run_with(tmp, "dump", "-t", w.pid, "--stream", stdout=out).check()
        w.reap_dumped()
    return (tmp / "s").read_bytes()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


HOSTILE = {
    "empty": lambda s: b"",
    "bad magic": lambda s: b"NOTASTRM" + s[8:],
    "truncated in the header": lambda s: s[:5],
    "truncated in an entry": lambda s: s[:len(s) // 2],
    "missing end": lambda s: s[:s.rfind(b"\x02\x01\x00")],
    "corrupt data": lambda s: _flip(s, len(s) // 2),
    "corrupt end": lambda s: _flip(s, len(s) - 2),
    "trailing data": lambda s: s + b"x",
    "path in a name": lambda s: StreamBuilder().file(b"inventory.img", b"").file(b"../escape", b"x").end(),
    "absolute name": lambda s: StreamBuilder().file(b"/etc/passwd", b"x").end(),
    "parent link": lambda s: StreamBuilder().file(b"parent", b"/").end(),
    "dot dot": lambda s: StreamBuilder().file(b"..", b"").end(),
    "huge length": lambda s: StreamBuilder().file(b"pages-1.img", b"", size=1 << 62).end(),
    "level out of order": lambda s: StreamBuilder().file(b"a.img", b"", level=3).end(),
    "name twice": lambda s: StreamBuilder().file(b"a.img", b"1").file(b"a.img", b"2").end(),
    "no images": lambda s: StreamBuilder().end(),
    "not images": lambda s: StreamBuilder().file(b"a.img", b"hello").end(),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_restore_from_a_bad_stream_fails_cleanly(case, real_stream, tmp_path):
    before = set(os.listdir("/proc"))
    r = run_with(tmp_path, "restore", "--stream", "-d", stdin=HOSTILE[case](real_stream))
    assert_one_line_error(r)
    assert r.returncode == EXIT_BAD_IMAGE, r.stderr
    assert spools_left(tmp_path) == []
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "escape").exists()
    new = {int(p) for p in set(os.listdir("/proc")) - before if p.isdigit()}
    assert not [p for p in new if alive(p) and os.getpid() in _ancestors(p)]


def _ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            break
        out.append(pid)
    return out


def test_the_valid_stream_restores(real_stream, tmp_path):
    """The hostile cases above fail for what they change, not for their base: it restores."""
    r = run_with(tmp_path, "restore", "--stream", "-d", "--json", stdin=real_stream)
    r.check()
    import json
    pid = json.loads(r.stdout)["pid"]
    try:
        assert alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        for _ in range(500):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
            time.sleep(0.01)
        wait_gone(pid)
    assert spools_left(tmp_path) == []


# -- the two ends dying ------------------------------------------------------------------------

def test_target_dying_mid_stream_changes_nothing(workload_bin, python_exe, tmp_path):
    """--leave-running: the stream comes from the committed spool, not from the target; the
    target killed while the stream is read still restores whole."""
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        dump = subprocess.Popen(coldsnap_argv("dump", "-t", w.pid, "--stream", "--leave-running"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))
        head = dump.stdout.read(4096)           # the stream has begun
        w.stop()                                # the target dies mid-stream
        rest = dump.stdout.read()
        err = dump.stderr.read().decode()
        assert dump.wait(timeout=30) == 0, err
        r = run_with(tmp_path, "restore", "--stream", "-d", stdin=head + rest)
        r.check()
        w.adopt_restored()
        w.wait_ticks(3)
        assert not w.failures()
        assert spools_left(tmp_path) == []


def test_reader_dying_mid_stream_keeps_the_images(workload_bin, python_exe, tmp_path):
    """The target is gone once the dump committed: if the stream breaks, its spool is all
    that is left of it, kept and named in the one-line error; it restores with -D."""
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        dump = subprocess.Popen(coldsnap_argv("dump", "-t", w.pid, "--stream"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))
        dump.stdout.read(4096)
        dump.stdout.close()                     # the reader goes away
        err = dump.stderr.read().decode()
        assert dump.wait(timeout=30) == EXIT_BAD_IMAGE, err
        assert len(err.strip().splitlines()) == 1 and "the images are kept in" in err, err
        kept = Path(err.strip().rsplit(" ", 1)[1])
        assert kept.is_dir()
        w.reap_dumped()
        run_with(tmp_path, "restore", "-D", kept, "-d").check()
        w.adopt_restored()
        w.wait_ticks(3)
        assert not w.failures()


def test_a_dump_that_fails_streams_nothing_and_the_restore_says_so(tmp_path):
    """The target gone before the dump could take it: the dump fails (exit 3) with nothing on
    its stdout, and the restore at the pipe's other end fails in one line (exit 6)."""
    p = subprocess.Popen(["true"])
    p.wait()
    env = _env(tmp_path)
    dump = subprocess.Popen(coldsnap_argv("dump", "-t", p.pid, "--stream"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    restore = subprocess.run(coldsnap_argv("restore", "--stream", "-d"), stdin=dump.stdout,
                             capture_output=True, env=env, timeout=60)
    dump.stdout.close()
    dump_err = dump.stderr.read().decode()
    assert dump.wait(timeout=30) == 3 and len(dump_err.strip().splitlines()) == 1, dump_err
    r = Run(restore.args, restore.returncode, restore.stdout.decode(), restore.stderr.decode())
    assert_one_line_error(r)
    assert r.returncode == EXIT_BAD_IMAGE and "truncated after 0 bytes" in r.stderr
    assert spools_left(tmp_path) == []


def test_restore_stream_without_detach_removes_its_spool_while_the_process_runs(real_stream, tmp_path):
    """Without -d the restore waits for the process and passes its status on; its spool is
    gone as soon as the process runs, not when it ends."""
    restore = subprocess.Popen(coldsnap_argv("restore", "--stream"), stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(tmp_path))
    restore.stdin.write(real_stream)
    restore.stdin.close()
    pid = None
    try:
        deadline = time.monotonic() + 30
        while pid is None or spools_left(tmp_path):     # the spool goes once the process runs
            kids = Path(f"/proc/{restore.pid}/task/{restore.pid}/children").read_text().split()
            pid = next((int(k) for k in kids if alive(int(k))), None)
            assert time.monotonic() < deadline and restore.poll() is None, restore.stderr.read()
            time.sleep(0.02)
        time.sleep(0.2)
        assert restore.poll() is None and alive(pid), "the restore ended with its process running"
        os.kill(pid, signal.SIGKILL)
        assert restore.wait(timeout=30) == 128 + signal.SIGKILL
    finally:
        if restore.poll() is None:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            restore.kill()
            restore.wait()


def test_a_dump_interrupted_mid_stream_keeps_the_images(workload_bin, python_exe, tmp_path):
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        dump = subprocess.Popen(coldsnap_argv("dump", "-t", w.pid, "--stream"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))
        dump.stdout.read(4096)                  # streaming: the target is gone already
        dump.send_signal(signal.SIGTERM)
        err = dump.stderr.read().decode()
        assert dump.wait(timeout=30) == 128 + signal.SIGTERM, err
        dump.stdout.close()
        assert len(err.strip().splitlines()) == 1 and "interrupted by SIGTERM; the images are kept in" in err
        assert Path(err.strip().rsplit(" ", 1)[1]).is_dir()
        w.reap_dumped()


def test_a_stream_filling_the_spool_fails_cleanly(tmp_path):
    """Entries each smaller than the free space, together larger: the spool's filesystem (a
    1 MiB tmpfs of a private mount namespace here) would run full; the entry that does not fit
    any more is refused (or, were the space taken meanwhile, its write fails): one line, exit 6."""
    stream = (StreamBuilder().file(b"inventory.img", b"")
              .file(b"pages-1.img", b"x" * (600 << 10)).file(b"pages-2.img", b"y" * (600 << 10)).end())
    (tmp_path / "s").write_bytes(stream)
    spool = tmp_path / "small"
    spool.mkdir()
    script = (f"mount -t tmpfs -o size=1m none {spool} && TMPDIR={spool} "
              f"{' '.join(coldsnap_argv('restore', '--stream', '-d'))} < {tmp_path / 's'}; "
              f"rc=$?; ls -A {spool}; exit $rc")
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60)
    r = Run(p.args, p.returncode, p.stdout, p.stderr)
    assert_one_line_error(r)
    assert r.returncode == EXIT_BAD_IMAGE and "entry pages-2.img" in r.stderr, r.stderr
    assert r.stdout == "", f"left in the spool: {r.stdout}"


def test_restore_interrupted_mid_stream_removes_its_spool(real_stream, tmp_path):
    restore = subprocess.Popen(coldsnap_argv("restore", "--stream", "-d"), stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(tmp_path))
    try:
        restore.stdin.write(real_stream[:len(real_stream) // 2])
        restore.stdin.flush()
        deadline = time.monotonic() + 30
        while not spools_left(tmp_path):
            assert time.monotonic() < deadline and restore.poll() is None
            time.sleep(0.02)
        time.sleep(0.3)                          # reading, waiting for the rest
        restore.send_signal(signal.SIGTERM)
        assert restore.wait(timeout=30) == 128 + signal.SIGTERM
        err = restore.stderr.read().decode()
        assert err.strip() == "coldsnap: interrupted by SIGTERM", err
        assert spools_left(tmp_path) == []
    finally:
        restore.stdin.close()
        if restore.poll() is None:
            restore.kill()
            restore.wait()


SYS_MKDIR, SYS_MKDIRAT = 83, 258


def _signal_at_its_first_mkdir(argv: list[str], sig: int, **popen) -> subprocess.Popen:
    """ARGV signalled SIG right after its first mkdir (its Python handler runs at once: between
    a mkdtemp and what is to remove it)."""
    return stopped_after_syscall(argv, (SYS_MKDIR, SYS_MKDIRAT), lambda p: os.kill(p.pid, sig), **popen)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_restore_stream_signalled_right_after_making_its_spool_removes_it(sig, tmp_path):
    restore = _signal_at_its_first_mkdir(coldsnap_argv("restore", "--stream", "-d"), sig, stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(tmp_path))
    _, err = restore.communicate(timeout=60)
    assert restore.returncode == 128 + sig, err
    assert err.decode().strip() == f"coldsnap: interrupted by {sig.name}", err
    assert spools_left(tmp_path) == []


def test_dump_stream_signalled_right_after_making_its_spool_removes_it(tmp_path):
    target = subprocess.Popen(["sleep", "60"])
    try:
        dump = _signal_at_its_first_mkdir(coldsnap_argv("dump", "-t", target.pid, "--stream", "--leave-running"),
                                          signal.SIGTERM, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          env=_env(tmp_path))
        out, err = dump.communicate(timeout=60)
        assert dump.returncode == 128 + signal.SIGTERM and out == b"", err
        assert err.decode().strip() == "coldsnap: interrupted by SIGTERM", err
        assert spools_left(tmp_path) == []
        assert alive(target.pid)
    finally:
        target.kill()
        target.wait()
