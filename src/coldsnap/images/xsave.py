"""The XSAVE area of a thread and CRIU's user_x86_xsave_entry, both ways.

ptrace's NT_X86_XSTATE gives the standard (non-compacted) XSAVE layout: the 512-byte
FXSAVE area (whose bytes 464..471 carry XCR0, the components the kernel enables), the
64-byte header at 512 (XSTATE_BV first), then each component at the offset CPUID gives for
this CPU (kernel/cpuid.py). CRIU's image keeps each component in a repeated field of its
own at full size, and only for the components the CPU has; restore puts them back at the
restoring CPU's offsets. So an image carries no offsets, and CRIU refuses a component
whose size differs from the restoring CPU's.
"""
from __future__ import annotations

import struct

XCR0_OFF = 464             # fx_sw_bytes in FXSAVE's software-reserved bytes: XCR0 first
XSTATE_BV_OFF = 512
XSAVE_HEADER_SIZE = 64
FXSAVE_SIZE = 512
# component bit -> (user_x86_xsave_entry field, bytes per repeated element)
COMPONENTS = {
    2: ("ymmh_space", 4),       # AVX: upper halves of YMM0-15
    3: ("bndreg_state", 8),     # MPX bound registers
    4: ("bndcsr_state", 8),     # MPX configuration and status
    5: ("opmask_reg", 8),       # AVX-512 k0-k7
    6: ("zmm_upper", 8),        # AVX-512 upper halves of ZMM0-15
    7: ("hi16_zmm", 8),         # AVX-512 ZMM16-31
    9: ("pkru", 4),             # protection keys
}
_FMT = {4: "I", 8: "Q"}


def xcr0_of(raw: bytes) -> int:
    """The enabled components an NT_X86_XSTATE area says it holds (0 when too short)."""
    return struct.unpack_from("<Q", raw, XCR0_OFF)[0] if len(raw) >= XCR0_OFF + 8 else 0


def fill_components(entry, raw: bytes, layout: dict[int, tuple[int, int]]) -> None:
    """Set entry.xstate_bv and every component the CPU enables from the raw area, as CRIU
    writes them (a component not in use is written too, with what the area holds)."""
    entry.xstate_bv = struct.unpack_from("<Q", raw, XSTATE_BV_OFF)[0]
    enabled = xcr0_of(raw)
    for bit, (name, width) in COMPONENTS.items():
        if not enabled >> bit & 1 or bit not in layout:
            continue
        off, size = layout[bit]
        data = raw[off:off + size].ljust(size, b"\0")
        getattr(entry, name).extend(struct.unpack(f"<{size // width}{_FMT[width]}", data))


def build_area(fxsave: bytes, entry, layout: dict[int, tuple[int, int]], size: int) -> bytes:
    """An NT_X86_XSTATE area of SIZE bytes for this CPU from the FXSAVE bytes and the image's
    components. A component the image lacks, or that this CPU lays out with another size,
    is left out of XSTATE_BV: the kernel then gives it its initial state."""
    area = bytearray(size)
    area[:FXSAVE_SIZE] = fxsave[:FXSAVE_SIZE]
    area[XCR0_OFF:XCR0_OFF + 48] = bytes(48)            # software bytes: the kernel's own
    bv = entry.xstate_bv & 0b11                          # x87 and SSE live in the FXSAVE part
    for bit, (name, width) in COMPONENTS.items():
        values = getattr(entry, name)
        if not values or bit not in layout or not entry.xstate_bv >> bit & 1:
            continue
        off, csize = layout[bit]
        if len(values) * width != csize or off + csize > size:
            continue
        area[off:off + csize] = struct.pack(f"<{len(values)}{_FMT[width]}", *values)
        bv |= 1 << bit
    struct.pack_into("<QQ", area, XSTATE_BV_OFF, bv, 0)
    return bytes(area)
