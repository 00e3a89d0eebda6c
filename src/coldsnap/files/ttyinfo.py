"""What CRIU records of a terminal (tty-info.img): termios, locked termios, window size,
session and foreground group, device numbers and owner, the pty index. Read at dump from
the task's open file (a copy of it), written as a serialized tty_info_entry."""
from __future__ import annotations

import fcntl
import os
import struct

from coldsnap.images.pb import tty_info_pb2

TCGETS, TIOCGLCKTRMIOS, TIOCGWINSZ = 0x5401, 0x5456, 0x5413
TIOCGPGRP, TIOCGSID, TIOCGEXCL = 0x540F, 0x5429, 0x80045440
TERMIOS = struct.Struct("<4IB19s")            # struct termios: 4 flags, c_line, c_cc[19]
NCC = 19
PTS_MAJOR = 136


def _ioctl(fd: int, req: int, size: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, req, bytes(size))
    except OSError:
        return None


def _termios(raw: bytes | None):
    if raw is None:
        return None
    iflag, oflag, cflag, lflag, line, cc = TERMIOS.unpack_from(raw)
    # CRIU copies the 19 c_cc bytes over its 19 u32 words (so the first five carry them)
    words = struct.unpack(f"<{NCC}I", cc.ljust(4 * NCC, b"\0"))
    return tty_info_pb2.termios_entry(c_iflag=iflag, c_oflag=oflag, c_cflag=cflag, c_lflag=lflag,
                                      c_line=line, c_ispeed=0, c_ospeed=0, c_cc=words)


def _int(fd: int, req: int) -> int:
    raw = _ioctl(fd, req, 4)
    return struct.unpack("<i", raw)[0] if raw is not None else 0


def tty_info(fd: int, st: os.stat_result) -> bytes | None:
    """The serialized tty_info_entry of the terminal open on FD (a pty slave only: the kind
    a --shell-job restore re-attaches; None for other terminals, which stay REG entries)."""
    major = os.major(st.st_rdev)
    if not PTS_MAJOR <= major < PTS_MAJOR + 8:
        return None
    e = tty_info_pb2.tty_info_entry(id=0, type=tty_info_pb2.PTY, locked=False, exclusive=bool(_int(fd, TIOCGEXCL)),
                                    packet_mode=False, sid=max(_int(fd, TIOCGSID), 0),
                                    pgrp=max(_int(fd, TIOCGPGRP), 0), rdev=st.st_rdev, dev=st.st_dev,
                                    uid=st.st_uid, gid=st.st_gid)
    t = _termios(_ioctl(fd, TCGETS, TERMIOS.size))
    if t is not None:
        e.termios.CopyFrom(t)
    t = _termios(_ioctl(fd, TIOCGLCKTRMIOS, TERMIOS.size))
    if t is not None:
        e.termios_locked.CopyFrom(t)
    ws = _ioctl(fd, TIOCGWINSZ, 8)
    if ws is not None:
        row, col, xpix, ypix = struct.unpack("<4H", ws)
        e.winsize.ws_row, e.winsize.ws_col, e.winsize.ws_xpixel, e.winsize.ws_ypixel = row, col, xpix, ypix
    e.pty.index = (major - PTS_MAJOR) * 256 + os.minor(st.st_rdev)
    return e.SerializeToString()
