"""coldsnap: checkpoint/restore of Linux processes with live, low-downtime pre-dumps."""
from .errors import (AccessDenied, BadImage, CsError, ImageError, Interrupted, NoSuchProcess, TargetError,
                     Unsupported)

__all__ = ["AccessDenied", "BadImage", "CsError", "ImageError", "Interrupted", "NoSuchProcess",
           "TargetError", "Unsupported", "pre_dump"]


def pre_dump(pid, images_dir, **options):
    """Pre-dump process `pid` into `images_dir`; see coldsnap.dump.predump.pre_dump."""
    from .dump.predump import pre_dump as _pre_dump
    return _pre_dump(pid, images_dir, **options)
