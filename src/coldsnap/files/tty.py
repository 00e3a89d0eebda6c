"""Terminals in CRIU's images: a TTY entry of files.img (its path in the REG entry regf_id
names; its state in tty-info.img). A `criu dump --shell-job` writes the pty slave a job
keeps on its stdio this way. coldsnap reads it as it reads its own terminals (REG entries
of /dev/pts/N): re-attached to the restorer's terminal with --shell-job, never reopened.
A pty slave coldsnap dumps (regular.py collects it) is written the same way, with its
tty-info.img entry (files/ttyinfo.py), so that `criu restore --shell-job` takes it too."""
from __future__ import annotations

from coldsnap.errors import ImageError
from coldsnap.images.pb import fdinfo_pb2, tty_info_pb2, tty_pb2

from .model import RegFile
from .ops import fown_of, fown_pb
from .regular import TTY_PATH, RegOps, reg_entry


class TtyOps(RegOps):
    def from_image(self, e, regs) -> RegFile:
        t = e.tty
        reg = regs.get(t.regf_id) if t.HasField("regf_id") else None
        if reg is None:
            raise ImageError(f"files.img: terminal {e.id} names no path (regf_id {t.regf_id})")
        if TTY_PATH.fullmatch(reg.name) is None:
            raise ImageError(f"files.img: terminal {e.id} is {reg.name}, not a terminal a job keeps "
                             "(pty masters, consoles and others are not supported)")
        return RegFile(e.id, reg.name, t.flags, 0, None, reg.mode, reg.mnt_id, fown_of(t.fown), terminal=True,
                       tty_info=b"")

    def to_image(self, f: RegFile, new_id) -> list[fdinfo_pb2.file_entry]:
        """The REG entry of its path (a new id), then the TTY entry; its tty-info.img entry
        (tty_info_id = the file's id) comes from tty_info_entries()."""
        regf = new_id()
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.TTY, id=f.id)
        e.tty.CopyFrom(tty_pb2.tty_file_entry(id=f.id, tty_info_id=f.id, flags=f.flags, fown=fown_pb(f.fown),
                                              regf_id=regf))
        return [reg_entry(regf, f.path, f.flags, 0, f.fown, f.mnt_id, None, f.mode), e]


def tty_info_entries(files) -> list:
    """tty-info.img: the terminal state of every TTY file dumped (FILES: the registry's)."""
    out = []
    for f in files:
        if isinstance(f, RegFile) and f.tty_info:
            e = tty_info_pb2.tty_info_entry.FromString(f.tty_info)
            e.id = f.id
            out.append(e)
    return out


def attach_tty_info(files: dict, entries: dict, infos) -> None:
    """Give each TTY file read from files.img (ENTRIES) its tty-info.img entry (INFOS), as
    collect made it (id 0), so that a dump of a restored process writes it again."""
    by_id = {e.id: e for e in infos}
    for fid, f in files.items():
        e = entries.get(fid)
        if isinstance(f, RegFile) and e is not None and e.type == fdinfo_pb2.TTY:
            info = by_id.get(e.tty.tty_info_id)
            if info is not None:
                copy = tty_info_pb2.tty_info_entry()
                copy.CopyFrom(info)
                copy.id = 0
                f.tty_info = copy.SerializeToString()
