"""Sample entries for every image kind coldsnap writes or reads, and small helpers for image tests."""
from __future__ import annotations

from coldsnap.images.directory import ImageDir, new_inventory
from coldsnap.images.pb import (core_pb2, core_x86_pb2, creds_pb2, eventfd_pb2, eventpoll_pb2, fdinfo_pb2,
                                fown_pb2, fs_pb2, ghost_file_pb2, ids_pb2, ipc_desc_pb2, ipc_sem_pb2,
                                ipc_shm_pb2, memfd_pb2, mm_pb2, pagemap_pb2, pipe_pb2, pstree_pb2,
                                regfile_pb2, remap_file_path_pb2, rlimit_pb2, rseq_pb2, sa_pb2, seccomp_pb2,
                                sk_inet_pb2, sk_opts_pb2, sk_packet_pb2, stats_pb2, tcp_stream_pb2, timer_pb2,
                                tty_info_pb2)

from procs import CRIT, crit_decode_all  # noqa: F401  (re-exported: the one crit runner)

PAGE = 4096
PID = 4242


def fown() -> fown_pb2.fown_entry:
    return fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0)


def core_entry(main: bool) -> core_pb2.core_entry:
    regs = core_x86_pb2.user_x86_regs_entry(**{f.name: i for i, f in enumerate(
        core_x86_pb2.user_x86_regs_entry.DESCRIPTOR.fields) if f.name != "mode"})
    fp = core_x86_pb2.user_x86_fpregs_entry(cwd=0x37f, swd=0, twd=0, fop=0, rip=0, rdp=0,
                                            mxcsr=0x1f80, mxcsr_mask=0xffff,
                                            st_space=[0] * 32, xmm_space=[1] * 64)
    fp.xsave.xstate_bv = 7
    fp.xsave.ymmh_space.extend([2] * 64)
    tls = [core_x86_pb2.user_desc_t(entry_number=12 + i, base_addr=0, limit=0xfffff,
                                    seg_32bit=True, contents_h=False, contents_l=False,
                                    read_exec_only=True, limit_in_pages=True,
                                    seg_not_present=True, usable=False) for i in range(3)]
    ti = core_x86_pb2.thread_info_x86(clear_tid_addr=0x7f00, gpregs=regs, fpregs=fp, tls=tls)
    creds = creds_pb2.creds_entry(uid=1, gid=2, euid=1, egid=2, suid=1, sgid=2, fsuid=1, fsgid=2,
                                  cap_inh=[0, 0], cap_prm=[0, 0], cap_eff=[0, 0],
                                  cap_bnd=[0xffffffff, 0x1ff], secbits=0, groups=[2, 27])
    tcore = core_pb2.thread_core_entry(
        futex_rla=0x7f10, futex_rla_len=24, sched_nice=0, sched_policy=0, blk_sigset=0,
        sas=core_pb2.thread_sas_entry(ss_sp=0, ss_size=0, ss_flags=2), creds=creds,
        seccomp_mode=core_pb2.disabled, comm="worker",
        rseq_entry=rseq_pb2.rseq_entry(rseq_abi_pointer=0x7f20, rseq_abi_size=32,
                                       signature=0x53053053))
    core = core_pb2.core_entry(mtype=core_pb2.X86_64, thread_info=ti, thread_core=tcore)
    if main:
        it = timer_pb2.itimer_entry(isec=0, iusec=0, vsec=0, vusec=0)
        tc = core.tc
        tc.task_state, tc.exit_code, tc.personality, tc.flags = 1, 0, 0, 0x400100
        tc.blk_sigset, tc.comm = 0, "sample"
        tc.timers.CopyFrom(timer_pb2.task_timers_entry(real=it, virt=it, prof=it))
        tc.rlimits.rlimits.extend(rlimit_pb2.rlimit_entry(cur=2**64 - 1, max=2**64 - 1)
                                  for _ in range(16))
        tc.signals_s.signals.add(siginfo=bytes(128))
        tc.sigactions.extend(sa_pb2.sa_entry(sigaction=0, flags=0, restorer=0, mask=0,
                                             compat_sigaction=False) for _ in range(62))
        tc.oom_score_adj = 0
    return core


def mm_entry() -> mm_pb2.mm_entry:
    mm = mm_pb2.mm_entry(**{f"mm_{n}": 0x400000 + i * PAGE for i, n in enumerate(
        ["start_code", "end_code", "start_data", "end_data", "start_stack", "start_brk", "brk",
         "arg_start", "arg_end", "env_start", "env_end"])}, exe_file_id=1,
        mm_saved_auxv=[6, 4096, 0, 0], dumpable=1)
    mm.vmas.add(start=0x400000, end=0x401000, pgoff=0, shmid=1, prot=5, flags=2, status=0x41,
                fd=-1)
    mm.vmas.add(start=0x600000, end=0x610000, pgoff=0, shmid=0, prot=3, flags=0x22,
                status=0x201, fd=-1, madv=0)
    # A last VMA above the pages, as real processes have ([vsyscall]); crit x rss needs one.
    mm.vmas.add(start=0xffffffffff600000, end=0xffffffffff601000, pgoff=0, shmid=0, prot=4,
                flags=0x22, status=0x4, fd=-1)
    mm.aios.add(id=0x7f000, nr_req=128, ring_len=4096)
    return mm


def files() -> list:
    f = fown()
    opts = sk_opts_pb2.sk_opts_entry(so_sndbuf=16384, so_rcvbuf=131072, so_snd_tmo_sec=0,
                                     so_snd_tmo_usec=0, so_rcv_tmo_sec=0, so_rcv_tmo_usec=0,
                                     reuseaddr=True, keepalive=False, so_bound_dev="")
    T = fdinfo_pb2
    return [
        T.file_entry(type=T.REG, id=1, reg=regfile_pb2.reg_file_entry(
            id=1, flags=0, pos=0, fown=f, name="/usr/bin/sample", size=1000, mode=0o100755)),
        T.file_entry(type=T.REG, id=2, reg=regfile_pb2.reg_file_entry(
            id=2, flags=0o200000, pos=0, fown=f, name="/", mode=0o40755)),
        T.file_entry(type=T.PIPE, id=3, pipe=pipe_pb2.pipe_entry(id=3, pipe_id=777, flags=0,
                                                                 fown=f)),
        T.file_entry(type=T.FIFO, id=4, fifo=pipe_pb2.fifo_entry(id=4, pipe_id=778, regf_id=5)),
        T.file_entry(type=T.EVENTFD, id=6, efd=eventfd_pb2.eventfd_file_entry(
            id=6, flags=2, fown=f, counter=5)),
        T.file_entry(type=T.EVENTPOLL, id=7, epfd=eventpoll_pb2.eventpoll_file_entry(
            id=7, flags=2, fown=f, tfd=[eventpoll_pb2.eventpoll_tfd_entry(
                id=6, tfd=3, events=1, data=99, dev=12, inode=34, pos=0)])),
        T.file_entry(type=T.INETSK, id=8, isk=sk_inet_pb2.inet_sk_entry(
            id=8, ino=9999, family=2, type=1, proto=6, state=10, src_port=8080, dst_port=0,
            flags=2, backlog=128, src_addr=[0x0100007f], dst_addr=[0], fown=f, opts=opts,
            v6only=False)),
    ]


def stats() -> stats_pb2.stats_entry:
    st = stats_pb2.stats_entry()
    d = st.dump
    d.freezing_time, d.frozen_time, d.memdump_time, d.memwrite_time = 10, 20, 30, 40
    d.pages_scanned, d.pages_skipped_parent, d.pages_written, d.pages_lazy = 100, 50, 40, 0
    d.cs_pages_skipped, d.cs_track_backend, d.cs_mode, d.cs_scan_time = 10, "uffd-wp", "pre", 7
    return st


def ipc_desc(ipc_id: int) -> ipc_desc_pb2.ipc_desc_entry:
    return ipc_desc_pb2.ipc_desc_entry(key=0x5C001234, uid=101, gid=104, cuid=0, cgid=0, mode=0o1600,
                                       id=ipc_id)


def sample_images() -> dict[str, list]:
    """File name -> entries, one sample per kind we write (pagemap via PagemapWriter)."""
    tid = PID + 1
    head = pagemap_pb2.pagemap_head(pages_id=1)
    head.cs_skipped.add(vaddr=0x700000, nr_pages=2)
    return {
        "inventory.img": [new_inventory(pre_dump_mode=2, dump_uptime=123456)],
        "pstree.img": [pstree_pb2.pstree_entry(pid=PID, ppid=0, pgid=PID, sid=PID,
                                               threads=[PID, tid])],
        f"core-{PID}.img": [core_entry(True)],
        f"core-{tid}.img": [core_entry(False)],
        f"ids-{PID}.img": [ids_pb2.task_kobj_ids_entry(vm_id=1, files_id=1, fs_id=1,
                                                       sighand_id=1, pid_ns_id=2)],
        f"mm-{PID}.img": [mm_entry()],
        f"pagemap-{PID}.img": [head, pagemap_pb2.pagemap_entry(
            vaddr=0x600000, compat_nr_pages=2, flags=4, nr_pages=2), pagemap_pb2.pagemap_entry(
            vaddr=0x602000, compat_nr_pages=1, flags=1, nr_pages=1)],
        "pagemap-shmem-55.img": [pagemap_pb2.pagemap_head(pages_id=2), pagemap_pb2.pagemap_entry(
            vaddr=0, compat_nr_pages=1, flags=4, nr_pages=1)],
        f"fs-{PID}.img": [fs_pb2.fs_entry(cwd_id=2, root_id=2, umask=0o22)],
        "fdinfo-1.img": [fdinfo_pb2.fdinfo_entry(id=i, flags=0, type=t, fd=fd) for i, t, fd in
                         [(3, fdinfo_pb2.PIPE, 0), (6, fdinfo_pb2.EVENTFD, 3),
                          (7, fdinfo_pb2.EVENTPOLL, 4), (8, fdinfo_pb2.INETSK, 5)]],
        "files.img": files(),
        "pipes-data.img": [(pipe_pb2.pipe_data_entry(pipe_id=777, bytes=5, size=65536), b"hello"),
                           (pipe_pb2.pipe_data_entry(pipe_id=779, bytes=3), b"\x00\xff\x01")],
        "fifo-data.img": [(pipe_pb2.pipe_data_entry(pipe_id=778, bytes=2), b"ok")],
        "sk-queues.img": [(sk_packet_pb2.sk_packet_entry(id_for=12, length=5), b"hello"),
                          (sk_packet_pb2.sk_packet_entry(id_for=12, length=0), b"")],
        "ipcns-shm-3.img": [ipc_shm_pb2.ipc_shm_entry(desc=ipc_desc(32768), size=56, in_pagemaps=True)],
        "ipcns-sem-3.img": [(ipc_sem_pb2.ipc_sem_entry(desc=ipc_desc(5), nsems=3),
                             b"\x01\x00\x07\x00\xff\xff\x00\x00")],
        "tcp-stream-1a2b.img": [(tcp_stream_pb2.tcp_stream_entry(
            inq_len=3, inq_seq=100, outq_len=4, outq_seq=7, opt_mask=7, snd_wscale=7, mss_clamp=65483,
            rcv_wscale=7, timestamp=12345, unsq_len=1, snd_wl1=97, snd_wnd=65536, max_window=65536,
            rcv_wnd=65536, rcv_wup=100), b"in!" + b"out!")],
        # a memfd of coldsnap's, sealed; CRIU's shared anonymous memory (a memfd named /dev/zero)
        "memfd.img": [memfd_pb2.memfd_inode_entry(name="cs", uid=0, gid=0, size=16, shmid=8500,
                                                  seals=0x1f, inode_id=8500, mode=0o100777),
                      memfd_pb2.memfd_inode_entry(name="/dev/zero", uid=0, gid=0, size=PAGE, shmid=77,
                                                  seals=1, inode_id=1, mode=0o100777)],
        "seccomp.img": [seccomp_pb2.seccomp_entry(seccomp_filters=[
            seccomp_pb2.seccomp_filter(filter=bytes(range(16))),
            seccomp_pb2.seccomp_filter(filter=bytes(8), prev=0, flags=1)])],
        "remap-fpath.img": [remap_file_path_pb2.remap_file_path_entry(orig_id=9, remap_id=1,
                                                                       remap_type=remap_file_path_pb2.GHOST)],
        "ghost-file-1a.img": [ghost_file_pb2.ghost_file_entry(uid=0, gid=0, mode=0o100600, chunks=True, size=9000),
                              (ghost_file_pb2.ghost_chunk_entry(len=3, off=0), b"abc"),
                              (ghost_file_pb2.ghost_chunk_entry(len=2, off=8192), b"yz")],
        "tty-info.img": [tty_info_pb2.tty_info_entry(id=3, type=tty_info_pb2.PTY, locked=False, exclusive=False,
                                                     packet_mode=False, sid=0, pgrp=0, rdev=0x8804,
                                                     pty=tty_info_pb2.tty_pty_entry(index=4))],
        "stats-dump": [stats()],
        "stats-restore": [stats_pb2.stats_entry(restore=stats_pb2.restore_stats_entry(
            pages_compared=1, pages_skipped_cow=2, forking_time=3, restore_time=4))],
    }


def make_dir(path, parent=None, pid: int = PID, runs=()) -> ImageDir:
    """A committed pre-dump directory; runs are (kind, vaddr, nr_pages[, fill byte])."""
    from coldsnap.images.pages import PagemapWriter
    with ImageDir.create(path, parent=parent) as d:
        d.write("inventory.img", [new_inventory(pre_dump_mode=2)])
        with PagemapWriter(d, pid) as w:
            for kind, vaddr, nr, *fill in runs:
                if kind == "present":
                    w.add_present(vaddr, page_bytes(vaddr, nr, *fill))
                elif kind == "parent":
                    w.add_parent(vaddr, nr)
                else:
                    w.add_skipped(vaddr, nr)
    return ImageDir.open(path)


def page_bytes(vaddr: int, nr: int, tag: int = 0) -> bytes:
    """Distinct content per page and per tag: 8-byte words (vaddr of the page, tag)."""
    import numpy as np
    pages = np.arange(nr, dtype=np.uint64) * np.uint64(PAGE) + np.uint64(vaddr)
    words = np.empty((nr, PAGE // 8), dtype=np.uint64)
    words[:, 0::2] = pages[:, None]
    words[:, 1::2] = np.uint64(tag)
    return words.tobytes()

