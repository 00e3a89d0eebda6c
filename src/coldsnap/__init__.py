"""coldsnap: checkpoint/restore of Linux processes with live, low-downtime pre-dumps."""
from .errors import CsError, ImageError, TargetError

__all__ = ["CsError", "ImageError", "TargetError", "pre_dump"]


def pre_dump(pid, images_dir, **options):
    """Pre-dump process `pid` into `images_dir`; see coldsnap.dump.predump.pre_dump."""
    from .dump.predump import pre_dump as _pre_dump
    return _pre_dump(pid, images_dir, **options)
