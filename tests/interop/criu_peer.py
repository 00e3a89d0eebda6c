"""The stock CRIU 4.2 beside the project (shared/peers/criu-4.2), as the other side of the
interoperability tests: CRIU restores what coldsnap dumped, coldsnap restores what CRIU
dumped. Nothing of it goes into coldsnap.

A test that needs it calls need_criu(), which skips with the reason when the binary is
missing or cannot run here (libraries missing: scripts/setup installs them; not root;
`criu check` failing on this kernel): such a test never passes without CRIU.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "restore"))

CRIU_VERSION = "4.2"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_CRIU = REPO.parent / "shared" / "peers" / f"criu-{CRIU_VERSION}" / "criu"


def criu_path() -> Path:
    """$COLDSNAP_CRIU, or the peer build in shared/ beside the repository."""
    return Path(os.environ.get("COLDSNAP_CRIU", DEFAULT_CRIU))


@functools.cache
def criu_unusable() -> str | None:
    """Why CRIU cannot be the other side here, or None when it can."""
    path = criu_path()
    if not path.exists():
        return f"no CRIU binary at {path}"
    if os.geteuid() != 0:
        return "CRIU needs root"
    try:
        ver = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"{path} cannot run: {e.strerror}"
    if ver.returncode != 0:
        return f"{path} --version failed: {(ver.stderr or ver.stdout).strip()[:200]}"
    if f"Version: {CRIU_VERSION}" not in ver.stdout:
        return f"{path} is not CRIU {CRIU_VERSION}: {ver.stdout.strip()[:100]}"
    check = subprocess.run([path, "check"], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        return f"`criu check` fails on this machine: {(check.stderr or check.stdout).strip()[-200:]}"
    return None


def need_criu() -> None:
    why = criu_unusable()
    if why:
        pytest.skip(f"CRIU {CRIU_VERSION} unavailable: {why}")


def _log_errors(log: Path, n: int = 12) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if "Error" in ln or "BUG" in ln]
    return "\n".join((errors or lines)[-n:])


def criu(*args, images: Path, log: str, timeout: float = 120.0) -> None:
    """`criu ARGS -D IMAGES -o LOG -v4`, asserting success (the log's errors otherwise).
    The log lands in the images directory (CRIU's work directory)."""
    argv = [str(criu_path()), *map(str, args), "-D", str(images), "-o", log, "-v4"]
    run = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, (f"criu {' '.join(map(str, args))} exited {run.returncode}\n"
                                 f"{run.stderr.strip()}\n{_log_errors(images / log)}")


def criu_dump(pid: int, images: Path, *extra) -> None:
    images.mkdir(parents=True, exist_ok=True)
    criu("dump", "-t", pid, *extra, images=images, log="dump.log")


def criu_restore(images: Path, *extra) -> int:
    """Restore detached (the restored root is re-parented to the test, a subreaper);
    returns the root's pid from CRIU's pidfile."""
    pidfile = images / "restored.pid"
    criu("restore", "-d", "--pidfile", pidfile, *extra, images=images, log="restore.log")
    return int(pidfile.read_text())


# -- both ways ------------------------------------------------------------------------------

DIRECTIONS = ("coldsnap-to-criu", "criu-to-coldsnap")     # which tool dumps, which restores


def dump_with(direction: str, pid: int, images: Path, coldsnap_args=(), criu_args=()) -> None:
    """The dumping tool of DIRECTION on PID into IMAGES (the target is killed)."""
    from procs import coldsnap
    if direction == "coldsnap-to-criu":
        coldsnap("dump", "-t", pid, "-D", images, *coldsnap_args).check()
    else:
        criu_dump(pid, images, *criu_args)


def restore_with(direction: str, images: Path, criu_args=()) -> int | None:
    """The restoring tool of DIRECTION, detached: CRIU's restored root pid, None for coldsnap."""
    from procs import coldsnap
    if direction == "coldsnap-to-criu":
        return criu_restore(images, *criu_args)
    coldsnap("restore", "-D", images, "-d").check()
    return None
