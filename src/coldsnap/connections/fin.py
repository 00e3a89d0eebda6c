"""A FIN from the peer, crafted: how a rebuilt socket learns that its peer had closed.

TCP_REPAIR can put bytes back in a receive queue, but not the peer's FIN. A socket dumped
in CLOSE_WAIT is rebuilt as an established one, then handed a FIN|ACK segment that claims
to come from the peer, with exactly the sequence numbers the peer used; the kernel then
moves it to CLOSE_WAIT itself. The segment is sent on a raw socket carrying the network
lock's mark (LOCK_MARK), which the lock lets through while it drops everything else of
the connection. Facts: RFC 9293 (header, pseudo-header checksum), raw(7), ipv6(7).
"""
from __future__ import annotations

import socket
import struct

LOCK_MARK = 0xC114             # SO_MARK of coldsnap's own packets (CRIU uses the same value)
TH_FIN, TH_ACK = 0x01, 0x10
_TCP = struct.Struct("!HHIIBBHHH")        # ports, seq, ack, offset, flags, window, sum, urgent
_IP4 = struct.Struct("!BBHHHBBH4s4s")
SO_MARK = getattr(socket, "SO_MARK", 36)


def send_segment(family: int, src: tuple, dst: tuple, seq: int, ack: int, flags: int, window: int) -> None:
    """One TCP segment without payload or options from SRC to DST ((addr, port) each)."""
    fam = socket.AF_INET if family == socket.AF_INET else socket.AF_INET6
    s_addr, d_addr = socket.inet_pton(fam, src[0]), socket.inet_pton(fam, dst[0])
    tcp = _TCP.pack(src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                    min(window, 0xFFFF), 0, 0)
    if fam == socket.AF_INET:
        pseudo = s_addr + d_addr + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        # the kernel fills in the total length, the id and the header checksum
        ip = _IP4.pack(0x45, 0, 0, 0, 0, 64, socket.IPPROTO_TCP, 0, s_addr, d_addr)
    else:
        pseudo = s_addr + d_addr + struct.pack("!IxxxB", len(tcp), socket.IPPROTO_TCP)
        ip = struct.pack("!IHBB", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64) + s_addr + d_addr
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    with socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:   # we write the IP header
        raw.setsockopt(socket.SOL_SOCKET, SO_MARK, LOCK_MARK)
        raw.sendto(ip + tcp, (dst[0], 0))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
