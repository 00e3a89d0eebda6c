"""The deleted files of a restore (ghost files, files/ghost.py): made again at their old
paths before the blank processes open them, unlinked before the restored processes run."""
from __future__ import annotations

from ..files.ghost import GhostFiles
from ..files.model import RegFile
from .images import TreeImages


def make_ghosts(images: TreeImages) -> GhostFiles:
    """Create every ghost file the dump holds; each file and mapping that was one now names
    where it was made (its old path, unless that was taken). The caller removes them."""
    made = GhostFiles()
    reg = images.files
    try:
        where: dict[int, str] = {}
        for f in reg.files.values():
            if isinstance(f, RegFile) and f.ghost:
                if f.ghost not in where:
                    where[f.ghost] = made.make(reg.ghosts.ghosts[f.ghost], f.path)
                f.path = where[f.ghost]
        for proc in images.procs.values():
            for m in proc.mapped.values():
                if m.ghost:
                    m.path = where[m.ghost]
    except BaseException:
        made.remove()
        raise
    return made
