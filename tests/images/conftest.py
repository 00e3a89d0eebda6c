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
