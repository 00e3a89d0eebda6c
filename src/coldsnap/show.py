"""`coldsnap show`: a readable summary of an images directory and its parent chain."""
from __future__ import annotations

import os
from pathlib import Path

from .images.directory import ImageDir
from .images.pb import fdinfo_pb2
from .images.task import TASK_DEAD
from .kernel.page import PAGE_SIZE
from .images.vma import (VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_VDSO, VMA_AREA_VVAR,
                         VMA_FILE_PRIVATE, VMA_FILE_SHARED)

PE_PARENT, PE_PRESENT = 1, 4


def _kind(status: int) -> str:
    for bit, name in ((VMA_AREA_VDSO, "vdso"), (VMA_AREA_VVAR, "vvar"), (VMA_ANON_PRIVATE, "anon-private"),
                      (VMA_FILE_PRIVATE, "file-private"), (VMA_ANON_SHARED, "anon-shared"),
                      (VMA_FILE_SHARED, "file-shared")):
        if status & bit:
            return name
    return "other"


def _disk_bytes(root: Path) -> int:
    total = 0
    for e in os.scandir(root):
        if e.is_file(follow_symlinks=False):
            total += e.stat(follow_symlinks=False).st_blocks * 512
    return total


def _pagemap_summary(d: ImageDir, pid: int) -> dict:
    msgs = d.read(f"pagemap-{pid}.img")
    head, entries = msgs[0], msgs[1:]
    present = parent = 0
    for e in entries:
        n = e.nr_pages if e.HasField("nr_pages") else e.compat_nr_pages
        flags = e.flags if e.HasField("flags") else (PE_PARENT if e.in_parent else PE_PRESENT)
        if flags & PE_PRESENT:
            present += n
        elif flags & PE_PARENT:
            parent += n
    skipped = sum(r.nr_pages for r in head.cs_skipped)
    return {"pages_id": head.pages_id, "entries": len(entries), "pages_present": present,
            "pages_in_parent": parent, "pages_skipped": skipped,
            "skipped_runs": [[hex(r.vaddr), r.nr_pages] for r in head.cs_skipped]}


def describe_one(d: ImageDir) -> dict:
    inv = d.inventory
    info: dict = {"dir": str(d.root), "kind": "pre-dump" if inv.HasField("pre_dump_mode") else "dump",
                  "disk_bytes": _disk_bytes(d.root), "processes": {}}
    if d.exists("stats-dump"):
        s = d.read_single("stats-dump").dump
        info["stats"] = {
            "mode": s.cs_mode, "track_backend": s.cs_track_backend,
            "freezing_time_us": s.freezing_time, "frozen_time_us": s.frozen_time,
            "scan_time_us": s.cs_scan_time, "memdump_time_us": s.memdump_time,
            "memwrite_time_us": s.memwrite_time, "pages_scanned": s.pages_scanned,
            "pages_written": s.pages_written, "pages_skipped_parent": s.pages_skipped_parent,
            "pages_skipped": s.cs_pages_skipped}
    entries = {e.pid: e for e in d.read("pstree.img", missing_ok=True) or []}
    pids = d.pagemap_ids()
    # tree order; a zombie has a core image but no memory (no pagemap)
    zombies = {p for p in entries if p not in pids and d.exists(f"core-{p}.img")}
    for pid in [p for p in entries if p in pids or p in zombies] + [p for p in pids if p not in entries]:
        proc = (_pagemap_summary(d, pid) if pid in pids else
                {"pages_id": 0, "entries": 0, "pages_present": 0, "pages_in_parent": 0, "pages_skipped": 0,
                 "skipped_runs": []})
        if d.exists(f"mm-{pid}.img"):
            mm = d.read_single(f"mm-{pid}.img")
            proc["vmas"] = [{"start": hex(v.start), "end": hex(v.end), "kind": _kind(v.status),
                             "prot": "".join(c if v.prot & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4))),
                             "size": v.end - v.start} for v in mm.vmas]
        task = _task_summary(d, pid, entries.get(pid))
        if task:
            proc["task"] = task
        info["processes"][str(pid)] = proc
    if entries:
        info["tree"] = _tree_summary(list(entries.values()), info["processes"])
    return info


def _tree_summary(entries: list, procs: dict) -> list[dict]:
    """Every process of pstree.img, parents first: ids, threads, command name (dumps only),
    its pages and its children's pids."""
    out = []
    for e in entries:
        p = procs.get(str(e.pid), {})
        out.append({"pid": e.pid, "ppid": e.ppid, "pgid": e.pgid, "sid": e.sid, "threads": len(e.threads),
                    "comm": p.get("task", {}).get("comm", ""), "state": p.get("task", {}).get("state", ""),
                    "pages_present": p.get("pages_present", 0),
                    "pages_in_parent": p.get("pages_in_parent", 0),
                    "children": [c.pid for c in entries if c.ppid == e.pid and c.pid != e.pid]})
    return out


def render_tree(tree: list[dict]) -> list[str]:
    """The process tree drawn with its branches: pid, command, threads, pages; the group and
    session where they differ from the parent's (all of them for the root)."""
    by_pid = {p["pid"]: p for p in tree}
    lines: list[str] = []

    def draw(p: dict, parent: dict | None, lead: str, branch: str) -> None:
        ids = [f"{k} {p[k]}" for k in ("pgid", "sid") if parent is None or p[k] != parent[k]]
        if parent is None and p["ppid"]:
            ids.insert(0, f"ppid {p['ppid']}")
        n = p["threads"]
        comm = f" {p['comm']!r}" if p["comm"] else ""
        what = "zombie" if p.get("state") == "zombie" else f"{n} thread{'s' if n != 1 else ''}, {p['pages_present']} pages"
        lines.append(f"{lead}{branch}{p['pid']}{comm}, {what}" + (f", {p['pages_in_parent']} in parent" if p["pages_in_parent"] else "")
                     + (f" ({', '.join(ids)})" if ids else ""))
        kids = [by_pid[c] for c in p["children"] if c in by_pid]
        below = lead + ("" if parent is None else "   " if branch.startswith("└") else "│  ")
        for i, kid in enumerate(kids):
            draw(kid, p, below, "└─ " if i == len(kids) - 1 else "├─ ")

    for root in [p for p in tree if p["ppid"] not in by_pid or p["ppid"] == p["pid"]]:
        draw(root, None, "    ", "")
    return lines


def _task_summary(d: ImageDir, pid: int, tree) -> dict:
    """Threads, command name, state, place in the tree (its pstree.img entry) and open files
    of a process of a dump (pre-dumps have none of these)."""
    if tree is None or not d.exists(f"core-{pid}.img"):
        return {}
    tc = d.read_single(f"core-{pid}.img").tc
    fds: dict[str, int] = {}
    ids = d.read_single(f"ids-{pid}.img") if d.exists(f"ids-{pid}.img") else None
    if ids is not None and d.exists("files.img"):
        kinds = {e.id: fdinfo_pb2.fd_types.Name(e.type) for e in d.read("files.img")}
        for fi in d.read(f"fdinfo-{ids.files_id}.img", missing_ok=True):
            kind = kinds.get(fi.id, "?")
            fds[kind] = fds.get(kind, 0) + 1
    out = {"comm": tc.comm, "threads": list(tree.threads), "ppid": tree.ppid, "pgid": tree.pgid, "sid": tree.sid,
           "state": {1: "running", 2: "zombie", 3: "stopped"}.get(tc.task_state, str(tc.task_state)), "fds": fds}
    if tc.task_state == TASK_DEAD:
        out["exit_code"] = tc.exit_code         # the wait status its parent will get
    return out


def _zombie_words(status: int) -> str:
    """A zombie's wait status as its parent's waitpid will tell it."""
    return f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"


def describe(path: str) -> dict:
    chain = ImageDir.open(path).chain()
    levels = [describe_one(d) for d in chain]
    return {"chain": levels, "chain_disk_bytes": sum(lv["disk_bytes"] for lv in levels)}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def render(info: dict) -> str:
    out = []
    for depth, lv in enumerate(info["chain"]):
        label = "images" if depth == 0 else f"parent {depth}"
        out.append(f"{label}: {lv['dir']} ({lv['kind']}, {_mib(lv['disk_bytes'])} on disk)")
        st = lv.get("stats")
        if st:
            out.append(f"  mode {st['mode'] or '?'}, tracking {st['track_backend'] or 'none'}: "
                       f"frozen {st['frozen_time_us'] / 1000:.2f} ms, scan {st['scan_time_us'] / 1000:.2f} ms, "
                       f"drain {(st['memdump_time_us'] + st['memwrite_time_us']) / 1000:.1f} ms")
        if len(lv.get("tree", [])) > 1:
            out.append(f"  process tree ({len(lv['tree'])} processes):")
            out += render_tree(lv["tree"])
        for pid, p in lv["processes"].items():
            out.append(f"  pid {pid}: {p['pages_present']} pages written ({_mib(p['pages_present'] * PAGE_SIZE)}), "
                       f"{p['pages_in_parent']} in parent, {p['pages_skipped']} skipped")
            task = p.get("task")
            if task:
                fds = ", ".join(f"{n} {k}" for k, n in sorted(task["fds"].items())) or "none"
                parent = f"child of {task['ppid']}, " if task.get("ppid") else ""
                state = task["state"] + (f" ({_zombie_words(task['exit_code'])})" if "exit_code" in task else "")
                out.append(f"    {task['comm']!r}, {len(task['threads'])} thread"
                           f"{'s' if len(task['threads']) > 1 else ''}, {state}; fds: {fds}; "
                           f"{parent}group {task.get('pgid')}, session {task.get('sid')}")
            if depth == 0 and "vmas" in p:
                out.append(f"    {'start':>14} {'end':>14} {'prot':4} {'kind':12} size")
                for v in p["vmas"]:
                    out.append(f"    {v['start']:>14} {v['end']:>14} {v['prot']:4} {v['kind']:12} {_mib(v['size'])}")
    out.append(f"chain total on disk: {_mib(info['chain_disk_bytes'])}")
    return "\n".join(out)
