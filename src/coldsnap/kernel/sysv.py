"""SysV shared memory and semaphores: thin bindings (raw system calls), no policy.

The structures are the kernel's 64-bit ones (x86-64 passes IPC_64 implicitly):
ipc64_perm {key, uid, gid, cuid, cgid: 32 bits; mode, seq: 16 bits padded; 2 longs},
then shmid64_ds / semid64_ds fields.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from contextlib import contextmanager

from .libc import SYS, syscall

SHMGET, SHMAT, SHMCTL, SHMDT = SYS.shmget, SYS.shmat, SYS.shmctl, SYS.shmdt
SEMGET, SEMOP, SEMCTL = 64, 65, 66
IPC_CREAT, IPC_EXCL = 0o1000, 0o2000
IPC_RMID, IPC_SET, IPC_STAT = 0, 1, 2
SHM_RDONLY, SHM_RND, SHM_REMAP, SHM_EXEC = 0o10000, 0o20000, 0o40000, 0o100000
SHM_LOCK, SHM_UNLOCK = 11, 12
SHM_DEST, SHM_LOCKED = 0o1000, 0o2000      # in shm_perm.mode
GETPID, GETALL, SETALL = 11, 13, 17
_PERM = struct.Struct("<iIIIIHxxHxxQQ")   # ipc64_perm, 48 bytes
_DS_SIZE = 112                            # shmid64_ds and semid64_ds are both smaller


def shmget(key: int, size: int, flags: int) -> int:
    return syscall(SHMGET, key, size, flags, what=f"shmget({key:#x})")


def shmat(shmid: int, addr: int = 0, flags: int = 0) -> int:
    return syscall(SHMAT, shmid, addr, flags, what=f"shmat({shmid})")


def shmdt(addr: int) -> None:
    syscall(SHMDT, addr, what="shmdt")


def shm_rmid(shmid: int) -> None:
    syscall(SHMCTL, shmid, IPC_RMID, 0, what=f"shmctl({shmid}, IPC_RMID)")


def shm_lock(shmid: int) -> None:
    syscall(SHMCTL, shmid, SHM_LOCK, 0, what=f"shmctl({shmid}, SHM_LOCK)")


def shm_set_perm(shmid: int, uid: int, gid: int, mode: int) -> None:
    """IPC_SET: owner and the 9 permission bits (the other fields are not changed)."""
    _set_perm(lambda cmd, buf: syscall(SHMCTL, shmid, cmd, buf, what=f"shmctl({shmid}, {cmd})"),
              uid, gid, mode)


def semget(key: int, nsems: int, flags: int) -> int:
    return syscall(SEMGET, key, nsems, flags, what=f"semget({key:#x})")


def sem_rmid(semid: int) -> None:
    syscall(SEMCTL, semid, 0, IPC_RMID, 0, what=f"semctl({semid}, IPC_RMID)")


def sem_getall(semid: int, nsems: int) -> list[int]:
    buf = (ctypes.c_ushort * max(nsems, 1))()
    syscall(SEMCTL, semid, 0, GETALL, ctypes.addressof(buf), what=f"semctl({semid}, GETALL)")
    return list(buf[:nsems])


def sem_setall(semid: int, values: list[int]) -> None:
    buf = (ctypes.c_ushort * max(len(values), 1))(*values)
    syscall(SEMCTL, semid, 0, SETALL, ctypes.addressof(buf), what=f"semctl({semid}, SETALL)")


def sem_getpid(semid: int, num: int) -> int:
    """The pid of the last process that operated on semaphore NUM of the set."""
    return syscall(SEMCTL, semid, num, GETPID, 0, what=f"semctl({semid}, GETPID)")


def sem_set_perm(semid: int, uid: int, gid: int, mode: int) -> None:
    """IPC_SET of a semaphore set: owner and the 9 permission bits."""
    _set_perm(lambda cmd, buf: syscall(SEMCTL, semid, 0, cmd, buf, what=f"semctl({semid}, {cmd})"),
              uid, gid, mode)


def _set_perm(ctl, uid: int, gid: int, mode: int) -> None:
    """IPC_STAT, then IPC_SET of the same structure with the owner and mode changed."""
    buf = ctypes.create_string_buffer(_DS_SIZE)
    ctl(IPC_STAT, ctypes.addressof(buf))
    key, _, _, cuid, cgid, old_mode, seq, r1, r2 = _PERM.unpack_from(buf)
    _PERM.pack_into(buf, 0, key, uid, gid, cuid, cgid, (old_mode & ~0o777) | (mode & 0o777), seq, r1, r2)
    ctl(IPC_SET, ctypes.addressof(buf))


@contextmanager
def ids_lock(path: str):
    """An exclusive flock on PATH (made if missing) for the time of the `with`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
