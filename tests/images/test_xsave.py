"""The XSAVE area helpers on a made-up CPU layout: XCR0, components into CRIU's entry and back."""
import struct

from coldsnap.images.pb import core_x86_pb2
from coldsnap.images.xsave import build_area, fill_components, xcr0_of


def test_xcr0_is_read_where_the_area_holds_it_and_zero_when_too_short():
    raw = bytearray(472)
    struct.pack_into("<Q", raw, 464, 0x2e7)
    assert xcr0_of(bytes(raw)) == 0x2e7            # exactly long enough
    assert xcr0_of(bytes(raw) + b"\0" * 100) == 0x2e7
    assert xcr0_of(bytes(raw[:471])) == 0


# a made-up CPU: AVX's upper halves at 576 (256 bytes), PKRU at 832 (8 bytes), area 840 bytes
LAYOUT = {2: (576, 256), 9: (832, 8)}
SIZE = 840
AVX, PKRU = 1 << 2, 1 << 9


def _raw(xcr0: int, bv: int) -> bytes:
    raw = bytearray(i % 251 for i in range(SIZE))
    struct.pack_into("<Q", raw, 464, xcr0)
    struct.pack_into("<QQ", raw, 512, bv, 0)
    return bytes(raw)


def test_components_go_into_the_entry_at_full_size():
    raw = _raw(0b11 | AVX | PKRU, 0b11 | AVX)
    e = core_x86_pb2.user_x86_xsave_entry(xstate_bv=0)
    fill_components(e, raw, LAYOUT)
    assert e.xstate_bv == 0b11 | AVX
    assert list(e.ymmh_space) == list(struct.unpack("<64I", raw[576:832]))
    assert list(e.pkru) == list(struct.unpack("<2I", raw[832:840]))     # written even when not in use
    short = core_x86_pb2.user_x86_xsave_entry(xstate_bv=0)
    fill_components(short, raw[:700], LAYOUT)                          # cut: the rest is zeros
    assert list(short.ymmh_space) == list(struct.unpack("<64I", raw[576:700] + bytes(132)))


def test_an_area_is_built_back_with_the_components_that_fit():
    raw = _raw(0b11 | AVX | PKRU, 0b11 | AVX | PKRU)
    e = core_x86_pb2.user_x86_xsave_entry(xstate_bv=0)
    fill_components(e, raw, LAYOUT)
    e.opmask_reg.extend([1, 2])                     # a component this CPU does not lay out
    e.xstate_bv |= 1 << 5
    area = build_area(raw[:512], e, LAYOUT, SIZE)
    assert len(area) == SIZE
    assert area[:464] == raw[:464] and area[464:512] == bytes(48)     # software bytes: the kernel's
    assert struct.unpack_from("<QQ", area, 512) == (0b11 | AVX | PKRU, 0)
    assert area[576:840] == raw[576:840]            # PKRU ends exactly at the area's end: kept
    smaller = build_area(raw[:512], e, LAYOUT, SIZE - 4)   # PKRU does not fit: left out
    assert len(smaller) == SIZE - 4 and struct.unpack_from("<Q", smaller, 512)[0] == 0b11 | AVX
