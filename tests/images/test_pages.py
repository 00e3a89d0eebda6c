"""PagemapWriter / PagemapReader: merging, ordering, CRIU-compatible bytes, pages file checks."""
from __future__ import annotations

import struct
from array import array

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from coldsnap.errors import ImageError
from coldsnap.images.directory import ImageDir, new_inventory
from coldsnap.images.framing import IMG_COMMON, MAGICS, read_image, write_image
from coldsnap.images.pages import (PE_LAZY, PE_PARENT, PE_PRESENT, PageRun, PagemapReader,
                                   PagemapWriter, encode_pagemap_entries)
from coldsnap.images.pb import pagemap_pb2
from imgtools import PAGE, make_dir, page_bytes


def test_worked_example_with_both_counts(tmp_path):
    """§1.5 plus our extra field 2 = 1: head pages_id=1, one page at 0x400000."""
    with ImageDir.create(tmp_path / "d") as d:
        with PagemapWriter(d, 1234) as w:
            w.add_present(0x400000, bytes(range(256)) * 16)
    data = (tmp_path / "d" / "pagemap-1234.img").read_bytes()
    expected = bytes.fromhex("19435654 25400856 02000000 0801"
                             "0b000000 0880808002 1001 2004 2801")
    assert data == expected
    assert (tmp_path / "d" / "pages-1.img").read_bytes() == bytes(range(256)) * 16


def test_merging_flags_and_arrays(tmp_path):
    with ImageDir.create(tmp_path / "d") as d:
        d.write("inventory.img", [new_inventory()])
        w = PagemapWriter(d, 7)
        assert w.pages_id == 1
        buf = np.frombuffer(page_bytes(0x10000, 6), np.uint8)
        w.add_present(0x10000, buf[:2 * PAGE])                 # numpy input
        w.add_present(0x12000, [memoryview(buf)[2 * PAGE:3 * PAGE],
                                bytearray(buf[3 * PAGE:4 * PAGE])])  # several buffers
        w.add_present(0x14000, buf[4 * PAGE:], lazy=True)     # different flags: new entry
        w.add_parent(0x16000, 3)
        w.add_parent(0x19000, 1)                               # merged
        w.add_skipped(0x20000, 2)
        w.add_skipped(0x22000, 1)                              # merged in the head
        w.add_parent(0x30000, 1)
        w.close()
        w.close()  # idempotent
        assert (w.nr_present, w.nr_parent, w.nr_skipped) == (6, 5, 3)
        w2 = PagemapWriter(d, 8)
        assert w2.pages_id == 2
        w2.close()  # no pages at all: pagemap with only a head, no pages file
    d = ImageDir.open(tmp_path / "d")
    r = PagemapReader(d, 7)
    assert r.runs() == [PageRun(0x10000, 4, PE_PRESENT, 0),
                        PageRun(0x14000, 2, PE_PRESENT | PE_LAZY, 4 * PAGE),
                        PageRun(0x16000, 4, PE_PARENT, 6 * PAGE),
                        PageRun(0x30000, 1, PE_PARENT, 6 * PAGE)]
    assert r.vaddr.typecode == "Q" and len(r) == 4
    assert r.skipped.pairs() == [(0x20000, 0x23000)]
    assert r.read_pages(0x10000, 6) == page_bytes(0x10000, 6)   # spans two entries
    assert r.read_pages(0x13000, 2) == page_bytes(0x13000, 2)
    with pytest.raises(ImageError, match="no data"):
        r.read_pages(0x15000, 2)
    r.close()
    empty = PagemapReader(d, 8)
    assert len(empty) == 0 and not (tmp_path / "d" / "pages-2.img").exists()
    head, *entries = read_image(tmp_path / "d" / "pagemap-7.img")
    assert all(e.compat_nr_pages == e.nr_pages for e in entries)


def test_order_and_shape_violations(tmp_path):
    with ImageDir.create(tmp_path / "d") as d:
        w = PagemapWriter(d, 1)
        w.add_present(0x10000, bytes(2 * PAGE))
        for bad in (lambda: w.add_parent(0x11000, 1),          # overlaps
                    lambda: w.add_present(0x10000, bytes(PAGE)),  # repeats
                    lambda: w.add_skipped(0x8000, 1)):            # goes back
            with pytest.raises(ImageError, match="ascending"):
                bad()
        with pytest.raises(ValueError):
            w.add_present(0x20000, bytes(100))
        with pytest.raises(ValueError):
            w.add_parent(0x20001, 1)
        with pytest.raises(ValueError):
            w.add_parent(0x20000, 0)
        w.add_parent(0x12000, 1)   # right after the last run is fine
        w.close()
        with pytest.raises(ImageError, match="closed"):
            w.add_parent(0x40000, 1)


def test_reads_criu_style_entries(tmp_path):
    """CRIU writes compat 0 + field 5; old images have only field 2 or in_parent."""
    d = tmp_path / "d"
    d.mkdir()
    write_image(d / "inventory.img", None, [new_inventory()])
    E = pagemap_pb2.pagemap_entry
    write_image(d / "pagemap-5.img", None, [
        pagemap_pb2.pagemap_head(pages_id=3),
        E(vaddr=0x1000, compat_nr_pages=0, flags=PE_PRESENT | PE_LAZY, nr_pages=2),
        E(vaddr=0x3000, compat_nr_pages=1),                      # no flags: present
        E(vaddr=0x5000, compat_nr_pages=4, in_parent=True)])     # legacy parent
    (d / "pages-3.img").write_bytes(page_bytes(0x1000, 3))
    r = PagemapReader(ImageDir.open(d), 5)
    assert [(x.vaddr, x.nr_pages, x.flags) for x in r.runs()] == [
        (0x1000, 2, PE_PRESENT | PE_LAZY), (0x3000, 1, PE_PRESENT), (0x5000, 4, PE_PARENT)]
    assert r.read_pages(0x3000, 1) == page_bytes(0x1000, 3)[2 * PAGE:]


def test_pages_file_checks(tmp_path):
    d = make_dir(tmp_path / "d", runs=[("present", 0x1000, 3)])
    pages = tmp_path / "d" / "pages-1.img"
    pages.write_bytes(pages.read_bytes()[:-1])
    with pytest.raises(ImageError, match="truncated"):
        PagemapReader(d, 4242)
    pages.unlink()
    with pytest.raises(ImageError, match="missing"):
        PagemapReader(d, 4242)
    # Overlapping entries in a foreign file are refused.
    write_image(tmp_path / "d" / "pagemap-9.img", None, [
        pagemap_pb2.pagemap_head(pages_id=9),
        pagemap_pb2.pagemap_entry(vaddr=0x2000, compat_nr_pages=2, flags=PE_PARENT),
        pagemap_pb2.pagemap_entry(vaddr=0x3000, compat_nr_pages=1, flags=PE_PARENT)])
    with pytest.raises(ImageError, match="overlaps"):
        PagemapReader(d, 9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                          st.integers(0, 2**32 - 1)), max_size=30))
def test_plain_and_vectorised_encodings_match_protobuf(rows):
    from coldsnap.images import pages_np
    v = np.array([r[0] for r in rows], np.uint64)
    n = np.array([r[1] for r in rows], np.uint64)
    f = np.array([r[2] for r in rows], np.uint32)
    want = b""
    for a, b, c in rows:
        m = pagemap_pb2.pagemap_entry(vaddr=a, compat_nr_pages=b if b < 2**32 else 0, flags=c,
                                      nr_pages=b).SerializeToString()
        want += struct.pack("<I", len(m)) + m
    assert pages_np.encode_pagemap_entries(v, n, f) == want
    assert encode_pagemap_entries(array("Q", v.tolist()), array("Q", n.tolist()), array("I", f.tolist())) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**52 - 1), st.integers(0, 3), st.sampled_from([1, 2, 4, 6])),
                max_size=40))
def test_page_aligned_entries_encode_as_protobuf(rows):
    # page numbers close together: the encoder reuses what entries of one 2 MiB area share
    rows = [(a << 12, b, c) for a, b, c in rows] + [((a << 12) | 0x1000, b, c) for a, b, c in rows]
    want = b""
    for a, b, c in rows:
        m = pagemap_pb2.pagemap_entry(vaddr=a, compat_nr_pages=b, flags=c, nr_pages=b).SerializeToString()
        want += struct.pack("<I", len(m)) + m
    v, n, f = (array("Q", [r[i] for r in rows]) for i in range(3))
    assert encode_pagemap_entries(v, n, f) == want


def test_header_constants():
    assert struct.pack("<I", IMG_COMMON) == bytes.fromhex("19435654")
    assert struct.pack("<I", MAGICS["PAGEMAP"]) == bytes.fromhex("25400856")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {"vaddr": st.integers(0, 2**52 - 1), "compat_nr_pages": st.integers(0, 2**32 - 1)},
    optional={"in_parent": st.booleans(), "flags": st.integers(0, 2**32 - 1),
              "nr_pages": st.integers(0, 2**64 - 1)}), min_size=1, max_size=20),
       st.booleans())
def test_plain_and_vectorised_decodings_match_protobuf(entries, foreign_field):
    """The fast readers agree with protobuf, also for CRIU/old layouts and unknown fields."""
    from coldsnap.images.framing import check_header, kind_for
    from coldsnap.images.pages import _entry_bounds, decode_pagemap_entries
    msgs = [pagemap_pb2.pagemap_entry(**e) for e in entries]
    head = pagemap_pb2.pagemap_head(pages_id=1).SerializeToString()
    data = struct.pack("<II", IMG_COMMON, MAGICS["PAGEMAP"]) + struct.pack("<I", len(head)) + head
    for m in msgs:
        body = m.SerializeToString()
        if foreign_field:
            body += b"\xb8\x3e\x05"   # unknown varint field 999: skipped like protobuf does
        data += struct.pack("<I", len(body)) + body
    view = memoryview(data)
    pos = check_header(view, kind_for("pagemap-1.img"), "t") + 4 + len(head)
    starts, sizes = _entry_bounds(view, pos, "t")
    from coldsnap.images import pages_np
    vectorised = [x.tolist() for x in pages_np.decode_pagemap_entries(
        np.frombuffer(data, np.uint8), np.asarray(starts, np.int64), np.asarray(sizes, np.int64))]
    plain = decode_pagemap_entries(data, starts, sizes)
    for vaddr, compat, in_parent, flags, has_f, nr, has_n in (vectorised, plain):
        assert list(vaddr) == [m.vaddr for m in msgs]
        assert list(compat) == [m.compat_nr_pages for m in msgs]
        assert list(in_parent) == [m.in_parent for m in msgs]
        assert list(has_f) == [m.HasField("flags") for m in msgs]
        assert [f for f, h in zip(flags, has_f) if h] == [m.flags for m in msgs if m.HasField("flags")]
        assert list(has_n) == [m.HasField("nr_pages") for m in msgs]
        assert [v for v, h in zip(nr, has_n) if h] == [m.nr_pages for m in msgs if m.HasField("nr_pages")]


def test_reader_falls_back_on_unusual_fields(tmp_path):
    """A length-delimited unknown field (a future CRIU's?) goes through protobuf instead."""
    d = tmp_path / "d"
    d.mkdir()
    write_image(d / "inventory.img", None, [new_inventory()])
    head = pagemap_pb2.pagemap_head(pages_id=1).SerializeToString()
    body = pagemap_pb2.pagemap_entry(vaddr=0x1000, compat_nr_pages=0, flags=PE_PARENT,
                                     nr_pages=3).SerializeToString() + b"\x32\x02\x01\x02"
    (d / "pagemap-3.img").write_bytes(struct.pack("<II", IMG_COMMON, MAGICS["PAGEMAP"]) +
                                      struct.pack("<I", len(head)) + head +
                                      struct.pack("<I", len(body)) + body)
    r = PagemapReader(ImageDir.open(d), 3)
    assert r.runs() == [PageRun(0x1000, 3, PE_PARENT, 0)]
    # A truncated entry is reported, not misread.
    p = d / "pagemap-3.img"
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(ImageError, match="truncated entry 1"):
        PagemapReader(ImageDir.open(d), 3)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3)), min_size=1, max_size=40))
@settings(max_examples=40, deadline=None)
def test_runs_in_one_call_make_the_same_pagemap_as_one_by_one(tmp_path_factory, steps):
    """add_runs / add_copied (numpy for many runs) against add_present per run: same bytes."""
    vaddrs, lengths, at = [], [], 0x100000
    for gap, n in steps:
        at += gap * PAGE                 # gap 0: touching runs, joined into one entry
        vaddrs.append(at)
        lengths.append(n * PAGE)
        at += n * PAGE
    data = page_bytes(0x100000, sum(lengths) // PAGE)
    v, n = np.array(vaddrs, np.uint64), np.array(lengths, np.uint64)
    out = []
    for how in ("one by one", "runs", "copied"):
        root = tmp_path_factory.mktemp("d")
        with ImageDir.create(root / "d") as d:
            with PagemapWriter(d, 1) as w:
                w.add_parent(0x1000, 1)
                if how == "one by one":
                    off = 0
                    for a, size in zip(vaddrs, lengths):
                        w.add_present(a, data[off:off + size])
                        off += size
                elif how == "runs":
                    w.add_runs(v, n, data)
                else:
                    w.reserve(len(data)).pwrite(data, 0)
                    w.add_copied(v, n)
                w.add_parent(at + PAGE, 2)
        out.append(((root / "d" / "pagemap-1.img").read_bytes(), (root / "d" / "pages-1.img").read_bytes()))
    assert out[0] == out[1] == out[2]


def test_runs_out_of_order_are_refused(tmp_path):
    with ImageDir.create(tmp_path / "d") as d:
        w = PagemapWriter(d, 1)
        v = np.array([0x10000 + i * 2 * PAGE for i in range(10)], np.uint64)
        v[5] = v[4]                                        # overlaps its predecessor
        with pytest.raises(ImageError, match="strictly ascending"):
            w.add_copied(v, np.full(10, PAGE, np.uint64))
        w.abort()
