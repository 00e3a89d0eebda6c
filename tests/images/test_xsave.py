"""The XSAVE area helpers on made-up areas: XCR0 read from FXSAVE's software bytes."""
import struct

from coldsnap.images.xsave import xcr0_of


def test_xcr0_is_read_where_the_area_holds_it_and_zero_when_too_short():
    raw = bytearray(472)
    struct.pack_into("<Q", raw, 464, 0x2e7)
    assert xcr0_of(bytes(raw)) == 0x2e7            # exactly long enough
    assert xcr0_of(bytes(raw) + b"\0" * 100) == 0x2e7
    assert xcr0_of(bytes(raw[:471])) == 0
