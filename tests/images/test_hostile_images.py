"""The minimal cases the image fuzzer (test_fuzz_images.py) found, each once a traceback or
a hang, now a one-line ImageError from show and from restore's loading."""
from __future__ import annotations

import pytest

from image_fuzz import Mutation, run_case


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
