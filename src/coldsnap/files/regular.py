"""Files opened by path: regular files, directories, memory devices and the terminal."""
from __future__ import annotations

import fcntl
import os
import re
import stat

from coldsnap.errors import ImageError, TargetError, Unsupported
from coldsnap.images.pb import fdinfo_pb2, regfile_pb2

from .model import Fown, RegFile
from .ops import FileOps, OpenCtx, Probe, fown_of, fown_pb, read_fown
from .ttyinfo import tty_info

_MEM_DEVICES = {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9)}   # null zero full random urandom
# the names of the devices is_terminal_dev() counts (major 4 covers ttyN and ttySN)
TTY_PATH = re.compile(r"/dev/(pts/\d+|tty(S?\d+)?|console)")


def is_terminal_dev(rdev: int) -> bool:
    """/dev/ttyN (major 4), /dev/pts/N (136-143), /dev/tty and /dev/console (5:0, 5:1)."""
    major, minor = os.major(rdev), os.minor(rdev)
    return major == 4 or 136 <= major <= 143 or (major == 5 and minor in (0, 1))


def reg_entry(fid: int, path: str, flags: int, pos: int, fown: Fown, mnt_id: int, size: int | None,
              mode: int) -> fdinfo_pb2.file_entry:
    """A REG entry of files.img (also the path entry a FIFO refers to)."""
    m = regfile_pb2.reg_file_entry(id=fid, flags=flags, pos=pos, fown=fown_pb(fown), name=path,
                                   mnt_id=mnt_id, mode=mode)
    if size is not None:
        m.size = size
    e = fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=fid)
    e.reg.CopyFrom(m)
    return e


# the kernel clears these from an open file's flags: a dump never records them, and
# restore passes the flags to open(2), where they would create or truncate the file
_OPEN_ONLY = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY


def check_reg(name: str, f: RegFile) -> None:
    """The file is still there, of the same kind, and (read-only ones) of the same size."""
    if f.flags & _OPEN_ONLY:
        raise ImageError(f"{name}: open flags {f.flags:#o} for {f.path} (create/truncate flags "
                         "no open file has)")
    try:
        st = os.stat(f.path)
    except OSError as e:
        raise ImageError(f"{name}: {f.path} is gone ({e.strerror})") from None
    if f.mode and stat.S_IFMT(st.st_mode) != stat.S_IFMT(f.mode):
        raise ImageError(f"{name}: {f.path} is no longer the same kind of file")
    if f.size is not None and f.flags & os.O_ACCMODE == os.O_RDONLY and st.st_size != f.size:
        raise ImageError(f"{name}: {f.path} changed size ({f.size} -> {st.st_size} bytes)")


def check_ghost_dir(name: str, path: str) -> None:
    """A deleted file is made again in its old directory: that must still be one."""
    parent = os.path.dirname(path) or "/"
    if not os.path.isdir(parent):
        raise ImageError(f"{name}: the directory of the deleted file {path} is gone")


class RegOps(FileOps):
    def collect(self, p: Probe, fid: int) -> RegFile:
        st, path, fd = p.st, p.link.path, p.fd
        assert st is not None
        fown = read_fown(p.dup)
        if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            ghost = p.ghosts.add(p.dup, st, f"fd {fd}", path) if p.link.deleted and st.st_nlink == 0 else 0
            return RegFile(fid, path, p.flags, p.info.pos, st.st_size if stat.S_ISREG(st.st_mode) else None,
                           st.st_mode, p.info.mnt_id, fown, ghost=ghost)
        if stat.S_ISCHR(st.st_mode):
            if is_terminal_dev(st.st_rdev):
                if not p.shell_job:
                    raise TargetError(f"fd {fd}: terminal {path} is attached (use --shell-job)")
                return RegFile(fid, path, p.flags, 0, None, st.st_mode, p.info.mnt_id, fown, terminal=True,
                               tty_info=tty_info(p.dup, st))
            if (os.major(st.st_rdev), os.minor(st.st_rdev)) in _MEM_DEVICES:
                return RegFile(fid, path, p.flags, p.info.pos, None, st.st_mode, p.info.mnt_id, fown)
            raise Unsupported(f"fd {fd}: character device {path} "
                              f"({os.major(st.st_rdev)}:{os.minor(st.st_rdev)}) is not supported")
        raise Unsupported(f"fd {fd}: {stat.filemode(st.st_mode)[0]}-type file {path} is not supported")

    def to_image(self, f: RegFile, new_id) -> list[fdinfo_pb2.file_entry]:
        return [reg_entry(f.id, f.path, f.flags, f.pos, f.fown, f.mnt_id, f.size, f.mode)]

    def from_image(self, e, regs) -> RegFile:
        r = e.reg
        terminal = stat.S_ISCHR(r.mode) and TTY_PATH.fullmatch(r.name) is not None
        return RegFile(r.id, r.name, r.flags, r.pos, r.size if r.HasField("size") else None, r.mode,
                       r.mnt_id, fown_of(r.fown), terminal)

    def validate(self, f: RegFile, name: str, *, shell_job: bool) -> None:
        if f.ghost:
            check_ghost_dir(name, f.path)
        elif not f.terminal:
            check_reg(name, f)
        elif not shell_job:
            raise ImageError(f"{name}: was the terminal {f.path}; restore needs --shell-job")

    def open(self, f: RegFile, ctx: OpenCtx) -> int:
        if f.terminal:
            assert ctx.tty is not None
            return fcntl.fcntl(ctx.tty, fcntl.F_DUPFD_CLOEXEC, ctx.base)
        name = ctx.name(f.id)
        if not f.ghost:          # a ghost was made for this restore, at f.path
            check_reg(name, f)
        try:
            fd = ctx.high(os.open(f.path, f.flags | os.O_CLOEXEC))
        except OSError as e:
            raise ImageError(f"{name}: cannot open {f.path}: {e.strerror}") from None
        if f.pos and not f.flags & os.O_PATH:
            os.lseek(fd, f.pos, os.SEEK_SET)
        return fd

    def post_open(self, f: RegFile, fd: int, ctx: OpenCtx) -> None:
        if not (f.terminal or f.flags & os.O_PATH):   # the terminal is shared with us; O_PATH takes no F_SETFL
            super().post_open(f, fd, ctx)

