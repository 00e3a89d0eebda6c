"""kernel/fdio.write_all: every byte out, through a pipe and at an offset."""
from __future__ import annotations

import os
import threading

from coldsnap.kernel.fdio import write_all


def test_write_all_through_a_pipe_smaller_than_the_data():
    r, w = os.pipe2(os.O_CLOEXEC)
    data = os.urandom(1 << 20)          # 16 pipe buffers, read while written
    got = bytearray()

    def read():
        while chunk := os.read(r, 65536):
            got.extend(chunk)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        write_all(w, memoryview(data))
    finally:
        os.close(w)
        reader.join(10)
        os.close(r)
    assert bytes(got) == data


def test_write_all_at_an_offset(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, b"x" * 10)
        write_all(fd, b"abc", 4)
        write_all(fd, b"", 100)
        assert os.pread(fd, 100, 0) == b"xxxxabcxxx"
        assert os.lseek(fd, 0, os.SEEK_CUR) == 10        # pwrite leaves the file offset alone
    finally:
        os.close(fd)


def test_write_all_of_several_buffers_back_to_back(tmp_path):
    """More buffers than one writev takes (IOV_MAX), empty ones among them, at an offset."""
    from coldsnap.kernel.fdio import IOV_MAX
    bufs = [bytes([i % 251]) * (i % 3) for i in range(IOV_MAX * 2 + 5)]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, bufs, 7)
        assert os.pread(fd, 1 << 20, 7) == b"".join(bufs)
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            write_all(w, [b"ab", memoryview(b"cd"), b"", bytearray(b"e")])
            assert os.read(r, 100) == b"abcde"
        finally:
            os.close(r)
            os.close(w)
    finally:
        os.close(fd)
