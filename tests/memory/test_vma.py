"""The VMA model of a real process: each kind of mapping classified, with the mmap flags the
images record for it (CRIU's restore maps the area again with them)."""
from __future__ import annotations

import sys

from coldsnap.kernel.procfs import read_maps
from coldsnap.memory.vma import Kind, classify_all

TARGET = r"""
import ctypes, mmap, os, sys, tempfile
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
P, S, A = mmap.MAP_PRIVATE, mmap.MAP_SHARED, mmap.MAP_ANONYMOUS
f = tempfile.TemporaryFile(dir="/var/tmp"); f.truncate(4 * 4096)
memfd = os.memfd_create("vma-test"); os.ftruncate(memfd, 4096)
areas = [libc.mmap(None, 4096 * (i + 1), 3, fl, fd, 0) for i, (fl, fd) in enumerate([
    (P | A, -1), (S | A, -1), (P, f.fileno()), (S, f.fileno()), (S, memfd)])]
libc.mprotect(ctypes.c_void_p(areas[0]), 4096, 1)             # read-only
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0, 4096, 0o1600)                               # IPC_PRIVATE, IPC_CREAT
areas.append(libc.shmat(shmid, None, 0))
libc.shmctl(shmid, 0, None)                                        # IPC_RMID: gone with the process
print(*areas, flush=True)
sys.stdin.readline()
"""

# kind, saves pages, MAP_* flags (MAP_SHARED 1, MAP_PRIVATE 2, MAP_ANONYMOUS 0x20)
WANT = [(Kind.ANON_PRIVATE, True, 0x22), (Kind.ANON_SHARED, False, 0x21),
        (Kind.FILE_PRIVATE, True, 0x02), (Kind.FILE_SHARED, False, 0x01),
        (Kind.ANON_SHARED, False, 0x01), (Kind.ANON_SHARED, False, 0x21)]


def test_every_kind_of_mapping_is_classified_with_its_flags(spawn):
    w = spawn([sys.executable, "-c", TARGET])
    starts = [int(a) for a in w.ready.split()]
    maps = read_maps(w.pid)
    vmas = {v.start: v for v in classify_all(maps)}
    # the protection as the kernel shows it (r, w, x): restore maps each area with it
    assert {m.start: (m.perms[0] == "r") | (m.perms[1] == "w") << 1 | (m.perms[2] == "x") << 2 for m in maps} == \
        {a: v.prot for a, v in vmas.items()}
    assert any(v.prot == 5 for v in vmas.values())       # text: r-x
    got = [(vmas[a].kind, vmas[a].saves_pages, vmas[a].map_flags) for a in starts]
    assert got == WANT
    assert vmas[starts[0]].prot == 1 and vmas[starts[1]].prot == 3
    assert [vmas[a].is_memfd for a in starts] == [False] * 4 + [True, False]
    assert [vmas[a].is_sysv for a in starts] == [False] * 5 + [True]
    stack = [v for v in vmas.values() if v.name == "[stack]"]
    assert len(stack) == 1 and stack[0].map_flags == 0x122 and stack[0].kind is Kind.ANON_PRIVATE
    special = {v.name: v.kind for v in vmas.values() if v.name in ("[vdso]", "[vvar]")}
    assert special == {"[vdso]": Kind.VDSO, "[vvar]": Kind.VVAR}
    assert not any(v.saves_pages for v in vmas.values() if v.kind in (Kind.VDSO, Kind.VVAR))
