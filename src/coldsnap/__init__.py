"""coldsnap: checkpoint/restore of Linux processes with live, low-downtime pre-dumps."""
from .errors import (AccessDenied, BadImage, CsError, ImageError, Interrupted, NoSuchProcess, TargetError,
                     Unsupported)

# the CRIU releases whose restore takes coldsnap's dumps and whose dumps coldsnap restores,
# as tests/interop checks against the stock binary (`coldsnap check` says so)
CRIU_TESTED = ("4.2",)

__all__ = ["AccessDenied", "BadImage", "CsError", "ImageError", "Interrupted", "NoSuchProcess",
           "TargetError", "Unsupported", "pre_dump"]


def pre_dump(pid, images_dir, **options):
    """Pre-dump process `pid` into `images_dir`; see coldsnap.dump.predump.pre_dump."""
    from .dump.predump import pre_dump as _pre_dump
    return _pre_dump(pid, images_dir, **options)
