"""Image framing: round trips of every kind, exact bytes, and the errors readers raise."""
from __future__ import annotations

import re
import struct

import pytest

from coldsnap.errors import CsError, ImageError
from coldsnap.images import framing
from coldsnap.images.framing import (IMG_COMMON, IMG_SERVICE, KINDS, MAGICS, ImageWriter,
                                     kind_for, read_entries, read_image, read_single, write_image)
from coldsnap.images.pb import pagemap_pb2, pipe_pb2, pstree_pb2
from imgtools import sample_images


def test_round_trip_every_kind(tmp_path):
    samples = sample_images()
    written = {kind_for(n).pattern for n in samples}
    # Every non-raw kind is exercised by the samples.
    assert written == {k.pattern for k in KINDS if k.message is not None}
    for name, entries in samples.items():
        assert write_image(tmp_path / name, None, entries) == len(entries)
        got = read_entries(tmp_path / name)
        want = [e if isinstance(e, tuple) else (e, None) for e in entries]
        assert got == want, name


def test_warm_up_fills_every_kind_and_reading_stays_the_same(tmp_path):
    """A service's warm-up (every kind's caches, one parse of each type) changes no result."""
    framing.warm_up()
    assert framing._name_shape.cache_info().currsize == len({k.pattern for k in KINDS})
    refs = {r for k in KINDS for r in (k.message, k.head) if r}
    assert framing._message_class.cache_info().currsize >= len(refs)
    test_round_trip_every_kind(tmp_path)
    full = framing._filled(pstree_pb2.pstree_entry())
    assert not full.ListFields()                    # no message fields: nothing set
    head = framing._filled(pagemap_pb2.pagemap_head())
    assert len(head.cs_skipped) == 1                # a repeated message field: one element


def test_headers(tmp_path):
    s = sample_images()
    for name in s:
        write_image(tmp_path / name, None, s[name])
    u32 = lambda v: struct.pack("<I", v)
    assert (tmp_path / "inventory.img").read_bytes()[:8] != u32(IMG_COMMON)
    assert (tmp_path / "inventory.img").read_bytes()[:4] == u32(MAGICS["INVENTORY"])
    assert (tmp_path / "stats-dump").read_bytes()[:8] == u32(IMG_SERVICE) + u32(MAGICS["STATS"])
    assert (tmp_path / "pstree.img").read_bytes()[:8] == u32(IMG_COMMON) + u32(MAGICS["PSTREE"])
    assert (tmp_path / "pagemap-shmem-55.img").read_bytes()[4:8] == u32(MAGICS["PAGEMAP"])


def test_reference_worked_example_bytes(tmp_path):
    """§1.5: CRIU's own pagemap-1234.img (compat count 0, count in field 5)."""
    expected = bytes.fromhex("19435654 25400856 02000000 0801 0b000000 0880808002 1000 2004 2801")
    path = tmp_path / "pagemap-1234.img"
    write_image(path, None, [pagemap_pb2.pagemap_head(pages_id=1), pagemap_pb2.pagemap_entry(
        vaddr=0x400000, compat_nr_pages=0, flags=4, nr_pages=1)])
    assert path.read_bytes() == expected
    head, entry = read_image(path)
    assert head.pages_id == 1 and entry.nr_pages == 1 and entry.compat_nr_pages == 0


def test_writer_is_lazy(tmp_path):
    with ImageWriter(tmp_path / "pstree.img") as w:
        pass
    assert w.count == 0 and not (tmp_path / "pstree.img").exists()
    assert write_image(tmp_path / "files.img", None, []) == 0
    assert not (tmp_path / "files.img").exists()
    assert read_image(tmp_path / "files.img", missing_ok=True) == []


def _pstree(tmp_path):
    path = tmp_path / "pstree.img"
    write_image(path, None, [pstree_pb2.pstree_entry(pid=1, ppid=0, pgid=1, sid=1, threads=[1]),
                             pstree_pb2.pstree_entry(pid=2, ppid=1, pgid=1, sid=1, threads=[2])])
    return path, path.read_bytes()


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:4] + struct.pack("<I", MAGICS["CORE"]) + b[8:], "bad magic"),
    (lambda b: struct.pack("<I", 0x12345678) + b[4:], "bad magic"),
    (lambda b: b[:6], "shorter than the magic"),
    (lambda b: b + b"\x01\x00", "size prefix cut"),
    (lambda b: b[:-1], "truncated entry 1"),
    (lambda b: b + struct.pack("<I", 3) + b"\xff\xff\xff", "not a valid pstree_entry"),
])
def test_read_errors(tmp_path, mutate, message):
    path, data = _pstree(tmp_path)
    path.write_bytes(mutate(data))
    with pytest.raises(ImageError, match=message) as err:
        read_image(path)
    assert isinstance(err.value, CsError)


def test_missing_required_field_on_read(tmp_path):
    # An entry lacking required fields (here: only pid) is refused with a typed error.
    path, data = _pstree(tmp_path)
    body = pstree_pb2.pstree_entry(pid=3).SerializePartialToString()
    path.write_bytes(data[:8] + struct.pack("<I", len(body)) + body)
    with pytest.raises(ImageError, match="not a valid"):
        read_image(path)


def test_other_errors(tmp_path):
    with pytest.raises(ImageError, match="not an image file"):
        kind_for(tmp_path / "mystery.bin")
    with pytest.raises(ImageError, match="no such image"):
        read_image(tmp_path / "pstree.img")
    with pytest.raises(ImageError, match="raw image"):
        ImageWriter(tmp_path / "pages-1.img")
    (tmp_path / "pages-1.img").write_bytes(bytes(4096))
    with pytest.raises(ImageError, match="raw image"):
        read_image(tmp_path / "pages-1.img")
    with pytest.raises(ImageError, match="lacks required"):
        write_image(tmp_path / "pstree.img", None, [pstree_pb2.pstree_entry(pid=1)])
    with pytest.raises(TypeError):
        write_image(tmp_path / "pstree.img", None, [pagemap_pb2.pagemap_head(pages_id=1)])
    inv = sample_images()["inventory.img"][0]
    with pytest.raises(ImageError, match="exactly one"):
        write_image(tmp_path / "inventory.img", None, [inv, inv])
    # A single-entry file holding two entries is refused on read.
    one = (tmp_path / "inventory.img").read_bytes()
    body = one[4:]
    (tmp_path / "inventory.img").write_bytes(one + body)
    with pytest.raises(ImageError, match="one entry"):
        read_single(tmp_path / "inventory.img")
    (tmp_path / "pagemap-1.img").write_bytes(struct.pack("<II", IMG_COMMON, MAGICS["PAGEMAP"]))
    with pytest.raises(ImageError, match="head"):
        read_image(tmp_path / "pagemap-1.img")


def test_pipe_payloads(tmp_path):
    path = tmp_path / "pipes-data.img"
    e = pipe_pb2.pipe_data_entry(pipe_id=1, bytes=4)
    with pytest.raises(ImageError, match="payload"):
        write_image(path, None, [(e, b"abc")])
    with pytest.raises(ImageError, match="payload"):
        write_image(path, None, [e])
    with pytest.raises(ImageError, match="no payload"):
        write_image(tmp_path / "pstree.img", None,
                    [(pstree_pb2.pstree_entry(pid=1, ppid=0, pgid=1, sid=1), b"x")])
    big = bytes(range(256)) * 300
    write_image(path, None, [(pipe_pb2.pipe_data_entry(pipe_id=1, bytes=len(big)), big),
                             (pipe_pb2.pipe_data_entry(pipe_id=2, bytes=1), b"z")])
    (m1, p1), (m2, p2) = read_entries(path)
    assert (m1.pipe_id, p1, m2.pipe_id, p2) == (1, big, 2, b"z")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ImageError, match="truncated payload"):
        read_entries(path)


def test_file_names():
    assert kind_for("pagemap-7.img").file_name(9) == "pagemap-9.img"
    assert kind_for("pagemap-shmem-7.img").file_name(9) == "pagemap-shmem-9.img"
    assert kind_for("stats-dump").file_name() == "stats-dump"
    assert kind_for("pages-3.img").name == "PAGES"
    with pytest.raises(ValueError):
        kind_for("files.img").file_name(3)


def test_an_image_that_cannot_be_created_is_a_one_line_error(tmp_path):
    from coldsnap.images.framing import create_image_file
    with pytest.raises(ImageError, match=r"nowhere/x\.img: cannot create image: No such file or directory$"):
        create_image_file(tmp_path / "nowhere" / "x.img")


def test_a_fifo_as_an_image_is_refused_without_an_fd_left_open(tmp_path):
    import os
    from coldsnap.images.framing import read_image
    os.mkfifo(tmp_path / "core-1.img")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(ImageError, match="not a regular file"):
            read_image(tmp_path / "core-1.img")
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_missing_image_is_missing_unless_asked_otherwise(tmp_path):
    from coldsnap.images.framing import read_entries
    with pytest.raises(ImageError, match="core-1.img: no such image"):
        read_entries(tmp_path / "core-1.img")
    assert read_entries(tmp_path / "core-1.img", missing_ok=True) == []


def test_file_names_match_as_their_regex_says():
    """kind_for matches names by string operations (no regex compiled per kind): the same
    answers as the kind's pattern."""
    names = ["core-12.img", "core-.img", "core-1a.img", "core-5.imgx", "xcore-5.img", "pagemap-3.img",
             "pagemap-shmem-3.img", "pagemap-shmem-.img", "tcp-stream-1af.img", "tcp-stream-1AF.img",
             "ghost-file-0.img", "stats-dump", "stats-dumpx", "inventory.img", "inventoryXimg", "files.img",
             "pages-1.img", "ipcns-sem-2.img", "mm-5.img", "fdinfo-٣.img", "seccomp.img", "memfd.img"]
    for kind in KINDS:
        for name in names:
            assert kind.matches(name) == (re.fullmatch(kind.pattern, name) is not None and name.isascii()), \
                (kind.pattern, name)
