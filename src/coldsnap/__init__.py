"""coldsnap: checkpoint/restore of Linux processes with live, low-downtime pre-dumps."""

# coldsnap.errors' names, loaded at their first use (__getattr__): every command starts by
# importing coldsnap.service.client, which needs nothing else of the package (0.6 ms)
_ERRORS = ("AccessDenied", "BadImage", "CsError", "ImageError", "Interrupted", "NoSuchProcess", "TargetError",
           "Unsupported")

# the CRIU releases whose restore takes coldsnap's dumps and whose dumps coldsnap restores,
# as tests/interop checks against the stock binary (`coldsnap check` says so)
CRIU_TESTED = ("4.2",)

__all__ = ["AccessDenied", "BadImage", "CsError", "ImageError", "Interrupted", "NoSuchProcess",
           "TargetError", "Unsupported", "pre_dump"]


def pre_dump(pid, images_dir, **options):
    """Pre-dump process `pid` into `images_dir`; see coldsnap.dump.predump.pre_dump."""
    from .dump.predump import pre_dump as _pre_dump
    return _pre_dump(pid, images_dir, **options)


def __getattr__(name: str):
    if name in _ERRORS:
        from . import errors
        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
