"""The VMA model and the dump policy: which areas exist, and which of their pages we save."""
from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from ..kernel.procfs import MapsLine

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_GROWSDOWN = 0x1, 0x2, 0x20, 0x100


class Kind(Enum):
    ANON_PRIVATE = "anon-private"   # heap, stack, malloc arenas, thread stacks
    FILE_PRIVATE = "file-private"   # text, .data, .bss of binaries; only COW'd pages matter
    ANON_SHARED = "anon-shared"     # MAP_SHARED|MAP_ANONYMOUS, memfd, /dev/zero shared
    FILE_SHARED = "file-shared"     # the file holds the contents
    VDSO = "vdso"
    VVAR = "vvar"
    VSYSCALL = "vsyscall"


class Vma(NamedTuple):
    """One mapping of the target, as the dump policy sees it."""
    start: int
    end: int
    prot: int
    kind: Kind
    pgoff: int
    path: str
    inode: int
    dev: str
    name: str = ""   # [heap], [stack], [anon:...]

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def is_memfd(self) -> bool:
        """A shared mapping of a memfd ("/memfd:NAME (deleted)")."""
        return self.kind is Kind.ANON_SHARED and self.path.startswith("/memfd:")

    @property
    def is_sysv(self) -> bool:
        """An attach of a SysV shared memory segment ("/SYSV<key> (deleted)", inode = its id)."""
        return self.kind is Kind.ANON_SHARED and self.path.startswith("/SYSV")

    @property
    def saves_pages(self) -> bool:
        """Whether a pre-dump copies this area's private pages (the dump policy)."""
        return self.kind in (Kind.ANON_PRIVATE, Kind.FILE_PRIVATE)

    @property
    def map_flags(self) -> int:
        shared = self.kind in (Kind.ANON_SHARED, Kind.FILE_SHARED)
        flags = MAP_SHARED if shared else MAP_PRIVATE
        # the kernel's special areas have no file behind them: anonymous, as the format has it
        if self.kind not in (Kind.FILE_PRIVATE, Kind.FILE_SHARED) and not self.is_memfd:
            flags |= MAP_ANONYMOUS
        if self.name == "[stack]":
            flags |= MAP_GROWSDOWN
        return flags


_SPECIAL = {"[vdso]": Kind.VDSO, "[vsyscall]": Kind.VSYSCALL, "[vvar]": Kind.VVAR,
            "[vvar_vclock]": Kind.VVAR}


def classify(line: MapsLine) -> Vma:
    path, name = line.path, ""
    kind = _SPECIAL.get(path)
    if kind is None:
        if path.startswith("[") or not path:
            name, path = path, ""
            kind = Kind.ANON_SHARED if line.shared else Kind.ANON_PRIVATE
        elif line.inode == 0:
            # e.g. a private mapping of a deleted anon inode: treat as anonymous memory
            kind = Kind.ANON_SHARED if line.shared else Kind.ANON_PRIVATE
        elif line.shared:
            # shmem objects (/dev/zero (deleted), /memfd:..., /SYSV...) hold their own pages;
            # a deleted regular file is still a file (its contents go into a ghost file)
            anon_like = path.startswith(("/dev/zero", "/memfd:", "/SYSV"))
            kind = Kind.ANON_SHARED if anon_like else Kind.FILE_SHARED
        else:
            kind = Kind.FILE_PRIVATE
    else:
        name, path = path, ""
    prot = (PROT_READ if line.readable else 0) | (PROT_WRITE if line.writable else 0) | \
        (PROT_EXEC if line.executable else 0)
    return Vma(line.start, line.end, prot, kind, line.offset, path, line.inode, line.dev, name)


def classify_all(lines: list[MapsLine]) -> list[Vma]:
    return [classify(line) for line in lines]
