"""`coldsnap restore`: validate the images, make a blank child with the dumped PID, transplant.

    restore(images_dir, detach=True) -> RestoreResult

The blank child is a clone3 of coldsnap with set_tid = the dumped PID. In plain Python it
rebuilds the fd table, cwd, root and umask (restore/fdtable.py), asks to die with coldsnap
until the restore is over (PR_SET_PDEATHSIG, cleared at the end) and waits. coldsnap sets
its rlimits from outside, seizes it and reshapes it (restore/transplant.py). Any failure
after the child exists kills it: a restore either yields the process or nothing.
"""
from __future__ import annotations

import errno
import fcntl
import os
import pickle
import resource
import signal
import time
from dataclasses import dataclass

from ..errors import AccessDenied, CsError, ImageError, TargetError
from ..images.task import TASK_STOPPED
from ..kernel.clone import fork_with_pid
from ..kernel.libc import libc
from ..seize.freezer import freeze
from .fdtable import rebuild_fds
from .images import DumpImages, load
from .transplant import TransplantStats, default_signal_actions, transplant

PR_SET_PDEATHSIG = 1


@dataclass
class RestoreResult:
    """The restored process and how long its restore took."""
    pid: int
    threads: int
    stats: TransplantStats
    blank_ns: int           # clone + fd table in the child
    total_ns: int
    exit_status: int | None = None   # set when not detached: the waitpid status


def restore(images_dir: str | os.PathLike, *, detach: bool = True, shell_job: bool = False) -> RestoreResult:
    t0 = time.perf_counter_ns()
    images = load(images_dir, shell_job=shell_job)
    pid = _blank_child(images, shell_job)
    t_blank = time.perf_counter_ns()
    try:
        _set_rlimits(pid, images)
        with freeze(pid) as task:
            try:
                stats = transplant(task, images)
                tc = images.leader.tc
                if tc.task_state == TASK_STOPPED:
                    # queued while held: the group-stop begins before any instruction runs
                    os.kill(pid, tc.stop_signo or signal.SIGSTOP)
            except BaseException:
                os.kill(pid, signal.SIGKILL)   # before the detach: a half-built process must never run
                raise
    except BaseException:
        _kill(pid)
        raise
    result = RestoreResult(pid, len(images.tids), stats, t_blank - t0, time.perf_counter_ns() - t0)
    if not detach:
        result.exit_status = _wait(pid)
    return result


def _blank_child(images: DumpImages, shell_job: bool) -> int:
    r, w = os.pipe()
    try:
        pid = fork_with_pid(images.pid)
    except OSError as e:
        os.close(r)
        os.close(w)
        if e.errno == errno.EEXIST:
            raise TargetError(f"PID {images.pid} is in use: cannot restore with the same IDs") from None
        what = f"cannot create a process with PID {images.pid}"
        if e.errno in (errno.EPERM, errno.EACCES):
            raise AccessDenied(images.pid, what, e.strerror.lower(), e.errno) from None
        raise TargetError(f"{what}: {e.strerror}") from None
    if pid == 0:   # the child: plain Python until coldsnap seizes it
        os.close(r)
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            # the status pipe must sit above every fd number the target uses
            high = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, max([e.fd for e in images.files.fds] + [2]) + 1)
            os.close(w)
            w = high
            rebuild_fds(images.files, shell_job=shell_job, keep_fds=(w,))
            default_signal_actions()
            os.write(w, b"ok")
        except BaseException as e:   # noqa: BLE001 - report anything to the parent
            try:
                os.write(w, _report(e))
            finally:
                os._exit(1)
        os.close(w)
        try:
            while True:
                signal.pause()       # until coldsnap seizes and reshapes this process
        finally:
            os._exit(1)              # never unwind into coldsnap's own code (e.g. on SIGINT)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read()
    if msg != b"ok":
        _kill(pid)
        raise _reported(msg)
    return pid


def _report(e: BaseException) -> bytes:
    """What the blank child tells coldsnap about its failure: the error itself (pickled, so
    that it keeps its class and exit code) or, for anything not ours, its words."""
    if isinstance(e, CsError):
        try:
            return b"E" + pickle.dumps(e)
        except Exception:  # noqa: BLE001 - an error that does not pickle still has words
            pass
    return b"T" + (str(e) or type(e).__name__).encode()[:4000]


def _reported(msg: bytes) -> CsError:
    if msg[:1] == b"E":
        try:
            e = pickle.loads(msg[1:])
            if isinstance(e, CsError):
                return e
        except Exception:  # noqa: BLE001 - a torn message: fall back to its bytes
            pass
    return ImageError(msg[1:].decode(errors="replace") or "the restore child died while preparing")


def _set_rlimits(pid: int, images: DumpImages) -> None:
    unlimited = (1 << 64) - 1
    for res, lim in enumerate(images.leader.tc.rlimits.rlimits):
        cur, top = (resource.RLIM_INFINITY if v == unlimited else v for v in (lim.cur, lim.max))
        try:
            resource.prlimit(pid, res, (cur, top))
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e)
            raise CsError(f"cannot set resource limit {res} to ({lim.cur}, {lim.max}): {why}") from None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _wait(pid: int) -> int:
    return os.waitpid(pid, 0)[1]
