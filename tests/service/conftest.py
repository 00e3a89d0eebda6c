"""The service tests' own fixture: a `coldsnap service` on an address under the test's tmp_path."""
from __future__ import annotations

import pytest

from service_helpers import start_service


@pytest.fixture
def service(tmp_path):
    """A running service, stopped (cleanly: exit 0) at the end; test_service.py's own also
    points COLDSNAP_SERVICE at it."""
    svc = start_service(tmp_path)
    try:
        yield svc
    finally:
        assert svc.stop() == 0
