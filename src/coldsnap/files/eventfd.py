"""eventfd: the counter and the semaphore mode."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from coldsnap.images.pb import eventfd_pb2, fdinfo_pb2

from .model import EFD_SEMAPHORE, FdType, Fown
from .ops import FileOps, OpenCtx, Probe, fown_of, fown_pb, read_fown


@dataclass(slots=True)
class EventfdFile:
    """An eventfd: its counter and flags."""
    id: int
    counter: int
    flags: int                    # open flags (O_NONBLOCK) | EFD_SEMAPHORE
    fown: Fown = field(default_factory=Fown)

    kind = FdType.EVENTFD


class EventfdOps(FileOps):
    def collect(self, p: Probe, fid: int) -> EventfdFile:
        sem = EFD_SEMAPHORE if p.info.eventfd_semaphore else 0
        return EventfdFile(fid, p.info.eventfd_count or 0, p.flags | sem, read_fown(p.dup))

    def to_image(self, f: EventfdFile, new_id) -> list[fdinfo_pb2.file_entry]:
        # Eventfd files are always O_RDWR, so bit 0 (O_WRONLY) is free to carry
        # EFD_SEMAPHORE, which has that very value in eventfd2's flags.
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.EVENTFD, id=f.id)
        e.efd.CopyFrom(eventfd_pb2.eventfd_file_entry(id=f.id, flags=f.flags, fown=fown_pb(f.fown),
                                                       counter=f.counter))
        return [e]

    def from_image(self, e, regs) -> EventfdFile:
        return EventfdFile(e.id, e.efd.counter, e.efd.flags, fown_of(e.efd.fown))

    def open(self, f: EventfdFile, ctx: OpenCtx) -> int:
        fd = ctx.high(os.eventfd(0, os.EFD_CLOEXEC | (f.flags & (EFD_SEMAPHORE | os.O_NONBLOCK))))
        if f.counter:
            os.eventfd_write(fd, f.counter)   # eventfd()'s initval is only 32 bits wide
        return fd
