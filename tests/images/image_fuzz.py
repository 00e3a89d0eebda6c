"""Hostile and broken images: mutations of a real dump, and the check every case must pass.

Shared by tests/images/test_fuzz_images.py (hypothesis, a few thousand cases within the
suite's budget) and bench/fuzz_images.py (the longer job). A case copies a pristine dump
(hard links, the mutated file written anew), applies one Mutation and runs what
`coldsnap show` and `coldsnap restore` read before any process exists (show.describe and
render, restore.images.load_tree) in this process, each bounded in time. It must end in a
coldsnap error (CsError: one line, a documented exit code) or be accepted; anything else
(another exception, a hang, a file left behind) is a failure. Accepted mutations are what
a real restore is then tried on (test_fuzz_images.py samples some).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from unittest import mock

from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import Message

from coldsnap.cli import error_words
from coldsnap.errors import CsError
from coldsnap.images.framing import Frame, check_header, entry_size, kind_for, parse_entries

WORKLOADS = Path(__file__).resolve().parent.parent / "workloads"
TASK_SIZE = 0x7FFFFFFFF000
CASE_SECONDS = 10.0          # one case's bound: a reader that blocks or loops fails here

# values a hostile image puts in integer fields: limits of every width, the edges of the
# address space, misaligned and overlapping addresses
INTERESTING = (0, 1, 2, 3, 4095, 4096, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32,
               TASK_SIZE - 4096, TASK_SIZE, TASK_SIZE + 4096, 1 << 47, 1 << 56,
               0x7FFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_FFFF,
               -1, -4096, -(1 << 31), -(1 << 63))
_RANGES = {FD.CPPTYPE_INT32: (-(1 << 31), (1 << 31) - 1), FD.CPPTYPE_UINT32: (0, (1 << 32) - 1),
           FD.CPPTYPE_INT64: (-(1 << 63), (1 << 63) - 1), FD.CPPTYPE_UINT64: (0, (1 << 64) - 1),
           FD.CPPTYPE_ENUM: (-(1 << 31), (1 << 31) - 1)}


# -- the dump every case starts from ----------------------------------------------------------

def build_pair(where: Path) -> Path:
    """The fuzz workload compiled into WHERE (its exe lives beside the images it maps)."""
    out = where / "fuzz_pair"
    subprocess.run(["gcc", "-O1", "-o", str(out), str(WORKLOADS / "fuzz_pair.c")], check=True)
    return out


def make_dump(where: Path, timeout: float = 60.0) -> Path:
    """Dump a parent and its child (tests/workloads/fuzz_pair.c) into WHERE/images with the
    coldsnap command; both are gone (killed by the dump, reaped) when it returns."""
    exe = build_pair(where)
    log = where / "log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen([str(exe), str(where / "data")], stdin=subprocess.DEVNULL, stdout=fd,
                                stderr=fd, start_new_session=True, cwd=where)
    finally:
        os.close(fd)
    try:
        deadline = time.monotonic() + timeout
        while log.read_text().count("ready") < 2:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"fuzz_pair not ready: {log.read_text()!r}")
            time.sleep(0.01)
        child = _child_of(proc.pid)
        images = where / "images"
        run = subprocess.run([sys.executable, "-m", "coldsnap", "dump", "-t", str(proc.pid), "-D", str(images)],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if run.returncode:
            raise RuntimeError(f"dump of fuzz_pair failed: {run.stderr}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_gone(child)       # reparented to the subreaper or init: reaped there
    return images


def _child_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} of the fuzz dump is still there")
        time.sleep(0.01)


# -- what a dump looks like to the mutator -----------------------------------------------------

@dataclass(frozen=True)
class Entry:
    index: int
    offset: int                 # of its u32 size prefix
    size: int                   # protobuf bytes
    fields: tuple               # paths of every scalar field set (see _field_paths)
    repeated: tuple             # paths of every repeated message field with >= 1 element


@dataclass(frozen=True)
class Layout:
    """Every file of the pristine dump, and for each image its entries."""
    files: tuple[str, ...]
    sizes: dict                  # name -> bytes
    entries: dict                # name -> tuple[Entry, ...] (protobuf images only)

    @classmethod
    def of(cls, images: Path) -> "Layout":
        files = tuple(sorted(os.listdir(images)))
        entries = {}
        for name in files:
            kind = kind_for(name)
            if kind.frame is Frame.RAW:
                continue
            data = (images / name).read_bytes()
            view = memoryview(data)
            pos, out = check_header(view, kind, name), []
            for index, (msg, payload) in enumerate(parse_entries(data, kind, name)):
                size = entry_size(view, pos, index, name)
                out.append(Entry(index, pos, size, tuple(_field_paths(msg)), tuple(_repeated_paths(msg))))
                pos += 4 + size + (len(payload) if payload is not None else 0)
            entries[name] = tuple(out)
        return cls(files, {n: (images / n).stat().st_size for n in files}, entries)


def _field_paths(msg: Message, prefix: tuple = ()):
    """Paths (field name, index or None)... of every scalar value set in MSG."""
    for fd, value in msg.ListFields():
        if fd.type == FD.TYPE_MESSAGE:
            items = value if _is_repeated(fd) else [value]
            for i, sub in enumerate(items):
                yield from _field_paths(sub, prefix + ((fd.name, i if _is_repeated(fd) else None),))
        elif _is_repeated(fd):
            for i in range(len(value)):
                yield prefix + ((fd.name, i),)
        else:
            yield prefix + ((fd.name, None),)


def _repeated_paths(msg: Message, prefix: tuple = ()):
    for fd, value in msg.ListFields():
        if fd.type != FD.TYPE_MESSAGE:
            continue
        if _is_repeated(fd):
            yield prefix + ((fd.name, None),)
            for i, sub in enumerate(value):
                yield from _repeated_paths(sub, prefix + ((fd.name, i),))
        else:
            yield from _repeated_paths(value, prefix + ((fd.name, None),))


def _is_repeated(fd) -> bool:
    return getattr(fd, "is_repeated", None) if hasattr(fd, "is_repeated") else fd.label == FD.LABEL_REPEATED


# -- mutations ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mutation:
    """One change to a copy of the dump. op and its arguments:
      flip (file, offset, xor)          a byte xored
      truncate (file, length)           cut to length (a pages file: shorter than its pagemap)
      length (file, entry, value)       an entry's u32 size prefix replaced
      field (file, entry, path, value)  one protobuf scalar set (huge sizes, addresses past
                                        TASK_SIZE, negative values, fds, pids, counts...)
      repeat (file, entry, path, how, i, j)  a repeated message field: duplicate, drop, swap
                                        or move element i (overlapping and unordered VMAs)
      remove (file)  swap (file, other)  symlink (file, target)  empty (file)  append (file, data)
    """
    op: str
    file: str
    args: tuple = ()

    def __str__(self) -> str:
        return f"{self.op} {self.file} {' '.join(map(repr, self.args))}".strip()

    def apply(self, src: Path, dst: Path) -> None:
        """A copy of SRC in DST (an existing empty directory) with this mutation."""
        for name in os.listdir(src):
            os.link(src / name, dst / name)
        getattr(self, f"_{self.op}")(dst, dst / self.file)

    # each writes a new file in place of the hard link: the pristine dump is never touched
    @staticmethod
    def _rewrite(path: Path, data: bytes) -> None:
        path.unlink()
        path.write_bytes(data)

    def _flip(self, d: Path, path: Path) -> None:
        offset, xor = self.args
        data = bytearray(path.read_bytes())
        data[offset % len(data)] ^= xor
        self._rewrite(path, bytes(data))

    def _truncate(self, d: Path, path: Path) -> None:
        (length,) = self.args
        self._rewrite(path, path.read_bytes()[:length])

    def _empty(self, d: Path, path: Path) -> None:
        self._rewrite(path, b"")

    def _append(self, d: Path, path: Path) -> None:
        (data,) = self.args
        self._rewrite(path, path.read_bytes() + data)

    def _length(self, d: Path, path: Path) -> None:
        entry, value = self.args
        data = bytearray(path.read_bytes())
        data[entry.offset:entry.offset + 4] = value.to_bytes(4, "little")
        self._rewrite(path, bytes(data))

    def _field(self, d: Path, path: Path) -> None:
        entry, fpath, value = self.args
        self._edit(path, entry, lambda msg: _set(msg, fpath, value))

    def _repeat(self, d: Path, path: Path) -> None:
        entry, fpath, how, i, j = self.args
        self._edit(path, entry, lambda msg: _reshape(_get(msg, fpath), how, i, j))

    def _edit(self, path: Path, entry: Entry, change) -> None:
        data = path.read_bytes()
        kind = kind_for(path.name)
        start = entry.offset + 4
        msg = next(m for i, (m, _) in enumerate(parse_entries(data, kind, path.name)) if i == entry.index)
        change(msg)
        body = msg.SerializePartialToString()
        self._rewrite(path, data[:entry.offset] + len(body).to_bytes(4, "little") + body
                      + data[start + entry.size:])

    def _remove(self, d: Path, path: Path) -> None:
        path.unlink()

    def _swap(self, d: Path, path: Path) -> None:
        (other,) = self.args
        tmp = d / ".swap"
        os.rename(path, tmp)
        os.rename(d / other, path)
        os.rename(tmp, d / other)

    def _symlink(self, d: Path, path: Path) -> None:
        (target,) = self.args
        if os.path.lexists(path):
            path.unlink()
        if target == "fifo":
            os.mkfifo(path)     # a FIFO in place of a file: a reader that opens it blocks
        else:
            os.symlink(target, path)


def _get(msg: Message, path: tuple):
    """The container or message at PATH (every step but the last one of a scalar path)."""
    for name, index in path[:-1]:
        msg = getattr(msg, name)
        if index is not None:
            msg = msg[index]
    name, _ = path[-1]
    return getattr(msg, name)


def _set(msg: Message, path: tuple, value) -> None:
    for name, index in path[:-1]:
        msg = getattr(msg, name)
        if index is not None:
            msg = msg[index]
    name, index = path[-1]
    fd = msg.DESCRIPTOR.fields_by_name[name]
    value = _fit(fd, value)
    if index is None:
        setattr(msg, name, value)
    else:
        getattr(msg, name)[index] = value


def _fit(fd, value):
    """VALUE made into something FIELD can hold (the mutation then still changes it)."""
    if fd.cpp_type == FD.CPPTYPE_BOOL:
        return bool(value)
    if fd.cpp_type in (FD.CPPTYPE_FLOAT, FD.CPPTYPE_DOUBLE):
        return float(value)
    if fd.cpp_type == FD.CPPTYPE_STRING:
        text = {0: "", 1: "/", 2: "..", 3: "/proc/self/mem", 4: "/dev/zero"}.get(value % 8, "x" * (value % 5000))
        return text if fd.type == FD.TYPE_STRING else text.encode()
    lo, hi = _RANGES[fd.cpp_type]
    if fd.cpp_type == FD.CPPTYPE_ENUM:
        known = [v.number for v in fd.enum_type.values]
        return known[value % len(known)]     # a closed enum refuses other numbers
    return value if lo <= value <= hi else lo + value % (hi - lo + 1)


def _reshape(items, how: str, i: int, j: int) -> None:
    """Duplicate (next to itself: an overlapping neighbour), drop, swap (out of order) or
    clear the elements of a repeated message field."""
    copies = []
    for item in items:
        c = type(item)()
        c.CopyFrom(item)
        copies.append(c)
    n = len(copies)
    if not n:
        return
    i, j = i % n, j % n
    if how == "dup":
        copies.insert(i + 1, copies[i])
    elif how == "drop":
        del copies[i]
    elif how == "swap":
        copies[i], copies[j] = copies[j], copies[i]
    elif how == "clear":
        copies = []
    del items[:]
    items.extend(copies)


# -- restored processes ------------------------------------------------------------------------

DOCUMENTED_EXITS = {1, 3, 4, 5, 6}      # README: exit codes of an error (not usage, not signals)


def _below(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(k) for k in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def kill_restored(pid: int) -> None:
    """SIGKILL a restored root (`restore -d`: reparented to us, a subreaper) and everything
    below it; reap them."""
    from tree_helpers import reap_orphans
    pids = [pid] + _below(pid)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap_orphans(timeout=10, pids=pids)


# -- one case -------------------------------------------------------------------------------

class CaseTimeout(Exception):
    pass


@contextmanager
def time_bound(seconds: float):
    def expire(signum, frame):
        raise CaseTimeout(f"still running after {seconds} s")
    # pytest-timeout's alarm (the test's own bound) is put back as it was, less the time spent
    old = signal.signal(signal.SIGALRM, expire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 0.001))


@dataclass
class Outcome:
    accepted: bool                 # load_tree took the mutated set: a restore may be tried
    error: Optional[str] = None    # the one line coldsnap said, else None
    failure: Optional[str] = None  # what went wrong: a traceback, a hang, a leftover


def _tree_listing(root: Path) -> set[str]:
    out = set()
    for where, dirs, files in os.walk(root):
        out.update(os.path.join(where, n) for n in dirs + files)
    return out


def check_images(images: Path, watch: Path, seconds: float = CASE_SECONDS) -> Outcome:
    """show and restore's loading of IMAGES, in this process; WATCH (a directory holding
    IMAGES) must look the same afterwards."""
    from coldsnap import show
    from coldsnap.restore import images as restore_images
    before = _tree_listing(watch)
    errors, accepted = [], False
    for step in ("show", "load"):
        try:
            with time_bound(seconds):
                if step == "show":
                    info = show.describe(str(images))
                    show.render(info)
                    json.dumps(info)            # show --json
                else:
                    # the images' PIDs being free is the machine's business, not the images':
                    # on a busy machine (pid_max 32768) they are soon reused by others
                    with mock.patch.object(restore_images, "_check_ids_free", lambda tids: None):
                        restore_images.load_tree(images)
                    accepted = True
        except CsError as e:
            line = error_words(e)           # what the command prints after "coldsnap: "
            if "\n" in line or not line:
                return Outcome(False, failure=f"{step}: {type(e).__name__} not one line: {line!r}")
            errors.append(f"{step}: {line}")
        except CaseTimeout as e:
            return Outcome(False, failure=f"{step}: {e}")
        except Exception:      # noqa: BLE001  (the point: anything but a CsError is a defect)
            return Outcome(False, failure=f"{step}: {traceback.format_exc()}")
    after = _tree_listing(watch)
    if after != before:
        return Outcome(accepted, failure=f"files left or removed: +{sorted(after - before)} -{sorted(before - after)}")
    return Outcome(accepted, "; ".join(errors) or None)


def run_case(pristine: Path, mutation: Mutation, scratch: Path) -> Outcome:
    """Apply MUTATION to a copy of PRISTINE under SCRATCH (emptied afterwards) and check it."""
    case = scratch / "case"
    if case.exists():
        shutil.rmtree(case)
    case.mkdir()
    try:
        mutation.apply(pristine, case)
        return check_images(case, scratch)
    finally:
        shutil.rmtree(case, ignore_errors=True)


# -- the hypothesis strategy ------------------------------------------------------------------

PARENT_TARGETS = (".", "..", "/nonexistent", "inventory.img", "/dev/zero", "/proc/self/cwd", "/")
SYMLINK_TARGETS = ("/dev/zero", "/dev/null", "fifo", "/nonexistent/file", "/proc/self/mem", "/etc/hostname", ".")


def mutations(layout: Layout):
    """A hypothesis strategy of Mutations of the dump LAYOUT describes."""
    from hypothesis import strategies as st

    files = st.sampled_from(layout.files)
    with_entries = sorted(n for n, es in layout.entries.items() if es)
    ints = st.one_of(st.sampled_from(INTERESTING), st.integers(-(1 << 63), (1 << 64) - 1),
                     st.integers(0, 1 << 16))

    @st.composite
    def flip(draw):
        name = draw(files)
        return Mutation("flip", name, (draw(st.integers(0, max(layout.sizes[name] - 1, 0))),
                                       draw(st.integers(1, 255))))

    @st.composite
    def truncate(draw):
        name = draw(files)
        return Mutation("truncate", name, (draw(st.integers(0, max(layout.sizes[name] - 1, 0))),))

    @st.composite
    def length(draw):
        name = draw(st.sampled_from(with_entries))
        entry = draw(st.sampled_from(layout.entries[name]))
        value = draw(st.one_of(st.sampled_from((0, 1, entry.size - 1, entry.size + 1, 0xFFFF_FFFF)),
                               st.integers(0, 0xFFFF_FFFF)))
        return Mutation("length", name, (entry, value % (1 << 32)))

    @st.composite
    def field(draw):
        name = draw(st.sampled_from([n for n in with_entries if any(e.fields for e in layout.entries[n])]))
        entry = draw(st.sampled_from([e for e in layout.entries[name] if e.fields]))
        return Mutation("field", name, (entry, draw(st.sampled_from(entry.fields)), draw(ints)))

    @st.composite
    def repeat(draw):
        name = draw(st.sampled_from([n for n in with_entries if any(e.repeated for e in layout.entries[n])]))
        entry = draw(st.sampled_from([e for e in layout.entries[name] if e.repeated]))
        return Mutation("repeat", name, (entry, draw(st.sampled_from(entry.repeated)),
                                         draw(st.sampled_from(("dup", "drop", "swap", "clear"))),
                                         draw(st.integers(0, 64)), draw(st.integers(0, 64))))

    @st.composite
    def whole_file(draw):
        name = draw(files)
        op = draw(st.sampled_from(("remove", "empty", "swap", "symlink", "append", "parent")))
        if op == "swap":
            return Mutation(op, name, (draw(files.filter(lambda n: n != name)),))
        if op == "symlink":
            return Mutation(op, name, (draw(st.one_of(st.sampled_from(SYMLINK_TARGETS), files)),))
        if op == "append":
            return Mutation(op, name, (draw(st.binary(min_size=1, max_size=64)),))
        if op == "parent":      # a parent link where the dump has none: loops, files, nowhere
            return Mutation("symlink", "parent", (draw(st.sampled_from(PARENT_TARGETS)),))
        return Mutation(op, name)

    # protobuf values first: they reach the validators behind the framing checks
    return st.one_of(field(), field(), field(), repeat(), flip(), truncate(), length(), whole_file())
