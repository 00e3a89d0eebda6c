"""Final-dump task state: every value checked against what the workload says about itself."""
from __future__ import annotations

import os
import signal
import struct

import pytest

from coldsnap.dump.task_state import SIGACTION_SIGNALS, collect_task_state, dump_task_state
from coldsnap.images.directory import ImageDir
from coldsnap.images.framing import read_single
from coldsnap.kernel.procfs import read_maps, read_stat
from coldsnap.seize.freezer import freeze
from tests.conftest import proc_state

from procs import crit_decode

SA_SIGINFO, SA_ONSTACK, SA_RESTART, SA_RESTORER = 0x4, 0x08000000, 0x10000000, 0x04000000
SA_NOCLDSTOP = 0x1
SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGPWR = 1, 10, 12, 14, 30
SS_DISABLE = 2
RSEQ_SIG = 0x53053053
AT_PHDR, AT_PAGESZ, AT_ENTRY = 3, 6, 9


def _start(spawn, workload_bin):
    w = spawn([workload_bin("state_threads")])
    info = {}
    for kv in w.ready.split():
        k, v = kv.split("=")
        info[k] = int(v, 0)
    return w, info


@pytest.fixture
def dumped(spawn, workload_bin):
    w, info = _start(spawn, workload_bin)
    with freeze(w.pid) as task:
        state = collect_task_state(task)
    return w, info, state


def _u(mem: int, addr: int, fmt: str):
    return struct.unpack(fmt, os.pread(mem, struct.calcsize(fmt), addr))


def test_threads_registers_tls_rseq(dumped):
    w, info, st = dumped
    tids = [info["tid"]] + [info[f"w{i}_tid"] for i in (1, 2, 3)]
    selfs = [info["self"]] + [info[f"w{i}_self"] for i in (1, 2, 3)]
    assert st.tids == sorted(tids) and st.pid == w.pid
    exec_maps = [m for m in read_maps(w.pid) if "x" in m.perms]
    mem = os.open(f"/proc/{w.pid}/mem", os.O_RDONLY)
    try:
        for tid, self_ in zip(tids, selfs):
            th = st.thread(tid)
            r = th.regs
            assert r["fs_base"] == self_                      # pthread_self() is the TCB = fs_base
            assert r["gs_base"] == 0 and r["cs"] == 0x33 and r["ss"] == 0x2b
            assert any(m.start <= r["rip"] < m.end and (m.path.endswith(".so.6") or "libc" in m.path)
                       for m in exec_maps), hex(r["rip"])     # parked in a libc syscall wrapper
            assert any(m.start <= r["rsp"] < m.end for m in read_maps(w.pid))
            # FXSAVE: defaults the workload never changes
            assert th.fpregs.cwd == 0x37F and th.fpregs.mxcsr & 0xFFC0 == 0x1F80
            assert len(th.fpregs.st_space) == 32 and len(th.fpregs.xmm_space) == 64
            if th.xstate:
                assert struct.unpack_from("<Q", th.xstate, 512)[0] == th.xstate_bv
                assert len(th.ymmh_space) in (0, 64)
            # rseq registered by glibc at fs_base + __rseq_offset
            assert th.rseq is not None
            assert th.rseq.rseq_abi_pointer == self_ + info["rseq_offset"]
            assert th.rseq.signature == RSEQ_SIG
            # clear-tid address: glibc points it at pthread->tid, which holds the tid
            if th.clear_tid_addr:
                assert _u(mem, th.clear_tid_addr, "<i")[0] == tid
            else:
                assert any("clear_tid_addr" in n for n in st.notes)
            # robust list: glibc's per-thread head in the TCB, 24 bytes
            head, length = th.robust_list
            assert length == 24 and self_ <= head < self_ + 4096
            nxt = _u(mem, head, "<Q")[0]
            if tid == info["tid"]:   # main holds the robust mutex: the list points into it
                assert info["mutex"] <= nxt < info["mutex"] + 40
            else:                    # empty list points at itself
                assert nxt == head
            if tid == info["w3_tid"] and info["avx"]:   # stw3 parks with a pattern in ymm15's upper half
                assert th.xstate_bv & 4 and len(th.ymmh_space) == 64
                assert th.ymmh_space[60:64] == [0xA5A5A5A5, 0xDEADBEEF, 0x01234567, 0xCAFEF00D]
            assert [s.entry_number for s in th.tls] == [12, 13, 14]
            assert all(s.seg_not_present and s.read_exec_only and s.base_addr == 0 for s in th.tls)
    finally:
        os.close(mem)


def test_signals(dumped):
    w, info, st = dumped
    rtmin = info["sigrtmin"]
    base_mask = (1 << (SIGUSR2 - 1)) | (1 << (rtmin + 1 - 1))
    main = st.thread(info["tid"])
    assert main.sigmask == base_mask
    assert st.thread(info["w1_tid"]).sigmask == base_mask
    assert st.thread(info["w2_tid"]).sigmask == base_mask | (1 << (SIGPWR - 1))
    # alternate stacks: main and stw1 have one, the others are disabled
    assert main.sigaltstack == (info["main_alt"], info["altsz"], 0)
    assert st.thread(info["w1_tid"]).sigaltstack == (info["w1_alt"], info["altsz"], 0)
    for i in (2, 3):
        assert st.thread(info[f"w{i}_tid"]).sigaltstack[2] == SS_DISABLE
    # one private SIGUSR2 for main, none for workers; one shared SIGRTMIN+1 with its value
    assert [struct.unpack_from("<i", s)[0] for s in main.pending] == [SIGUSR2]
    for i in (1, 2, 3):
        assert st.thread(info[f"w{i}_tid"]).pending == []
    assert len(st.shared_pending) == 1
    signo, _errno, code = struct.unpack_from("<iii", st.shared_pending[0])
    assert signo == rtmin + 1 and code == -1          # SI_QUEUE
    assert struct.unpack_from("<i", st.shared_pending[0], 24)[0] == 4242
    assert all(len(s) == 128 for s in st.shared_pending + main.pending)
    # sigactions: 62 entries, 1..64 without SIGKILL and SIGSTOP
    assert [s.signo for s in st.sigactions] == list(SIGACTION_SIGNALS) and len(st.sigactions) == 62
    by = {s.signo: s for s in st.sigactions}
    usr1 = by[SIGUSR1]
    assert usr1.handler == info["handler"]
    assert usr1.flags & (SA_RESTART | SA_ONSTACK | SA_SIGINFO) == SA_RESTART | SA_ONSTACK | SA_SIGINFO
    assert usr1.flags & SA_RESTORER and usr1.restorer != 0
    assert usr1.mask == info["mask"]
    assert by[SIGHUP].handler == 1 and by[SIGALRM].handler == 1     # SIG_IGN
    assert by[SIGUSR2].handler == 0                                 # SIG_DFL
    # SIG_DFL: SIGCHLD keeps SA_NOCLDSTOP (it changes what the kernel does); any other
    # default action is not asked for (no injected call) and recorded as all zeros
    assert by[signal.SIGCHLD].handler == 0 and by[signal.SIGCHLD].flags & SA_NOCLDSTOP
    assert (by[signal.SIGWINCH].handler, by[signal.SIGWINCH].flags, by[signal.SIGWINCH].mask) == (0, 0, 0)


def test_process_wide(dumped):
    w, info, st = dumped
    assert (st.ppid, st.pgid, st.sid) == (os.getpid(), os.getpgid(w.pid), os.getsid(w.pid))
    assert st.comm == "stmain"
    assert sorted(t.comm for t in st.threads) == ["stmain", "stw1", "stw2", "stw3"]
    assert st.flags == read_stat(w.pid).flags
    assert st.personality == info["personality"]
    assert st.umask == 0o027
    assert len(st.rlimits) == 16 and st.rlimits[7] == (777, info["nofile_max"])   # RLIMIT_NOFILE
    isec, iusec, vsec, vusec = st.itimers["real"]
    assert (isec, iusec) == (1000, 250000) and 400 <= vsec < 500 and vusec < 1000000
    assert st.itimers["virt"] == st.itimers["prof"] == (0, 0, 0, 0)
    assert st.brk == info["brk"]
    pairs = dict(zip(st.auxv[0::2], st.auxv[1::2]))
    assert pairs[AT_ENTRY] == info["entry"] and pairs[AT_PHDR] == info["phdr"]
    assert pairs[AT_PAGESZ] == info["pagesz"] and st.auxv[-2:] == [0, 0]
    assert st.dumpable == info["dumpable"] == 1
    assert st.child_subreaper is True
    for th in st.threads:
        c = th.creds
        assert c.uids == (os.getuid(),) * 4 and c.gids == (os.getgid(),) * 4
        assert c.effective == c.permitted and c.bounding >> 32 and c.no_new_privs == 0
        assert th.seccomp_mode == 0


def test_images_decode_withcrit_decode(spawn, workload_bin, tmp_path):
    w, info = _start(spawn, workload_bin)
    with ImageDir.create(tmp_path / "img") as d:
        st = dump_task_state(w.pid, d)
    img = tmp_path / "img"
    cores = sorted(img.glob("core-*.img"))
    assert len(cores) == 4
    for core in cores:
        tid = int(core.stem.split("-")[1])
        e = crit_decode(core)["entries"][0]
        assert e["mtype"] == "X86_64"
        ti, tc = e["thread_info"], e["thread_core"]
        assert len(ti["tls"]) == 3
        assert int(str(ti["gpregs"]["fs_base"]), 0) == st.thread(tid).regs["fs_base"]
        assert len(ti["fpregs"]["st_space"]) == 32 and len(ti["fpregs"]["xmm_space"]) == 64
        assert "creds" in tc and tc["comm"] == st.thread(tid).comm
        if st.thread(tid).ymmh_space:
            assert len(ti["fpregs"]["xsave"]["ymmh_space"]) == 64
        if tid == w.pid:
            assert len(e["tc"]["sigactions"]) == 62
            assert len(e["tc"]["rlimits"]["rlimits"]) == 16
            assert e["tc"]["comm"] == "stmain"
            assert len(e["tc"]["signals_s"]["signals"]) == 1
            assert len(tc["signals_p"]["signals"]) == 1
        else:
            assert "tc" not in e
    ps = crit_decode(img / "pstree.img")["entries"]
    assert len(ps) == 1
    assert ps[0]["pid"] == w.pid and ps[0]["ppid"] == 0 and sorted(ps[0]["threads"]) == st.tids
    assert ps[0]["pgid"] == st.pgid and ps[0]["sid"] == st.sid
    ids = crit_decode(img / f"ids-{w.pid}.img")["entries"][0]
    assert ids["vm_id"] == ids["files_id"] == ids["fs_id"] == ids["sighand_id"] == 1
    # our own reader agrees
    core = read_single(img / f"core-{w.pid}.img")
    assert core.tc.blk_sigset == st.thread(w.pid).sigmask
    assert core.thread_core.sas.ss_sp == info["main_alt"]


def test_target_runs_on_untraced(spawn, workload_bin, tmp_path):
    w, info = _start(spawn, workload_bin)
    with freeze(w.pid) as task:
        first = collect_task_state(task)
    for tid in first.tids:
        state, tracer = proc_state(w.pid, tid)
        assert state not in ("t", "T") and tracer == 0
    assert w.send("ping") == "pong"
    # the SIGUSR1 handler still runs, on the alternate stack
    assert w.send("usr1") == "usr1 1 1"
    # a second collection sees the same state: nothing was left changed by the first
    with freeze(w.pid) as task:
        second = collect_task_state(task)
    assert [(s.handler, s.flags, s.mask) for s in first.sigactions] == \
           [(s.handler, s.flags, s.mask) for s in second.sigactions]
    for a, b in zip(first.threads, second.threads):
        assert (a.sigmask, a.sigaltstack, a.robust_list, a.clear_tid_addr) == \
               (b.sigmask, b.sigaltstack, b.robust_list, b.clear_tid_addr)
    assert second.brk == first.brk and second.itimers["real"][:2] == (1000, 250000)
    assert len(second.shared_pending) == 1 and len(second.thread(w.pid).pending) == 1
    assert w.send("ping") == "pong"


_PPOLL = r"""
import ctypes, os, signal, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
real = {signal.SIGUSR1, signal.SIGUSR2}
def wait_in(syscall_mask):
    # the thread's own mask blocks SIGUSR1 and SIGUSR2; ppoll waits on stdin with only SIGUSR2
    # blocked (or, for the futex thread, no ppoll at all)
    signal.pthread_sigmask(signal.SIG_SETMASK, real)
    if syscall_mask is None:
        threading.Event().wait()
    tmp = (ctypes.c_uint64 * 16)()
    for s in syscall_mask:
        tmp[0] |= 1 << (s - 1)
    r, _ = os.pipe()
    fds = (ctypes.c_int * 2)(r, 0x1)            # POLLIN on a pipe nobody writes to
    while True:
        libc.ppoll(fds, 1, None, tmp, 8)
signal.signal(signal.SIGUSR1, lambda *a: None)
signal.signal(signal.SIGUSR2, lambda *a: None)
tids = []
for m in ({signal.SIGUSR2}, None):
    t = threading.Thread(target=lambda m=m: (tids.append(threading.get_native_id()), wait_in(m)), daemon=True)
    t.start()
while len(tids) < 2:
    pass
print(*tids, flush=True)
wait_in({signal.SIGUSR2})
"""


def test_threads_in_ppoll_keep_their_own_masks(spawn, python_exe):
    """Threads stopped in ppoll wait under ppoll's temporary mask: the dump records each
    thread's own mask, and the wait goes on under ppoll's afterwards. A thread in a futex
    wait (its own mask at the stop, read at once: task_state._own_mask_at_stop) too."""
    import time
    w = spawn([python_exe, "-c", _PPOLL])
    in_ppoll, in_futex = map(int, w.ready.split())
    own = (1 << (SIGUSR1 - 1)) | (1 << (SIGUSR2 - 1))
    tmp = 1 << (SIGUSR2 - 1)

    def blocked(tid: int) -> int:
        with open(f"/proc/{w.pid}/task/{tid}/status") as f:
            return int(next(ln for ln in f if ln.startswith("SigBlk:")).split()[1], 16)
    def back_in_ppoll() -> None:           # ppoll's mask in force again (restarted once running)
        deadline = time.monotonic() + 10
        while [blocked(t) for t in (w.pid, in_ppoll, in_futex)] != [tmp, tmp, own]:
            assert time.monotonic() < deadline, [blocked(t) for t in (w.pid, in_ppoll, in_futex)]
            time.sleep(0.01)
    back_in_ppoll()
    with freeze(w.pid) as task:
        state = collect_task_state(task)
    assert [state.thread(t).sigmask for t in (w.pid, in_ppoll, in_futex)] == [own] * 3
    back_in_ppoll()


_MDWE = ("import ctypes, signal, threading, time\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         "assert libc.prctl(65, 1, 0, 0, 0) == 0, ctypes.get_errno()      # PR_SET_MDWE, REFUSE_EXEC_GAIN\n"
         "for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP): signal.signal(s, lambda *a: None)\n"
         "for _ in range(2): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)\n")


def test_batched_in_an_mdwe_process(spawn, python_exe):
    """Each thread's calls run as one batch, by a code page that is never writable and
    executable: a process under PR_SET_MDWE is dumped all the same, in a few round trips."""
    w = spawn([python_exe, "-c", _MDWE])
    with freeze(w.pid) as task:
        state = collect_task_state(task)
    assert len(state.threads) == 3
    assert state.remote_calls >= 3 * 4 + 3 + 4         # per thread 4; getitimer x3; brk, prctls...
    # leader: scratch, code page, its batch, munmap; other threads: the first call learns the
    # mask at a syscall stop when stopped in one, then a batch
    assert state.remote_trips <= 4 + 2 * 2
    handled = {s.signo for s in state.sigactions if s.handler > 1}
    assert {SIGUSR1, SIGUSR2, SIGHUP} <= handled
    assert proc_state(w.pid)[0] not in ("t", "T")


def test_sigtrap_ignored_goes_call_by_call(spawn, python_exe):
    """A process that ignores SIGTRAP gets syscall-stop sessions (an int3's trap would be
    forced and reset the disposition): its calls go one by one, the disposition stays."""
    code = ("import signal, threading, time\n"
            "signal.signal(signal.SIGTRAP, signal.SIG_IGN)\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    w = spawn([python_exe, "-c", code])
    with freeze(w.pid) as task:
        state = collect_task_state(task)
    assert len(state.threads) == 2
    assert state.remote_trips > state.remote_calls       # one each, and the scratch's munmap
    with open(f"/proc/{w.pid}/status") as f:
        ignored = int(next(ln for ln in f if ln.startswith("SigIgn:")).split()[1], 16)
    assert ignored >> (signal.SIGTRAP - 1) & 1
    assert proc_state(w.pid)[0] not in ("t", "T")
