"""The error taxonomy: typed, worded once, raised from the kernel bindings by errno."""
from __future__ import annotations

import errno
import os
import pickle
import subprocess

import numpy as np
import pytest

from coldsnap.errors import (AccessDenied, BadImage, CsError, ImageError, Interrupted, NoSuchProcess,
                             TargetError, Unsupported)
from coldsnap.kernel import ptrace, vm
from coldsnap.kernel.libc import process_error
from coldsnap.kernel.procfs import alive, read_maps, read_stat


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_taxonomy_and_words():
    assert issubclass(NoSuchProcess, TargetError) and issubclass(NoSuchProcess, ProcessLookupError)
    assert issubclass(AccessDenied, TargetError) and issubclass(AccessDenied, PermissionError)
    assert issubclass(Unsupported, TargetError) and BadImage is ImageError
    assert all(issubclass(c, CsError) for c in (TargetError, ImageError, Interrupted))
    assert str(NoSuchProcess(42)) == "process 42: no such process"
    assert str(NoSuchProcess(42, during="the dump")) == "process 42 exited during the dump"
    assert str(NoSuchProcess(42, what="cannot seize 42")) == "cannot seize 42: no such process"
    assert str(AccessDenied(7, "cannot seize 7", "already traced by 9")) == "cannot seize 7: already traced by 9"
    assert NoSuchProcess(42).errno == errno.ESRCH and AccessDenied(7).errno == errno.EPERM
    for e in (NoSuchProcess(5, "the dump"), AccessDenied(7, "x", "y", errno.EACCES), Interrupted(15)):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e)


def test_process_error_maps_errno():
    assert isinstance(process_error(errno.ESRCH, 9), NoSuchProcess)
    assert isinstance(process_error(errno.EACCES, 9), AccessDenied)
    other = process_error(errno.EFAULT, 9, "readv")
    assert type(other) is OSError and other.errno == errno.EFAULT


def test_bindings_raise_no_such_process_for_a_gone_pid():
    pid = _dead_pid()
    buf, iov = np.zeros(4096, np.uint8), np.array([[0x10000, 4096]], np.uint64)
    for call in (lambda: read_stat(pid), lambda: read_maps(pid), lambda: ptrace.seize(pid),
                 lambda: vm.readv(pid, buf.ctypes.data, 4096, iov, 1)):
        with pytest.raises(NoSuchProcess) as e:
            call()
        assert e.value.pid == pid and "\n" not in str(e.value)
    assert not alive(pid) and alive(os.getpid())


def test_the_blank_childs_error_keeps_its_class():
    from coldsnap.restore.blank import _report, _reported
    back = _reported(_report(AccessDenied(7, "fd 3", "cannot bind 127.0.0.1:80")))
    assert type(back) is AccessDenied and str(back) == "fd 3: cannot bind 127.0.0.1:80"
    other = _reported(_report(ValueError("odd")))
    assert type(other) is ImageError and str(other) == "odd"
    assert str(_reported(b"")) == "the restore child died while preparing"
