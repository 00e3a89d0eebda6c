"""CRIU's page-server protocol (reference/criu-image-format.md §6) and coldsnap's extensions.

Every command is one 32-byte header (x86-64 layout, host byte order):
u32 cmd (low 16 bits the command, high 16 bits PE_* flags), 4 bytes of padding,
u64 nr_pages, u64 vaddr, u64 dst_id ((id << 8) | type: 1 a process pagemap, 2 shmem).

Extensions are negotiated so that stock CRIU still works on either side:

- A coldsnap client first asks PS_IOV_PARENT about a shmem pagemap id no dump can have
  (PROBE_ID). CRIU answers 0 (no such parent) and the session goes on in the plain protocol;
  a coldsnap server answers SERVER_MAGIC, and the client then sends CS_HELLO.
- CS_HELLO: nr_pages = length of a JSON payload that follows (token, session name, parent,
  features wanted); the server answers 8 bytes: i32 status (0 ok) and u32 features granted.
- CS_BATCH: a batch of present runs: nr_pages = total pages, vaddr = number of runs,
  dst_id as usual; then the runs (u64 vaddr, u64 nr_pages each), a BatchTrailer (codec,
  payload length, crc32 of the raw bytes) and the payload (raw or zstd).
- CS_SKIP: planned pages that could not be read (recorded in the head, never trusted).
- CS_COVERED: pages the session's parent chain holds for dst_id: the answer is u64 count
  and count (start, end) byte ranges.
- CS_DROP: forget the open pagemap (its process exited while it was sent).
- CS_FILE: one more image file of a writing session (a migration sends every image):
  nr_pages = length of its name, vaddr = length of its bytes; name and bytes follow.
- CS_RESTORE: restore a stored session (a reading one) on the server's host, which answers
  u64 length and a JSON object (the restored pid, or an error). Only `migrate-receive`.
  nr_pages: the length of a JSON request that follows (0: none, an eager restore); a
  post-copy one names where the PE_LAZY pages are: {"lazy_from": "HOST:PORT", "session": S}.
- A reading hello may say its "role": "lazy" is a lazy restore's server, whose CLOSE means
  that every page it needed is in (the post-copy source stops serving then).
- CS_LIST: the pagemaps of a reading session: u64 count and count dst_ids.
- CS_GET: pages of a committed session (a reading session): the answer is a BatchTrailer and
  the payload, or a trailer with codec CODEC_ERROR and no payload.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

PS_IOV_ADD, PS_IOV_HOLE, PS_IOV_OPEN, PS_IOV_OPEN2, PS_IOV_PARENT, PS_IOV_ADD_F, PS_IOV_GET = 1, 2, 3, 4, 5, 6, 7
PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE = 0x1023, 0x1024
CS_HELLO, CS_BATCH, CS_SKIP, CS_COVERED, CS_GET, CS_DROP = 0x4301, 0x4302, 0x4303, 0x4304, 0x4305, 0x4306
CS_FILE, CS_RESTORE, CS_LIST = 0x4307, 0x4308, 0x4309

PS_TYPE_PID, PS_TYPE_SHMEM = 1, 2
# type numbers older CRIU versions used for the same two kinds (the server accepts them)
_LEGACY_PID = {10, 11, 16, 17}
_LEGACY_SHMEM = {27, 28, 29, 32, 33, 34}

PROBE_ID = 0x43534E4150          # "CSNAP": a shmem id no dump uses
SERVER_MAGIC = 0x43534E31        # "CSN1": the answer of a coldsnap server to the probe

FEAT_ZSTD, FEAT_CRC = 1, 2
CODEC_RAW, CODEC_ZSTD, CODEC_ERROR = 0, 1, 0xFFFFFFFF

HELLO_MAX = 4096                  # bytes of a hello's JSON
FILE_MAX = 64 << 20               # bytes of one image file sent with CS_FILE
BATCH_MAX_RUNS = 1 << 16
BATCH_MAX_PAGES = 1 << 14         # 64 MiB of page data per batch
ADDR_LIMIT = 1 << 57              # no address space (5-level paging included) goes above

HEADER = struct.Struct("=I4xQQQ")
RUN = struct.Struct("=QQ")
TRAILER = struct.Struct("=IIII")
STATUS = struct.Struct("=i")
HELLO_REPLY = struct.Struct("=iI")
COUNT = struct.Struct("=Q")


@dataclass(frozen=True)
class Header:
    cmd: int
    flags: int = 0
    nr_pages: int = 0
    vaddr: int = 0
    dst_id: int = 0

    def pack(self) -> bytes:
        return HEADER.pack(self.cmd | (self.flags << 16), self.nr_pages, self.vaddr, self.dst_id)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "Header":
        word, nr, vaddr, dst = HEADER.unpack(data)
        return cls(word & 0xFFFF, word >> 16, nr, vaddr, dst)


@dataclass(frozen=True)
class BatchTrailer:
    codec: int
    length: int                   # payload bytes that follow
    crc: int                      # crc32 of the raw page bytes (0 without FEAT_CRC)

    def pack(self) -> bytes:
        return TRAILER.pack(self.codec, self.length, self.crc, 0)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "BatchTrailer":
        codec, length, crc, _ = TRAILER.unpack(data)
        return cls(codec, length, crc)


def encode_dst(pagemap_id: int, shmem: bool = False) -> int:
    return (pagemap_id << 8) | (PS_TYPE_SHMEM if shmem else PS_TYPE_PID)


def decode_dst(dst_id: int) -> tuple[int, bool] | None:
    """(pagemap id, shmem) of a dst_id, or None for an unknown type."""
    kind = dst_id & 0xFF
    if kind == PS_TYPE_PID or kind in _LEGACY_PID:
        return dst_id >> 8, False
    if kind == PS_TYPE_SHMEM or kind in _LEGACY_SHMEM:
        return dst_id >> 8, True
    return None


def zstd_bound(nbytes: int) -> int:
    """The most bytes zstd may turn nbytes into (its compressBound, rounded up)."""
    return nbytes + (nbytes >> 7) + 4096
