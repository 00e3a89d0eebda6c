"""The minimal cases the image fuzzer (test_fuzz_images.py) found, each once a traceback or
a hang, now a one-line ImageError from show and from restore's loading."""
from __future__ import annotations

import pytest

from coldsnap.images.pb import fdinfo_pb2

from image_fuzz import Mutation, run_case


def _entry_of_type(pristine, layout, kind: int):
    from coldsnap.images.framing import kind_for, read_entries
    msgs = [m for m, _ in read_entries(pristine / "files.img", kind_for("files.img"))]
    index = next(i for i, m in enumerate(msgs) if m.type == kind)
    return layout.entries["files.img"][index]


def _pages(layout) -> str:
    return next(n for n in layout.files if n.startswith("pages-"))


def _refused(pristine, m: Mutation, tmp_path, words: str) -> None:
    out = run_case(pristine, m, tmp_path)
    assert out.failure is None, out.failure
    assert not out.accepted and out.error and words in out.error, out.error


@pytest.mark.parametrize("target, words", [("fifo", "not a regular file"), ("/dev/zero", "not a regular file"),
                                           ("self", "symbolic links")])
def test_a_pages_file_that_is_no_regular_file(fuzz_dump, tmp_path, target, words):
    """A FIFO in place of a pages file blocked the reader for ever; a device never ended;
    a symlink to itself got an OSError traceback out of the pages file check."""
    pristine, layout = fuzz_dump
    name = _pages(layout)
    _refused(pristine, Mutation("symlink", name, (name if target == "self" else target,)), tmp_path, words)


@pytest.mark.parametrize("name", ["pstree.img", "inventory.img", "files.img"])
def test_a_fifo_in_place_of_an_image(fuzz_dump, tmp_path, name):
    pristine, _ = fuzz_dump
    _refused(pristine, Mutation("symlink", name, ("fifo",)), tmp_path, "not a regular file")


def test_a_file_entry_whose_part_names_another_id(fuzz_dump, tmp_path):
    """files.img entry N whose reg part says id M: filed under M, a KeyError once an fd
    table looked N up."""
    pristine, layout = fuzz_dump
    entry = _entry_of_type(pristine, layout, fdinfo_pb2.REG)
    _refused(pristine, Mutation("field", "files.img", (entry, (("reg", None), ("id", None)), 4242)),
             tmp_path, "describes file 4242")


def test_a_file_entry_retyped(fuzz_dump, tmp_path):
    """A REG entry whose type says INETSK: the socket reader choked on its absent
    address family (ValueError)."""
    pristine, layout = fuzz_dump
    entry = _entry_of_type(pristine, layout, fdinfo_pb2.REG)
    index = [v.number for v in fdinfo_pb2.fd_types.DESCRIPTOR.values].index(fdinfo_pb2.INETSK)
    _refused(pristine, Mutation("field", "files.img", (entry, (("type", None),), index)),
             tmp_path, "not a valid INETSK file")


@pytest.mark.parametrize("flag", ["O_TRUNC", "O_CREAT"])
def test_a_regular_file_with_create_or_truncate_flags(fuzz_dump, tmp_path, flag):
    """The kernel clears O_CREAT/O_EXCL/O_TRUNC/O_NOCTTY from an open file's flags, so no
    dump has them; restore hands the flags to open(2), which would truncate or create the
    file: refused before."""
    import os
    from coldsnap.images.framing import kind_for, read_entries
    pristine, layout = fuzz_dump
    msgs = [m for m, _ in read_entries(pristine / "files.img", kind_for("files.img"))]
    index = next(i for i, m in enumerate(msgs) if m.type == fdinfo_pb2.REG and m.reg.name.endswith("/data"))
    flags = msgs[index].reg.flags | getattr(os, flag)
    _refused(pristine, Mutation("field", "files.img", (layout.entries["files.img"][index],
                                                       (("reg", None), ("flags", None)), flags)),
             tmp_path, "create/truncate flags")


def test_a_path_that_is_not_utf8(fuzz_dump, tmp_path):
    """A byte of a file's path flipped into invalid UTF-8: protobuf handed it over as bytes
    and the terminal check's regular expression raised TypeError."""
    from coldsnap.images.framing import kind_for, read_entries
    pristine, layout = fuzz_dump
    msgs = [m for m, _ in read_entries(pristine / "files.img", kind_for("files.img"))]
    index = next(i for i, m in enumerate(msgs) if m.type == fdinfo_pb2.REG)
    entry = layout.entries["files.img"][index]
    at = (pristine / "files.img").read_bytes().index(msgs[index].reg.name.encode(), entry.offset)
    _refused(pristine, Mutation("flip", "files.img", (at + 1, 0xAA)), tmp_path, "is not UTF-8 text")


def test_a_path_with_a_newline_is_named_on_one_line(fuzz_dump, tmp_path):
    """A path holding a newline (a byte of a file's name flipped into one) made the
    command's error two lines: control characters are shown escaped."""
    from coldsnap.images.framing import kind_for, read_entries
    from procs import coldsnap
    pristine, layout = fuzz_dump
    msgs = [m for m, _ in read_entries(pristine / "files.img", kind_for("files.img"))]
    index = next(i for i, m in enumerate(msgs) if m.type == fdinfo_pb2.REG and m.reg.name.endswith("/log"))
    at = (pristine / "files.img").read_bytes().index(b"/log", layout.entries["files.img"][index].offset)
    case = tmp_path / "case"
    case.mkdir()
    Mutation("flip", "files.img", (at + 1, ord("l") ^ ord("\n"))).apply(pristine, case)
    run = coldsnap("restore", "-D", case, "-d")
    assert run.returncode == 6 and run.stderr.count("\n") == 1, run.stderr
    assert "/\\nog is gone" in run.stderr


def test_a_memfd_file_whose_inode_is_not_in_memfd_img(fuzz_dump, tmp_path):
    """A MEMFD file entry naming an inode memfd.img does not hold was dropped without a
    word (a check that could never fail): now refused, one line, the image exit code."""
    from coldsnap.images.pb import fown_pb2, memfd_pb2
    from procs import coldsnap
    pristine, _ = fuzz_dump
    e = fdinfo_pb2.file_entry(type=fdinfo_pb2.MEMFD, id=4243)
    e.memfd.CopyFrom(memfd_pb2.memfd_file_entry(id=4243, flags=2, pos=0, inode_id=77,
                                                fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0,
                                                                         pid_type=0, pid=0)))
    raw = e.SerializeToString()
    m = Mutation("append", "files.img", (len(raw).to_bytes(4, "little") + raw,))
    words = "memfd file 4243: inode 77 is not in memfd.img"
    _refused(pristine, m, tmp_path, words)
    case = tmp_path / "cmd"
    case.mkdir()
    m.apply(pristine, case)
    run = coldsnap("restore", "-D", case, "-d")
    assert run.returncode == 6 and run.stderr.count("\n") == 1 and words in run.stderr, run.stderr
