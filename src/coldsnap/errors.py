"""Typed errors of the API; the CLI prints them as one line and exits non-zero."""


class CsError(Exception):
    """Base of every error coldsnap reports to a person."""


class TargetError(CsError):
    """The target process cannot be (or can no longer be) checkpointed."""


class ImageError(CsError):
    """An image file or directory is missing, malformed or refused."""


class Interrupted(CsError):
    """coldsnap got SIGINT/SIGTERM while holding a task; the task was resumed first."""

    def __init__(self, signum: int):
        import signal
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
