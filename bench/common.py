"""What the benchmark scripts share: sizes, medians, scratch space on tmpfs, building and
reaping targets, the RESULTS.md sections, and what a report says about the machine.

Scripts import it by name (bench/ is on sys.path when a script runs). Nothing here imports
coldsnap at load time, so revisions.py can pick which source tree it measures.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
OUT_DIR = BENCH / "out"
SHM = Path("/dev/shm")
MIB = 1 << 20
GIB = 1 << 30
PR_SET_CHILD_SUBREAPER = 36

libc = ctypes.CDLL(None, use_errno=True)

# Every coldsnap a bench starts runs in its own process, even where a `coldsnap service`
# listens at the default address; small.py's service column names its own service.
os.environ["COLDSNAP_SERVICE"] = ""


# The heart of a probe's child program (its CHILD, after it imported contextlib, io, resource,
# sys, time and coldsnap.cli as cli): `cli.main(ARGV + ["--json"])` under redirect_stdout, its
# output in `out`, wall marks t0/t1 (ns) and CPU marks c0/c1 (s) around it, rc 0 asserted.
CLI_MAIN_MARKED = r"""
def cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
out = io.StringIO()
c0, t0 = cpu(), time.perf_counter_ns()
with contextlib.redirect_stdout(out):
    rc = cli.main(sys.argv[1:] + ["--json"])
t1, c1 = time.perf_counter_ns(), cpu()
assert rc == 0, out.getvalue()
"""


def steal_ms() -> float:
    """Time the host took from every CPU of this VM so far (/proc/stat steal, 10 ms ticks):
    this VM hands freed memory back to its host, and a few seconds after a large free the
    host's work shows as steal, slowing whatever runs then."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) * 1000 / os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- sizes and statistics ------------------------------------------------------------------

def parse_size(text: str) -> int:
    """"256M", "4G", "4GiB", "8k" or a number of bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(t[:-1] if t[-1:] in "KMG" else t) * mult


def size_name(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 and n % (1 << 30) == 0 else f"{n >> 20} MiB"


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs, fmt) -> str:
    """median (min-max)"""
    return f"{fmt(median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})"


# -- files and processes ---------------------------------------------------------------------

@contextlib.contextmanager
def scratch_dir():
    """A fresh directory on tmpfs, removed on exit so 4 GiB images never pile up."""
    d = tempfile.mkdtemp(prefix="coldsnap-bench-", dir=SHM)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def compile_c(src: Path, out: Path) -> Path:
    """Build a C target into bench/out/ when its source is newer than the binary."""
    out.parent.mkdir(exist_ok=True)
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    return out


def run_measured(argv: list[str]) -> tuple[int, int, str]:
    """Run argv; returns (exit code, peak RSS in KiB of that child alone, output)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    finally:
        p.stdout.close()
        if p.returncode is None:     # interrupted: do not leave it running
            p.kill()
            p.wait()
    return p.returncode, ru.ru_maxrss, out


def stop_target(p: subprocess.Popen) -> None:
    """SIGKILL a target started with Popen (if it still runs) and reap it."""
    if p.poll() is None:
        p.kill()
    p.wait()


def unwind_on_signals() -> None:
    """SIGTERM/SIGHUP raise SystemExit, so that the `finally` blocks reap every target."""
    def _raise(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)


def become_subreaper() -> None:
    """Orphans of what we start (a restored process, once `restore -d` exits) become ours."""
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


# bench/restore_target.c: SIZE bytes of private anonymous memory, every byte non-zero; it
# prints "ready ADDR" and then writes MODE MB/s into it (0: idle) or, for "blank", nothing
RESTORE_TARGET_SRC = BENCH / "restore_target.c"
RESTORE_TARGET_BIN = OUT_DIR / "restore_target"
LIVE: set[int] = set()          # pids we started (or restored) and have not reaped yet


def build_restore_target() -> Path:
    return compile_c(RESTORE_TARGET_SRC, RESTORE_TARGET_BIN)


def start_restore_target(size: int, mode: str = "0") -> tuple[int, int]:
    """(pid, address of its memory) of a new bench/restore_target; see LIVE."""
    p = subprocess.Popen([str(RESTORE_TARGET_BIN), str(size), mode], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, text=True)
    LIVE.add(p.pid)
    line = p.stdout.readline()
    p.stdout.close()
    p.returncode = 0            # we reap it ourselves (os.waitpid): keep Popen's hands off
    if not line.startswith("ready "):
        kill_reap(p.pid)
        raise RuntimeError(f"target of {size_name(size)} did not start: {line!r}")
    return p.pid, int(line.split()[1], 16)


def wait_exit(pid: int, timeout: float = 300) -> None:
    """Reap PID (a child of ours) once it exits."""
    import select
    fd = os.pidfd_open(pid)
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    reap(pid)


def export_revision(rev: str) -> tuple[str, Path]:
    """(short sha, its src/ directory): REV's src/ extracted with `git archive` into
    bench/out/rev-SHA/ (once) and byte-compiled, to run beside the working tree's."""
    root = BENCH.parent
    sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = OUT_DIR / f"rev-{sha}"
    if not (dest / "src" / "coldsnap").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(root), "archive", sha, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "src")], check=True)
    return sha, dest / "src"


def reap(pid: int) -> None:
    """waitpid, then wait until /proc/PID is gone (restore reuses the PID). A process that is
    not our child yet may become one (we are a subreaper): one restored -d through a service
    whose worker is still ending (its client ends first)."""
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                break
        time.sleep(0.001)
    LIVE.discard(pid)
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(0.001)


def kill_reap(pid: int) -> None:
    """SIGKILL and reap a process of LIVE (anything else may own that PID by now)."""
    if pid not in LIVE:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    reap(pid)


# -- reports ---------------------------------------------------------------------------------

def write_section(path: Path, section: str, title: str) -> None:
    """Replace the section TITLE of `path` (up to the next level-2 heading), keeping the rest."""
    old = path.read_text() if path.exists() else ""
    lines = old.splitlines()
    try:
        a = next(i for i, line in enumerate(lines) if line.strip() == title)
    except StopIteration:
        head = old if old.strip() else "# Benchmarks\n"
        path.write_text(head.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n")
        return
    b = next((i for i in range(a + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = lines[:a] + section.rstrip("\n").splitlines() + ([""] + lines[b:] if b < len(lines) else [])
    path.write_text("\n".join(new) + "\n")


def run_meta(script: str, argv: list[str] | None, **more) -> dict:
    """What a report says about its run: the command, date, kernel, CPUs, THP, revision."""
    import datetime
    import platform
    import shlex
    return {"cmd": f"python3 bench/{script} " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "uname": platform.release(), "cpus": os.cpu_count(), "thp": thp(), "rev": revision(), **more}


def revision() -> str:
    """HEAD of the tree coldsnap is imported from, and whether its sources differ from it."""
    import coldsnap
    src = Path(coldsnap.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in src/coldsnap" if dirty else "")


def thp() -> str:
    """The transparent huge page mode of this machine."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        return text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        return "?"


# -- coldsnap service ----------------------------------------------------------------------

def install_script(where: Path, src: Path | None = None) -> tuple[Path, dict]:
    """The `coldsnap` command as an install leaves it, in WHERE/bin: bin/coldsnap beside a
    python3 (a link to this interpreter; the script starts it with -S). Its path, and the
    environment that runs it with the coldsnap of SRC (default: the one imported here) in its
    own process (COLDSNAP_SERVICE="": no service)."""
    if src is None:
        import coldsnap
        src = Path(coldsnap.__file__).parent.parent
    (where / "bin").mkdir(parents=True)
    (where / "bin" / "python3").symlink_to(sys.executable)
    script = where / "bin" / "coldsnap"
    shutil.copy(Path(__file__).parents[1] / "bin" / "coldsnap", script)
    return script, {**os.environ, "COLDSNAP_SERVICE": "",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}


class Service:
    """`coldsnap service` on a temporary address for the run, and the `coldsnap` command as
    an install leaves it (bin/coldsnap beside a python3: what a user runs), in WHERE: run
    SCRIPT with ENV to go through it."""

    def __init__(self, where: Path, src: Path | None = None, command=None) -> None:
        """SRC: the sources of coldsnap to run (default: those imported here); COMMAND(address):
        the service's command line (default: `python3 -m coldsnap service --address ADDRESS`)."""
        self.address = where / "service.sock"
        self.script, env = install_script(where, src)
        self.env = {**env, "COLDSNAP_SERVICE": str(self.address)}
        argv = (command or (lambda a: [sys.executable, "-m", "coldsnap", "service", "--address", str(a)]))(self.address)
        log_file = where / "service.log"
        with open(log_file, "w") as f:      # a file: its log is a line per command
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         env={**self.env, "COLDSNAP_SERVICE": ""})
        deadline = time.monotonic() + 60
        while "listening" not in log_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"coldsnap service did not start: {log_file.read_text().strip()}")
            time.sleep(0.02)

    def run(self, argv: list[str]) -> tuple[int, int, int, str]:
        """(exit code, exec ns, exit ns on CLOCK_MONOTONIC, output) of the script with ARGV."""
        with tempfile.TemporaryFile("w+") as out:
            t0 = time.monotonic_ns()
            p = subprocess.Popen([str(self.script), *argv], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env=self.env)
            _, status, _ = os.wait4(p.pid, 0)
            t1 = time.monotonic_ns()
            out.seek(0)
            return os.waitstatus_to_exitcode(status), t0, t1, out.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait()
