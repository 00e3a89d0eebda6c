"""kcmp across two tasks: threads share everything, a forked child copies (own objects)."""
from __future__ import annotations

import os

import pytest

from coldsnap.kernel import kcmp as K

# a thread (shares vm, files, fs, sighand with the leader) and a forked child (copies them);
# the child shares its parent's open file descriptions (fd 0 here)
SCRIPT = """
import os, sys, threading, time
t = threading.Thread(target=time.sleep, args=(60,), daemon=True); t.start()
child = os.fork()
if child == 0:
    time.sleep(60); os._exit(0)
print(os.getpid(), t.native_id, child, flush=True)
sys.stdin.readline()
os.kill(child, 9); os.waitpid(child, 0)
"""


@pytest.fixture
def family(spawn, python_exe):
    w = spawn([python_exe, "-c", SCRIPT])
    return w, *(int(x) for x in w.ready.split())


@pytest.mark.parametrize("kind", [K.KCMP_VM, K.KCMP_FILES, K.KCMP_FS, K.KCMP_SIGHAND])
def test_thread_shares_child_does_not(family, kind):
    w, pid, tid, child = family
    assert K.same(pid, tid, kind)
    assert not K.same(pid, child, kind)
    # a total order: the two distinct objects compare the same way from both sides
    ab, ba = K.kcmp(pid, child, kind), K.kcmp(child, pid, kind)
    assert {ab, ba} == {K.LESS, K.GREATER}
    w.send("")


def test_same_file_across_tasks(family):
    w, pid, tid, child = family
    assert K.same_file(pid, 0, child, 0)       # inherited: one open file description
    assert not K.same_file(pid, 0, child, 1)
    w.send("")


def test_no_such_process():
    with pytest.raises(ProcessLookupError):
        K.kcmp(os.getpid(), 0x3FFFFFF0, K.KCMP_VM)
