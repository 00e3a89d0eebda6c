"""One model of a thread's credentials for dump and restore: ids, groups, capability sets,
securebits and no_new_privs. Read from /proc/PID/task/TID/status (the dump, and the restore to
see what the blank child has) or from a creds image entry (the restore); written into a creds
image entry (the dump) or a capset(2) argument (the restore)."""
from __future__ import annotations

import ctypes
import struct
from typing import NamedTuple

from .kernel.libc import libc

CAP_VERSION_3 = 0x20080522           # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
PR_GET_SECUREBITS = 27


def _words(values) -> int:
    lo, hi = (list(values) + [0, 0])[:2]
    return lo | hi << 32


def _split(value: int) -> list[int]:
    """A 64-bit capability set as the image's [low, high] 32-bit words."""
    return [value & 0xFFFFFFFF, value >> 32]


class Creds(NamedTuple):
    """A task's credentials: ids, groups, capability sets and securebits."""
    uids: tuple[int, ...]            # real, effective, saved, fs
    gids: tuple[int, ...]
    groups: tuple[int, ...]
    inheritable: int
    permitted: int
    effective: int
    bounding: int
    ambient: int
    secbits: int
    no_new_privs: int

    @property
    def ids(self) -> tuple:
        """What setgroups/setresgid/setresuid set (fs ids follow the effective ones)."""
        return self.uids[:3], self.gids[:3], self.groups

    @classmethod
    def of_entry(cls, c) -> "Creds":
        return cls((c.uid, c.euid, c.suid, c.fsuid), (c.gid, c.egid, c.sgid, c.fsgid), tuple(sorted(c.groups)),
                   _words(c.cap_inh), _words(c.cap_prm), _words(c.cap_eff), _words(c.cap_bnd),
                   _words(c.cap_amb), c.secbits, c.no_new_privs)

    @classmethod
    def of_status(cls, status: dict[str, str], secbits: int | None = None) -> "Creds":
        """From a thread's /proc status; securebits are not shown there: by default the
        calling process's own (a blank restore child inherited coldsnap's)."""
        ids = lambda key: tuple(int(x) for x in status[key].split()[:4])  # noqa: E731
        cap = lambda key: int(status.get(key, "0"), 16)                     # noqa: E731
        return cls(ids("Uid"), ids("Gid"), tuple(sorted(int(g) for g in status.get("Groups", "").split())),
                   cap("CapInh"), cap("CapPrm"), cap("CapEff"), cap("CapBnd"), cap("CapAmb"),
                   own_secbits() if secbits is None else secbits, int(status.get("NoNewPrivs", "0")))

    def to_entry(self, cr) -> None:
        """Fill a creds image entry (creds_entry of core-TID.img)."""
        cr.uid, cr.euid, cr.suid, cr.fsuid = self.uids
        cr.gid, cr.egid, cr.sgid, cr.fsgid = self.gids
        for field, value in (("cap_inh", self.inheritable), ("cap_prm", self.permitted),
                             ("cap_eff", self.effective), ("cap_bnd", self.bounding),
                             ("cap_amb", self.ambient)):
            getattr(cr, field).extend(_split(value))
        cr.secbits = self.secbits
        cr.groups.extend(self.groups)
        cr.no_new_privs = self.no_new_privs

    def capset_arg(self) -> bytes:
        """struct __user_cap_header_struct (pid 0: the caller) + two __user_cap_data_struct."""
        low = lambda v: v & 0xFFFFFFFF  # noqa: E731
        return (struct.pack("<Ii", CAP_VERSION_3, 0)
                + struct.pack("<3I", low(self.effective), low(self.permitted), low(self.inheritable))
                + struct.pack("<3I", self.effective >> 32, self.permitted >> 32, self.inheritable >> 32))


def own_secbits() -> int:
    return max(0, libc.prctl(ctypes.c_int(PR_GET_SECUREBITS), 0, 0, 0, 0))
