"""pagemap-<id>.img encoded and decoded with numpy, one vectorised pass over every entry:
for pagemaps too long for a Python loop (pages.BIG_PAGEMAP entries and more). Imported only
then: numpy costs about 60 ms of a command's start-up. Byte for byte what pages.py's plain
versions (and protobuf) make and read."""
from __future__ import annotations

from typing import Optional

import numpy as np

_U32_MAX = 0xFFFFFFFF


_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def _varints(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varint bytes of each value as an (n, width) matrix plus a validity mask."""
    v = values.astype(np.uint64)
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    nbytes = 1 + (v[:, None] >= _VARINT_LIMITS[None, :width - 1]).sum(axis=1)
    cols = np.arange(width)
    mask = cols[None, :] < nbytes[:, None]
    groups |= (cols[None, :] < (nbytes[:, None] - 1)).astype(np.uint8) << 7
    return groups, mask


def encode_pagemap_entries(vaddr: np.ndarray, nr: np.ndarray, flags: np.ndarray) -> bytes:
    """Size-prefixed pagemap_entry messages, byte-identical to protobuf's own encoding."""
    n = len(vaddr)
    if n == 0:
        return b""
    compat = np.where(nr <= _U32_MAX, nr, 0)  # field 2 is u32; huge runs rely on field 5
    parts = [(np.full((n, 1), 0x08, np.uint8), np.ones((n, 1), bool)), _varints(vaddr, 10),
             (np.full((n, 1), 0x10, np.uint8), np.ones((n, 1), bool)), _varints(compat, 5),
             (np.full((n, 1), 0x20, np.uint8), np.ones((n, 1), bool)), _varints(flags, 5),
             (np.full((n, 1), 0x28, np.uint8), np.ones((n, 1), bool)), _varints(nr, 10)]
    body = np.concatenate([p[0] for p in parts], axis=1)
    mask = np.concatenate([p[1] for p in parts], axis=1)
    size = mask.sum(axis=1).astype("<u4")
    full = np.concatenate([size.view(np.uint8).reshape(n, 4), body], axis=1)
    fmask = np.concatenate([np.ones((n, 4), bool), mask], axis=1)
    return full[fmask].tobytes()


def decode_pagemap_entries(data: np.ndarray, starts: np.ndarray, sizes: np.ndarray
                           ) -> Optional[tuple[np.ndarray, ...]]:
    """Vectorised decode of pagemap_entry bodies into (vaddr, compat, in_parent, flags,
    has_flags, nr_pages, has_nr) arrays; None when an entry uses anything but varint
    fields (the caller then falls back to protobuf)."""
    n = len(starts)
    total = int(sizes.sum())
    if n == 0 or total == 0 or (sizes == 0).any():
        return None
    first = np.cumsum(sizes) - sizes                       # body offset of each entry
    body = data[np.repeat(starts - first, sizes) + np.arange(total)]
    term = body < 0x80                                      # last byte of a varint
    if not term[first + sizes - 1].all():
        return None
    tpos = np.flatnonzero(term)
    vstart = np.empty(len(tpos), np.int64)
    vstart[0] = 0
    vstart[1:] = tpos[:-1] + 1
    vlen = tpos - vstart + 1
    if (vlen > 10).any():
        return None
    k = (np.arange(total) - np.repeat(vstart, vlen)).astype(np.uint64) * np.uint64(7)
    vals = np.add.reduceat((body & 0x7F).astype(np.uint64) << k, vstart)
    ventry = np.repeat(np.arange(n), sizes)[vstart]
    counts = np.bincount(ventry, minlength=n)
    if (counts % 2).any():
        return None
    within = np.arange(len(vals)) - np.repeat(np.cumsum(counts) - counts, counts)
    tags, values, owner = vals[within % 2 == 0], vals[within % 2 == 1], ventry[within % 2 == 0]
    if (tags & np.uint64(7)).any():
        return None
    field = tags >> np.uint64(3)
    out = []
    for f in (1, 2, 3, 4, 5):
        sel = field == f
        col, has = np.zeros(n, np.uint64), np.zeros(n, bool)
        col[owner[sel]] = values[sel]
        has[owner[sel]] = True
        out.append((col, has))
    (vaddr, has_v), (compat, has_c), (in_parent, _), (flags, has_f), (nr, has_n) = out
    if not (has_v.all() and has_c.all()):
        return None   # let protobuf produce the "missing required field" error
    mask32 = np.uint64(_U32_MAX)
    return vaddr, compat & mask32, in_parent != 0, flags & mask32, has_f, nr, has_n
