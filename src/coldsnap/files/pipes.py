"""Pipes and FIFOs: ends paired by pipe inode, buffered bytes peeked at dump, written back.

At restore all ends of one pipe share one fresh pipe. An end whose peer was not dumped
(e.g. a shell pipeline, or a pipe to a process outside the tree) gets a fresh pipe too: a
lone read end sees the saved data then EOF; writes to a lone write end fail with EPIPE.
"""
from __future__ import annotations

import fcntl
import os
import stat

from coldsnap.errors import ImageError, Unsupported
from coldsnap.images.pb import fdinfo_pb2, pipe_pb2
from coldsnap.kernel.fdinfo import reopen_fd
from coldsnap.kernel.fdio import write_all
from coldsnap.kernel.pipe import (F_GETPIPE_SZ, F_SETPIPE_SZ, PAGE, SPLICE_F_NONBLOCK, splice_pipes, tee,
                                  vmsplice_pages)

from .model import DEFAULT_PIPE_SIZE, PipeData, PipeFile
from .ops import FileOps, OpenCtx, Probe, fown_of, fown_pb, read_fown
from .regular import reg_entry


def peek_pipe(rd: int) -> PipeData:
    """Copy what is buffered in the pipe behind read end `rd` without consuming it, buffer
    by buffer: tee duplicates every buffer into a pipe of ours, from which each is spliced
    alone into a one-slot pipe and read (its length is the buffer's)."""
    size = fcntl.fcntl(rd, F_GETPIPE_SZ)
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    one_r, one_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, size)     # same number of slots: tee copies all buffers
        fcntl.fcntl(one_w, F_SETPIPE_SZ, PAGE)
        try:
            n = tee(rd, w, size, SPLICE_F_NONBLOCK)
        except BlockingIOError:
            n = 0
        data, bufs = bytearray(), []
        while len(data) < n:
            k = splice_pipes(r, one_w, n - len(data), SPLICE_F_NONBLOCK)
            start = len(data)
            while len(data) - start < k:
                data += os.read(one_r, k - (len(data) - start))
            bufs.append(k)
        return PipeData(0, bytes(data), size, bufs)
    finally:
        for fd in (r, w, one_r, one_w):
            os.close(fd)


def _peek_once(p: Probe, pipe_id: int, flags: int) -> None:
    """Record the pipe's buffered bytes, the first time one of its ends is seen."""
    if pipe_id in p.pipe_data:
        return
    if flags & os.O_ACCMODE != os.O_WRONLY:
        pd = peek_pipe(p.dup)
    else:
        # A write end: open the same pipe inode for reading through /proc.
        rd = reopen_fd(p.pid, p.fd, os.O_RDONLY | os.O_NONBLOCK)
        try:
            pd = peek_pipe(rd)
        finally:
            os.close(rd)
    pd.pipe_id = pipe_id
    p.pipe_data[pipe_id] = pd


def _fill(w: int, pd: PipeData | None) -> None:
    """Write the saved bytes back, each saved buffer as a buffer of its own where the image
    says how they were cut (so that a full pipe is full again): all but the last spliced
    from pages of ours, the last written, so that later writes may fill its room as they
    would have. Without buffer lengths, one run of writes."""
    if pd is None:
        return
    if pd.size != DEFAULT_PIPE_SIZE:
        fcntl.fcntl(w, F_SETPIPE_SZ, pd.size)   # before the data: capacity must fit it
    view = memoryview(pd.data)
    if len(pd.bufs) > 1 and sum(pd.bufs) == len(pd.data) and max(pd.bufs) <= PAGE:
        chunks, at = [], 0
        for n in pd.bufs[:-1]:
            chunks.append(view[at:at + n])
            at += n
        vmsplice_pages(w, chunks)
        view = view[at:]
    write_all(w, view)


class PipeOps(FileOps):
    def collect(self, p: Probe, fid: int) -> PipeFile:
        if p.flags & os.O_DIRECT:
            raise Unsupported(f"fd {p.fd}: packet-mode (O_DIRECT) pipe is not supported")
        _peek_once(p, p.link.inode, p.flags)
        return PipeFile(fid, p.link.inode, p.flags, "", read_fown(p.dup))

    def to_image(self, f: PipeFile, new_id) -> list[fdinfo_pb2.file_entry]:
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.PIPE, id=f.id)
        e.pipe.CopyFrom(pipe_pb2.pipe_entry(id=f.id, pipe_id=f.pipe_id, flags=f.flags, fown=fown_pb(f.fown)))
        return [e]

    def from_image(self, e, regs) -> PipeFile:
        return PipeFile(e.id, e.pipe.pipe_id, e.pipe.flags, "", fown_of(e.pipe.fown))

    def open(self, f: PipeFile, ctx: OpenCtx) -> int:
        """The first end makes the pipe and writes its data back; another open file
        description of the same direction (a pipe end reopened through /proc/PID/fd) is
        opened again the same way, so that it keeps status flags of its own. An unused end
        is closed with everything else at the end."""
        ends = ctx.shared.get(("pipe", f.pipe_id))
        if ends is None:
            r, w = (ctx.high(x) for x in os.pipe2(os.O_CLOEXEC))
            _fill(w, ctx.pipe_data.get(f.pipe_id))
            ends = ctx.shared[("pipe", f.pipe_id)] = {"r": r, "w": w, "used": set()}
        end = ends["r"] if f.flags & os.O_ACCMODE == os.O_RDONLY else ends["w"]
        if end in ends["used"]:
            # both ends are still ours here: the open neither blocks nor fails (ENXIO)
            mode = os.O_RDONLY if end == ends["r"] else os.O_WRONLY
            return ctx.high(reopen_fd(os.getpid(), end, mode | os.O_NONBLOCK))
        ends["used"].add(end)
        return end


class FifoOps(FileOps):
    def collect(self, p: Probe, fid: int) -> PipeFile:
        if p.flags & os.O_DIRECT:
            raise Unsupported(f"fd {p.fd}: packet-mode (O_DIRECT) FIFO is not supported")
        fown = read_fown(p.dup)
        assert p.st is not None
        _peek_once(p, p.st.st_ino, p.flags)
        return PipeFile(fid, p.st.st_ino, p.flags, p.link.path, fown)

    def to_image(self, f: PipeFile, new_id) -> list[fdinfo_pb2.file_entry]:
        # The path is a REG entry of its own, listed first.
        path_id = new_id()
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.FIFO, id=f.id)
        e.fifo.CopyFrom(pipe_pb2.fifo_entry(id=f.id, pipe_id=f.pipe_id, regf_id=path_id))
        return [reg_entry(path_id, f.fifo_path, f.flags, 0, f.fown, -1, None, stat.S_IFIFO), e]

    def from_image(self, e, regs) -> PipeFile:
        reg = regs.get(e.fifo.regf_id)
        if reg is None:
            raise ImageError(f"files.img: FIFO {e.id} refers to missing path entry {e.fifo.regf_id}")
        return PipeFile(e.id, e.fifo.pipe_id, reg.flags, reg.name, fown_of(reg.fown))

    def validate(self, f: PipeFile, name: str, *, shell_job: bool) -> None:
        try:
            if not stat.S_ISFIFO(os.stat(f.fifo_path).st_mode):
                raise ImageError(f"{name}: {f.fifo_path} is no longer a FIFO")
        except FileNotFoundError:
            raise ImageError(f"{name}: FIFO {f.fifo_path} is gone") from None

    def open(self, f: PipeFile, ctx: OpenCtx) -> int:
        if ("fifo", f.pipe_id) not in ctx.shared:
            # An O_RDWR holder keeps the FIFO open so one-sided opens neither block nor fail;
            # it is closed with everything else at the end.
            holder = ctx.high(os.open(f.fifo_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
            ctx.shared[("fifo", f.pipe_id)] = holder
            # A FIFO still open elsewhere is the same live pipe: its bytes are already there.
            if not peek_pipe(holder).data:
                _fill(holder, ctx.pipe_data.get(f.pipe_id))
        return ctx.high(os.open(f.fifo_path, f.flags | os.O_NONBLOCK | os.O_CLOEXEC))
