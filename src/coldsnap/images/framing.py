"""How image files are framed: magics, size-prefixed protobuf entries, extra payloads.

Layout (host byte order, i.e. little-endian on x86-64):
  inventory.img      u32 INVENTORY, one entry
  regular image      u32 IMG_COMMON, u32 type magic, entries
  service file       u32 IMG_SERVICE, u32 type magic, entries (stats-*)
  raw image          bytes only (pages-N.img)
Entry: u32 length, protobuf bytes, then raw bytes for some kinds (pipes-/fifo-data: `bytes`,
sk-queues: `length`, ipcns-sem: the semaphore values, tcp-stream: inq_len + outq_len bytes of
the two queues, one after the other).
"""
from __future__ import annotations

import enum
import functools
import io
import os
import re
import stat
import struct
from importlib import import_module
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Union

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from ..errors import ImageError

# Every magic CRIU defines (name without the _MAGIC suffix, as crit spells them).
MAGICS: dict[str, int] = {
    "IMG_COMMON": 0x54564319, "IMG_SERVICE": 0x55105940, "INVENTORY": 0x58313116,
    "PSTREE": 0x50273030, "CORE": 0x55053847, "IDS": 0x54432030, "MM": 0x57492820,
    "PAGEMAP": 0x56084025, "FS": 0x51403912, "FDINFO": 0x56213732, "FILES": 0x56303138,
    "PIPES_DATA": 0x56453709, "FIFO_DATA": 0x59333054, "STATS": 0x57093306,
    "IRMAP_CACHE": 0x57004059, "REG_FILES": 0x50363636, "PIPES": 0x56513555,
    "FIFO": 0x58364939, "SIGACT": 0x55344201, "CREDS": 0x54023547, "RLIMIT": 0x57113925,
    "ITIMERS": 0x57464056, "POSIX_TIMERS": 0x52603957, "VMAS": 0x54123737,
    "SIGNAL": 0x59255647, "UNIXSK": 0x54373943, "INETSK": 0x56443851,
    "PACKETSK": 0x60454618, "NETLINK_SK": 0x58005614, "SK_QUEUES": 0x56264026,
    "TCP_STREAM": 0x51465506, "EVENTFD_FILE": 0x44523722, "EVENTPOLL_FILE": 0x45023858,
    "EVENTPOLL_TFD": 0x44433746, "SIGNALFD": 0x57323820, "INOTIFY_FILE": 0x48424431,
    "INOTIFY_WD": 0x54562009, "FANOTIFY_FILE": 0x55096122, "FANOTIFY_MARK": 0x56506035,
    "TIMERFD": 0x50493712, "TTY_FILES": 0x59433025, "TTY_INFO": 0x59453036,
    "TTY_DATA": 0x59413026, "FILE_LOCKS": 0x54323616, "REMAP_FPATH": 0x59133954,
    "GHOST_FILE": 0x52583605, "MEMFD_INODE": 0x48453499, "EXT_FILES": 0x59255641,
    "NS_FILES": 0x61394011, "TUNFILE": 0x57143751, "UTSNS": 0x54473203,
    "IPC_VAR": 0x53115007, "IPCNS_SHM": 0x46283044, "IPCNS_MSG": 0x55453737,
    "IPCNS_SEM": 0x59573019, "MNTS": 0x55563928, "NETDEV": 0x57373951,
    "NETNS": 0x55933752, "USERNS": 0x55474906, "TIMENS": 0x43114433,
    "PIDNS": 0x61157326, "CGROUP": 0x59383330, "CPUINFO": 0x61404013,
    "SECCOMP": 0x64413049, "BINFMT_MISC": 0x67343323, "AUTOFS": 0x49353943,
    "BPFMAP_FILE": 0x57506142, "BPFMAP_DATA": 0x64324033, "APPARMOR": 0x59423047,
    "PIDFD": 0x54435556,
}
IMG_COMMON = MAGICS["IMG_COMMON"]
IMG_SERVICE = MAGICS["IMG_SERVICE"]
RAW_MAGIC = 0  # pages-N.img: no magic at all

_U32 = struct.Struct("=I")  # host order, like CRIU and crit


_KEY_CHARS = {r"(\d+)": frozenset("0123456789"), r"([0-9a-f]+)": frozenset("0123456789abcdef")}


@functools.cache
def _name_shape(pattern: str) -> tuple[str, frozenset | None, str] | None:
    """(prefix, key characters, suffix) of a file-name pattern that is a literal with at most
    one key group ("core-(\\d+)\\.img"), None for another form: names are matched by string
    operations, without compiling a regex per kind (each compile costs 30-100 us of every
    command that reads images)."""
    for group, chars in _KEY_CHARS.items():
        if group in pattern:
            head, _, tail = pattern.partition(group)
            break
    else:
        head, chars, tail = pattern, None, ""
    if any(c in "()[]*+?{|^$.\\" for c in (head + tail).replace("\\.", "")):
        return None             # another regex form
    return head.replace("\\.", "."), chars, tail.replace("\\.", ".")


class Frame(enum.Enum):
    INVENTORY = "inventory"  # type magic only
    COMMON = "common"        # IMG_COMMON + type magic
    SERVICE = "service"      # IMG_SERVICE + type magic
    RAW = "raw"              # no magic, no entries


class ImageKind(NamedTuple):
    """What a file name means: its magic, entry type and how many entries it holds."""
    name: str                       # magic name (crit's spelling) or "PAGES"
    pattern: str                    # file-name regex; one group holds the key if keyed
    magic: int
    message: Optional[str]          # protobuf class of the entries, "module.class" of images/pb (None: raw)
    array: bool                     # False: exactly one entry
    frame: Frame = Frame.COMMON
    head: Optional[str] = None      # class of the first entry when it differs (pagemap_head)
    # the size of raw bytes after each entry (but the head entry, when there is one): the
    # field giving it, or how to compute it
    payload: Union[str, Callable[[Message], int], None] = None

    def payload_size(self, msg: Message) -> int:
        return self.payload(msg) if callable(self.payload) else getattr(msg, self.payload)

    def matches(self, file_name: str) -> bool:
        shape = _name_shape(self.pattern)
        if shape is None:
            return re.fullmatch(self.pattern, file_name) is not None
        head, chars, tail = shape
        if chars is None:
            return file_name == head
        key = file_name[len(head):len(file_name) - len(tail)]
        return (len(file_name) > len(head) + len(tail) and file_name.startswith(head)
                and file_name.endswith(tail) and all(c in chars for c in key))

    def file_name(self, key: Optional[int] = None) -> str:
        """The file name for this kind, e.g. pagemap-{key}.img."""
        fixed = self.pattern.replace(r"\.", ".").replace(r"(\d+)", "{}")
        if ("{}" in fixed) != (key is not None):
            raise ValueError(f"{self.name}: key {'needed' if key is None else 'not used'}")
        return fixed.format(key) if key is not None else fixed

    def entry_class(self, index: int) -> type:
        return _message_class(self.head if (index == 0 and self.head is not None) else self.message)


@functools.cache
def _message_class(ref: str) -> type:
    """A generated message class by its "module.class" name, its module imported on first use:
    a command builds the descriptors of the images it reads or writes only (issue 13)."""
    module, _, name = ref.partition(".")
    return getattr(import_module(f"{__package__}.pb.{module}"), name)


KINDS: tuple[ImageKind, ...] = (
    ImageKind("INVENTORY", r"inventory\.img", MAGICS["INVENTORY"], "inventory_pb2.inventory_entry",
              False, Frame.INVENTORY),
    ImageKind("PSTREE", r"pstree\.img", MAGICS["PSTREE"], "pstree_pb2.pstree_entry", True),
    ImageKind("CORE", r"core-(\d+)\.img", MAGICS["CORE"], "core_pb2.core_entry", False),
    ImageKind("IDS", r"ids-(\d+)\.img", MAGICS["IDS"], "ids_pb2.task_kobj_ids_entry", False),
    ImageKind("MM", r"mm-(\d+)\.img", MAGICS["MM"], "mm_pb2.mm_entry", False),
    ImageKind("PAGEMAP", r"pagemap-(\d+)\.img", MAGICS["PAGEMAP"], "pagemap_pb2.pagemap_entry",
              True, head="pagemap_pb2.pagemap_head"),
    # Shared-anonymous pagemaps reuse the PAGEMAP magic (crit shows them as PAGEMAP).
    ImageKind("PAGEMAP", r"pagemap-shmem-(\d+)\.img", MAGICS["PAGEMAP"], "pagemap_pb2.pagemap_entry",
              True, head="pagemap_pb2.pagemap_head"),
    ImageKind("PAGES", r"pages-(\d+)\.img", RAW_MAGIC, None, True, Frame.RAW),
    ImageKind("FS", r"fs-(\d+)\.img", MAGICS["FS"], "fs_pb2.fs_entry", False),
    ImageKind("FDINFO", r"fdinfo-(\d+)\.img", MAGICS["FDINFO"], "fdinfo_pb2.fdinfo_entry", True),
    ImageKind("FILES", r"files\.img", MAGICS["FILES"], "fdinfo_pb2.file_entry", True),
    ImageKind("PIPES_DATA", r"pipes-data\.img", MAGICS["PIPES_DATA"], "pipe_pb2.pipe_data_entry",
              True, payload="bytes"),
    ImageKind("FIFO_DATA", r"fifo-data\.img", MAGICS["FIFO_DATA"], "pipe_pb2.pipe_data_entry",
              True, payload="bytes"),
    ImageKind("SK_QUEUES", r"sk-queues\.img", MAGICS["SK_QUEUES"], "sk_packet_pb2.sk_packet_entry",
              True, payload="length"),
    ImageKind("MEMFD_INODE", r"memfd\.img", MAGICS["MEMFD_INODE"], "memfd_pb2.memfd_inode_entry", True),
    # SysV IPC objects: a semaphore set's u16 values follow its entry, padded to 8 bytes
    ImageKind("IPCNS_SHM", r"ipcns-shm-(\d+)\.img", MAGICS["IPCNS_SHM"], "ipc_shm_pb2.ipc_shm_entry", True),
    ImageKind("IPCNS_SEM", r"ipcns-sem-(\d+)\.img", MAGICS["IPCNS_SEM"], "ipc_sem_pb2.ipc_sem_entry", True,
              payload=lambda m: (2 * m.nsems + 7) & ~7),
    # an established TCP stream: its receive queue, then its send queue
    ImageKind("TCP_STREAM", r"tcp-stream-([0-9a-f]+)\.img", MAGICS["TCP_STREAM"],
              "tcp_stream_pb2.tcp_stream_entry", False, payload=lambda m: m.inq_len + m.outq_len),
    ImageKind("TTY_INFO", r"tty-info\.img", MAGICS["TTY_INFO"], "tty_info_pb2.tty_info_entry", True),
    # memfd inodes: CRIU 4.2 dumps shared anonymous memory as memfds (read, never written)
    ImageKind("MEMFD_INODE", r"memfd\.img", MAGICS["MEMFD_INODE"], "memfd_pb2.memfd_inode_entry", True),
    ImageKind("SECCOMP", r"seccomp\.img", MAGICS["SECCOMP"], "seccomp_pb2.seccomp_entry", False),
    ImageKind("REMAP_FPATH", r"remap-fpath\.img", MAGICS["REMAP_FPATH"],
              "remap_file_path_pb2.remap_file_path_entry", True),
    # The chunked form (files/ghost.py reads the other, raw to the end, itself); hex ids.
    ImageKind("GHOST_FILE", r"ghost-file-([0-9a-f]+)\.img", MAGICS["GHOST_FILE"],
              "ghost_file_pb2.ghost_chunk_entry", True, head="ghost_file_pb2.ghost_file_entry", payload="len"),
    # Service files: no .img suffix, IMG_SERVICE in front.
    ImageKind("STATS", r"stats-dump", MAGICS["STATS"], "stats_pb2.stats_entry", False, Frame.SERVICE),
    ImageKind("STATS", r"stats-restore", MAGICS["STATS"], "stats_pb2.stats_entry", False,
              Frame.SERVICE),
)


def warm_up() -> None:
    """What every reader of images works out on its first file of each kind, worked out now
    (a resident service, before it forks its workers: each would otherwise do it again, about
    0.6 ms of an 8 MiB restore): name shapes, message classes, their string fields, and one
    parse of each message type with every sub-message present (protobuf builds its parser
    tables for a type on its first parse)."""
    for kind in KINDS:
        _name_shape(kind.pattern)
        for ref in (kind.message, kind.head):
            if ref is not None:
                cls = _message_class(ref)
                _text_fields(cls.DESCRIPTOR)
                cls.FromString(_filled(cls()).SerializePartialToString())


def _filled(msg: Message, depth: int = 4) -> Message:
    """MSG with every message field set (one element of each repeated one), DEPTH levels down."""
    for f in msg.DESCRIPTOR.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE and depth:
            _filled(getattr(msg, f.name).add() if f.is_repeated else getattr(msg, f.name), depth - 1)
    return msg


def kind_for(path: Union[str, os.PathLike]) -> ImageKind:
    """The kind of an image from its file name; ImageError for names we do not know."""
    name = Path(path).name
    for kind in KINDS:
        if kind.matches(name):
            return kind
    raise ImageError(f"{path}: not an image file coldsnap knows")


def _kind(path, kind: Union[ImageKind, str, None]) -> ImageKind:
    if kind is None:
        return kind_for(path)
    if isinstance(kind, str):
        return kind_for(kind)
    return kind


def _header(kind: ImageKind) -> bytes:
    if kind.frame is Frame.INVENTORY:
        return _U32.pack(kind.magic)
    if kind.frame is Frame.COMMON:
        return _U32.pack(IMG_COMMON) + _U32.pack(kind.magic)
    if kind.frame is Frame.SERVICE:
        return _U32.pack(IMG_SERVICE) + _U32.pack(kind.magic)
    return b""


EntryLike = Union[Message, tuple]  # a message, or (message, payload) for payload kinds


def create_image_file(path: Union[str, os.PathLike]) -> int:
    """A new, empty image file at PATH (mode 0600: images hold the process's secrets),
    open for writing. Code writing a dump calls ImageDir.create_file, which comes here."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ImageError(f"{path}: cannot create image: {e.strerror}") from e


class ImageWriter:
    """Streams entries into one image file.

    The file is created only when the first entry arrives (by `create`, an fd opener;
    ImageDir.writer passes its own): CRIU treats a missing file as an empty image and
    never leaves zero-entry images behind.
    """

    def __init__(self, path: Union[str, os.PathLike], kind: Union[ImageKind, str, None] = None,
                 *, create: Optional[Callable[[], int]] = None):
        self.path = Path(path)
        self.kind = _kind(self.path, kind)
        if self.kind.frame is Frame.RAW:
            raise ImageError(f"{self.path}: raw image, write its bytes directly")
        self.count = 0
        self._create = create or (lambda: create_image_file(self.path))
        self._out: Optional[io.BufferedWriter] = None

    def write(self, msg: Message, payload: Optional[bytes] = None) -> None:
        kind = self.kind
        if self.count and not kind.array:
            raise ImageError(f"{self.path}: {kind.name} holds exactly one entry")
        want = kind.entry_class(self.count)
        if not isinstance(msg, want):
            raise TypeError(f"{self.path}: entry {self.count} must be {want.__name__}, "
                            f"not {type(msg).__name__}")
        missing = msg.FindInitializationErrors()
        if missing:
            raise ImageError(f"{self.path}: {want.__name__} lacks required {', '.join(missing)}")
        if kind.payload is not None and not (self.count == 0 and kind.head is not None):
            size = kind.payload_size(msg)
            if payload is None or len(payload) != size:
                got = "none" if payload is None else len(payload)
                raise ImageError(f"{self.path}: the entry announces {size} bytes but payload is {got}")
        elif payload is not None:
            raise ImageError(f"{self.path}: {kind.name} entries carry no payload")
        data = msg.SerializeToString()
        out = self._open()
        out.write(_U32.pack(len(data)))
        out.write(data)
        if payload:
            out.write(payload)
        self.count += 1

    def write_encoded(self, data: bytes, count: int) -> None:
        """COUNT entries already framed (u32 length + protobuf each) by the caller, appended
        as they are: pagemap entries encoded in bulk."""
        if count and not self.count:
            raise ImageError(f"{self.path}: encoded entries cannot come first")
        if count and not self.kind.array:
            raise ImageError(f"{self.path}: {self.kind.name} holds exactly one entry")
        self._open().write(data)
        self.count += count

    def _open(self) -> io.BufferedWriter:
        if self._out is None:
            self._out = open(self._create(), "wb", buffering=1 << 16)
            self._out.write(_header(self.kind))
        return self._out

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def __enter__(self) -> "ImageWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_image(path: Union[str, os.PathLike], kind: Union[ImageKind, str, None],
                entries: Iterable[EntryLike], *, create: Optional[Callable[[], int]] = None) -> int:
    """Write a whole image; returns the entry count (0: no file was created)."""
    with ImageWriter(path, kind, create=create) as w:
        for e in entries:
            if isinstance(e, tuple):
                w.write(*e)
            else:
                w.write(e)
        return w.count


def open_image(path: Union[str, os.PathLike]) -> int:
    """An fd (O_CLOEXEC) on an image file to read. Anything but a regular file is refused:
    a FIFO in its place would block the reader, a device (/dev/zero) never end.
    FileNotFoundError passes through for the callers to whom a missing image means empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ImageError(f"{path}: cannot open image: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError(f"{path}: not a regular file")
    return fd


def read_image_bytes(path: Union[str, os.PathLike]) -> bytes:
    """The whole content of an image file (open_image's checks; FileNotFoundError passes)."""
    fd = open_image(path)
    try:
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as e:
        raise ImageError(f"{path}: cannot read image: {e.strerror}") from None
    finally:
        os.close(fd)


def _load(path: Path, missing_ok: bool) -> Optional[bytes]:
    try:
        return read_image_bytes(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ImageError(f"{path}: no such image") from None


def check_header(view: memoryview, kind: ImageKind, where: str) -> int:
    """Verify the magic(s) of an image; returns the offset of its first entry."""
    if kind.frame is Frame.RAW:
        raise ImageError(f"{where}: raw image ({kind.name}) has no entries")
    header = _header(kind)
    if len(view) < len(header):
        raise ImageError(f"{where}: truncated: {len(view)} bytes, shorter than the magic")
    if view[:len(header)] != header:
        got = " ".join(f"{_U32.unpack_from(view, o)[0]:#x}" for o in range(0, len(header), 4))
        raise ImageError(f"{where}: bad magic {got} for {kind.name}")
    return len(header)


def entry_size(view: memoryview, pos: int, index: int, where: str) -> int:
    """The size prefix of the entry at pos, checked against the end of the data."""
    if pos + 4 > len(view):
        raise ImageError(f"{where}: truncated entry {index}: size prefix cut at byte {pos}")
    (size,) = _U32.unpack_from(view, pos)
    if pos + 4 + size > len(view):
        raise ImageError(f"{where}: truncated entry {index}: {size} bytes announced, "
                         f"{len(view) - pos - 4} left")
    return size


@functools.cache
def _text_fields(descriptor) -> tuple[tuple, tuple]:
    """(string fields, message fields that hold strings somewhere below) of a message type."""
    strings = tuple(f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING)
    subs = tuple(f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_MESSAGE
                 and f.message_type is not descriptor and any(_text_fields(f.message_type)))
    return strings, subs


def _not_utf8(msg: Message) -> Optional[str]:
    """The name of a string field of MSG (or below) that is not UTF-8, else None: protobuf
    hands such a value over as bytes, which every reader of a path or a name chokes on."""
    strings, subs = _text_fields(msg.DESCRIPTOR)
    for f in strings:
        value = getattr(msg, f.name)
        if any(isinstance(v, bytes) for v in value) if f.is_repeated else isinstance(value, bytes):
            return f.name
    for f in subs:
        for sub in getattr(msg, f.name) if f.is_repeated else ([getattr(msg, f.name)] if msg.HasField(f.name) else []):
            bad = _not_utf8(sub)
            if bad:
                return f"{f.name}.{bad}"
    return None


def parse_entries(data: bytes, kind: ImageKind, where: str = "image"
                  ) -> Iterator[tuple[Message, Optional[bytes]]]:
    """Yield (message, payload or None) from the bytes of a whole image file."""
    view = memoryview(data)
    pos, index = check_header(view, kind, where), 0
    while pos < len(view):
        size = entry_size(view, pos, index, where)
        pos += 4
        cls = kind.entry_class(index)
        msg = cls()
        try:
            msg.ParseFromString(view[pos:pos + size])
        except DecodeError as e:
            raise ImageError(f"{where}: entry {index} is not a valid {cls.__name__}: {e}") from e
        if not msg.IsInitialized():  # upb parses partial messages without complaint
            raise ImageError(f"{where}: entry {index} is not a valid {cls.__name__}: lacks "
                             f"required {', '.join(msg.FindInitializationErrors())}")
        bad = _not_utf8(msg)
        if bad:
            raise ImageError(f"{where}: entry {index}: {cls.__name__}.{bad} is not UTF-8 text")
        pos += size
        payload = None
        if kind.payload is not None and not (index == 0 and kind.head is not None):
            n = kind.payload_size(msg)
            if pos + n > len(view):
                raise ImageError(f"{where}: truncated payload of entry {index}: {n} bytes "
                                 f"announced, {len(view) - pos} left")
            payload = bytes(view[pos:pos + n])
            pos += n
        yield msg, payload
        index += 1
    if not kind.array and index != 1:
        raise ImageError(f"{where}: {kind.name} must hold one entry, found {index}")
    if kind.head is not None and index == 0:
        raise ImageError(f"{where}: {kind.name} lacks its head entry")


def read_entries(path: Union[str, os.PathLike], kind: Union[ImageKind, str, None] = None,
                 missing_ok: bool = False) -> list[tuple[Message, Optional[bytes]]]:
    """All (message, payload) pairs of an image; [] for a missing file if missing_ok."""
    path = Path(path)
    k = _kind(path, kind)
    data = _load(path, missing_ok)
    if data is None:
        return []
    return list(parse_entries(data, k, str(path)))


def read_image(path: Union[str, os.PathLike], kind: Union[ImageKind, str, None] = None,
               missing_ok: bool = False) -> list[Message]:
    """All messages of an image (payloads, if any, dropped: use read_entries)."""
    return [m for m, _ in read_entries(path, kind, missing_ok)]


def read_single(path: Union[str, os.PathLike], kind: Union[ImageKind, str, None] = None) -> Message:
    """The one entry of a single-entry image (inventory, core, mm, ids, fs, stats)."""
    msgs = read_image(path, kind)
    if len(msgs) != 1:
        raise ImageError(f"{path}: expected one entry, found {len(msgs)}")
    return msgs[0]
