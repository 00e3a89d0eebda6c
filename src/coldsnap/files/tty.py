"""Terminals in CRIU's images: a TTY entry of files.img (its path in the REG entry regf_id
names; its state in tty-info.img). A `criu dump --shell-job` writes the pty slave a job
keeps on its stdio this way. coldsnap reads it as it reads its own terminals (REG entries
of /dev/pts/N): re-attached to the restorer's terminal with --shell-job, never reopened.
coldsnap writes its terminals as REG entries, so dumping goes through regular.py."""
from __future__ import annotations

from coldsnap.errors import ImageError

from .model import RegFile
from .ops import fown_of
from .regular import TTY_PATH, RegOps


class TtyOps(RegOps):
    def from_image(self, e, regs) -> RegFile:
        t = e.tty
        reg = regs.get(t.regf_id) if t.HasField("regf_id") else None
        if reg is None:
            raise ImageError(f"files.img: terminal {e.id} names no path (regf_id {t.regf_id})")
        if TTY_PATH.fullmatch(reg.name) is None:
            raise ImageError(f"files.img: terminal {e.id} is {reg.name}, not a terminal a job keeps "
                             "(pty masters, consoles and others are not supported)")
        return RegFile(e.id, reg.name, t.flags, 0, None, reg.mode, reg.mnt_id, fown_of(t.fown), terminal=True)
