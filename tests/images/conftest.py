"""Fixtures of the image tests; helpers live in imgtools.py."""
from __future__ import annotations

import os

import pytest

from imgtools import CRIT


@pytest.fixture
def need_crit() -> str:
    if not os.path.exists(CRIT):
        pytest.skip("crit is not installed")
    return CRIT


@pytest.fixture(scope="session")
def fuzz_dump(tmp_path_factory):
    """(images, layout): one dump of tests/workloads/fuzz_pair.c (a parent and its child,
    both gone once it is made) that the hostile-image tests copy and mutate."""
    from image_fuzz import Layout, make_dump
    images = make_dump(tmp_path_factory.mktemp("fuzz"))
    return images, Layout.of(images)
