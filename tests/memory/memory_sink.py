"""A second page sink (besides the images directory): everything kept in memory, as runs."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from coldsnap.memory.sink import PagemapKey

PG = 4096


class BytesArea:
    """A reserved area held in a bytearray (what a stream sink would buffer)."""

    def __init__(self, size: int):
        self.buf = bytearray(size)

    def pwrite(self, data, offset: int) -> int:
        n = len(memoryview(data).cast("B"))
        self.buf[offset:offset + n] = data
        return n

    def sendfile(self, fd: int, fd_offset: int, offset: int, nbytes: int) -> int:
        data = os.pread(fd, nbytes, fd_offset)
        self.buf[offset:offset + len(data)] = data
        return len(data)


@dataclass
class MemorySink:
    """pagemap key -> [(kind, vaddr, nr_pages, bytes or None)], runs as they came."""
    pagemaps: dict[PagemapKey, list] = field(default_factory=dict)
    calls: list = field(default_factory=list)     # (method, ...) in order
    _key: PagemapKey | None = None
    _area: BytesArea | None = None
    _area_pos: int = 0

    def _runs(self) -> list:
        assert self._key is not None, "no pagemap begun"
        return self.pagemaps[self._key]

    def begin(self, pagemap: PagemapKey) -> None:
        assert self._key is None and pagemap not in self.pagemaps
        self._key = pagemap
        self.pagemaps[pagemap] = []
        self.calls.append(("begin", pagemap))

    def present(self, vaddrs, lengths, data) -> None:
        off = 0
        for v, n in zip(map(int, vaddrs), map(int, lengths)):
            self._runs().append(("present", v, n // PG, bytes(data[off:off + n])))   # copy: data is lent
            off += n
        assert off == data.nbytes
        self.calls.append(("present", len(vaddrs)))

    def parent(self, vaddr: int, nr_pages: int) -> None:
        self._runs().append(("parent", vaddr, nr_pages, None))
        self.calls.append(("parent",))

    def skipped(self, vaddr: int, nr_pages: int) -> None:
        self._runs().append(("skipped", vaddr, nr_pages, None))
        self.calls.append(("skipped",))

    def reserve(self, nbytes: int) -> BytesArea:
        self._area, self._area_pos = BytesArea(nbytes), 0
        self.calls.append(("reserve", nbytes))
        return self._area

    def placed(self, vaddrs, lengths) -> None:
        for v, n in zip(map(int, vaddrs), map(int, lengths)):
            data = bytes(self._area.buf[self._area_pos:self._area_pos + n])
            assert len(data) == n, "placed beyond the reserved area"
            self._area_pos += n
            self._runs().append(("present", v, n // PG, data))
        self.calls.append(("placed", len(vaddrs)))

    def end(self) -> None:
        assert self._key is not None
        self._key, self._area = None, None
        self.calls.append(("end",))

    def pages(self, key: PagemapKey, kind: str = "present") -> dict[int, bytes | None]:
        """Page address -> its bytes (None for parent/skipped pages), of one kind."""
        out = {}
        for k, v, n, data in self.pagemaps[key]:
            if k == kind:
                for i in range(n):
                    out[v + i * PG] = data[i * PG:(i + 1) * PG] if data is not None else None
        return out

    def in_order(self, key: PagemapKey) -> bool:
        end = 0
        for _, v, n, _ in self.pagemaps[key]:
            if v < end:
                return False
            end = v + n * PG
        return True
