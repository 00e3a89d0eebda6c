"""nftables commands: libnftables (the library `nft` itself is built on) through ctypes,
or the `nft` program when the library is missing. One call runs one script of commands
as one transaction: all of it or none of it.
"""
from __future__ import annotations

import ctypes
import shutil

_SONAME = "libnftables.so.1"


class NftError(OSError):
    """nft refused a script; the message is nft's own first line."""


def _load():
    # find_library runs ldconfig: only when the usual soname is not there
    for name in (_SONAME, _find_library):
        name = name() if callable(name) else name
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        return lib
    return None


_lib = None
_loaded = False


def _find_library() -> str | None:
    import ctypes.util
    return ctypes.util.find_library("nftables")


def available() -> bool:
    """Whether nftables can be driven here (the library or the `nft` program)."""
    return _library() is not None or shutil.which("nft") is not None


def run(script: str) -> str:
    """Run SCRIPT (nft syntax, one command per line) as one transaction; its output.
    NftError with nft's words when it refuses."""
    lib = _library()
    if lib is None:
        return _run_program(script)
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("nft: cannot create a context")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        if rc != 0:
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            raise NftError(_first_line(err) or f"nft failed ({rc})")
        return (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
    finally:
        lib.nft_ctx_free(ctx)


def _library():
    global _lib, _loaded
    if not _loaded:
        _lib, _loaded = _load(), True
    return _lib


def _run_program(script: str) -> str:
    import subprocess
    nft = shutil.which("nft")
    if nft is None:
        raise NftError("nftables is not installed (neither libnftables nor nft)")
    r = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True)
    if r.returncode != 0:
        raise NftError(_first_line(r.stderr) or f"nft failed ({r.returncode})")
    return r.stdout


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
