"""Typed errors of the API and their words, in the style of psutil's exceptions.

    CsError                       anything coldsnap reports to a person (exit code 1)
    ├── TargetError               the target cannot be (or can no longer be) checkpointed
    │   ├── NoSuchProcess         it does not exist or exited meanwhile    (also ProcessLookupError)
    │   ├── AccessDenied          the kernel refused (EPERM/EACCES, traced) (also PermissionError)
    │   └── Unsupported           it uses something coldsnap cannot save or restore
    ├── ImageError (= BadImage)   an image file or directory is missing, malformed or refused
    ├── TransportError            a page server or its client refused, broke or lost a session
    └── Interrupted               SIGINT/SIGTERM/SIGHUP of coldsnap; the target was resumed first

Each class words itself here, once; the CLI prints `coldsnap: <str(e)>` and maps the class
to an exit code (`cli.exit_code`). Kernel bindings raise NoSuchProcess and AccessDenied from
errno through `kernel.libc.process_error`. Both stay OSErrors with their errno so that code
testing `e.errno == ESRCH` or catching ProcessLookupError keeps working.
"""
from __future__ import annotations

import errno as _errno


class CsError(Exception):
    """Base of every error coldsnap reports to a person."""


class TargetError(CsError):
    """The target process cannot be (or can no longer be) checkpointed or restored into."""


class NoSuchProcess(TargetError, ProcessLookupError):
    """The process does not exist, or exited while coldsnap worked on it.

    `during` names the step it exited in ("the pre-dump"); `what` names the attempt that
    found it missing ("cannot seize 42"). These are the only words for a vanished process."""

    def __init__(self, pid: int, during: str = "", what: str = ""):
        self.pid, self.during, self.what = pid, during, what
        words = (f"process {pid} exited during {during}" if during
                 else f"{what or f'process {pid}'}: no such process")
        ProcessLookupError.__init__(self, _errno.ESRCH, words)

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return type(self), (self.pid, self.during, self.what)


class AccessDenied(TargetError, PermissionError):
    """The kernel refused an operation on the process (EPERM/EACCES, or another tracer)."""

    def __init__(self, pid: int, what: str = "", reason: str = "permission denied",
                 err: int = _errno.EPERM):
        self.pid, self.what, self.reason = pid, what, reason
        PermissionError.__init__(self, err, f"{what or f'process {pid}'}: {reason}")

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return type(self), (self.pid, self.what, self.reason, self.errno)


class Unsupported(TargetError):
    """The target uses something coldsnap cannot save or restore (yet); the message names it."""


class ImageError(CsError):
    """An image file or directory is missing, malformed or refused."""


BadImage = ImageError


class TransportError(CsError):
    """A page server or its client refused, broke or lost a session; the message says which end."""


class Interrupted(CsError):
    """coldsnap got SIGINT/SIGTERM/SIGHUP while holding a task; the task was resumed first."""

    def __init__(self, signum: int):
        import signal
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    def __reduce__(self):
        return type(self), (self.signum,)
