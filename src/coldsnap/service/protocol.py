"""The service's wire format: one SOCK_SEQPACKET message per record (the kernel keeps the
boundaries, so a record needs no length prefix), parsed strictly with every size bounded.

Imported by the client before anything else: it uses only built-in modules.

    client -> service   REQUEST   b"coldsnap-request-1\\0" umask \\0 package-dir (links resolved) \\0 argc \\0
                                  argv... \\0 env... (NUL-separated: neither argv nor the
                                  environment can hold a NUL), with exactly REQUEST_FDS fds
                                  (SCM_RIGHTS): the caller's stdin, stdout, stderr and cwd
                        SIGNAL    b"signal N": pass signal N (one of FORWARDED) to the worker
    service -> client   LOCAL     b"local REASON": the service will not run it; run it yourself
                        STARTED   b"started PID": the worker PID runs the command
                        EXIT      b"exit code N" / b"exit signal N": how the worker ended
                        ERROR     b"error REASON": a broken request; the connection closes
    worker -> service   EXIT      on the channel of each worker (a socket pair): its command's end,
                                  said once its output is flushed and the caller's stdio closed,
                                  before its teardown (the service relays it at once); a spare
                                  first says b"r" there once its pages are copied
"""
MAGIC = b"coldsnap-request-1"
REQUEST_FDS = 4                  # stdin, stdout, stderr, cwd
MAX_REQUEST = 128 << 10          # bytes; a seqpacket message must fit the socket's send buffer
MAX_REPLY = 4096
MAX_FIELDS = 8192                # argv + environment entries
SIGINT, SIGTERM, SIGHUP = 2, 15, 1
FORWARDED = (SIGINT, SIGTERM, SIGHUP)    # what the client passes on to the worker

# `restore --shell-job` gives the restored process the caller's terminal and session, which
# a worker in the service's session cannot: such a command runs in the caller's process, and
# so does `service` itself.
LOCAL_COMMANDS = ("service",)


class ProtocolError(ValueError):
    """A record that does not parse: the service answers ERROR and closes."""


def encode_request(argv: list[str], environ: list[bytes], umask: int, package: str) -> bytes:
    fields = [MAGIC, b"%o" % umask, package.encode(errors="surrogateescape"), b"%d" % len(argv),
              *(a.encode(errors="surrogateescape") for a in argv), *environ]
    return b"\0".join(fields)


class Request:
    """A parsed REQUEST (its fds travel beside it)."""
    __slots__ = ("argv", "environ", "umask", "package")

    def __init__(self, argv: list[str], environ: dict[str, str], umask: int, package: str) -> None:
        self.argv, self.environ, self.umask, self.package = argv, environ, umask, package


def decode_request(data: bytes) -> Request:
    if len(data) > MAX_REQUEST:
        raise ProtocolError("request too large")
    fields = data.split(b"\0")
    if len(fields) < 4 or fields[0] != MAGIC:
        raise ProtocolError("not a coldsnap request")
    if len(fields) > MAX_FIELDS:
        raise ProtocolError("too many arguments and variables")
    umask, argc = _number(fields[1], 8, 0o777), _number(fields[3], 10, len(fields) - 4)
    text = [f.decode(errors="surrogateescape") for f in fields[2:]]
    environ = {}
    for entry in text[2 + argc:]:
        name, eq, value = entry.partition("=")
        if not name or not eq:
            raise ProtocolError("an environment entry without a name")
        environ[name] = value
    return Request(text[2:2 + argc], environ, umask, text[0])


def _number(field: bytes, base: int, most: int) -> int:
    try:
        n = int(field, base) if field.isdigit() and len(field) <= 8 else -1
    except ValueError:          # a digit beyond the base
        n = -1
    if n < 0:
        raise ProtocolError("a number that is not one")
    if n > most:
        raise ProtocolError("a number out of range")
    return n


def runs_in_service(argv: list[str]) -> bool:
    """Whether the service may run this command line (else the caller runs it itself)."""
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] in LOCAL_COMMANDS:
        return False
    for a in argv if words[0] == "restore" else ():
        if a == "--":
            break
        opt = a.partition("=")[0]
        if opt.startswith("--"):
            if len(opt) >= 4 and "--shell-job".startswith(opt):
                return False
        elif opt.startswith("-") and "j" in opt:      # -j, or in a cluster (-dj); -Dproj too: harmless
            return False
    return True


def encode_signal(signum: int) -> bytes:
    return b"signal %d" % signum


def decode_signal(data: bytes) -> int:
    kind, _, n = data.partition(b" ")
    if kind != b"signal" or not n.isdigit() or len(n) > 3 or int(n) not in FORWARDED:
        raise ProtocolError("not a signal record")
    return int(n)


def encode_exit(status: int, by_signal: bool) -> bytes:
    return (b"exit signal %d" if by_signal else b"exit code %d") % status


def decode_exit(data: bytes) -> tuple[int, bool]:
    """(status, by_signal) of an EXIT record (a worker's word on its channel)."""
    kind, _, rest = data.partition(b" ")
    how, _, n = rest.partition(b" ")
    if kind != b"exit" or how not in (b"code", b"signal") or not n.isdigit() or len(n) > 3:
        raise ProtocolError("not an exit record")
    status, by_signal = int(n), how == b"signal"
    if status > (64 if by_signal else 255) or (by_signal and status == 0):
        raise ProtocolError("an exit status out of range")
    return status, by_signal


def decode_reply(data: bytes) -> tuple[str, str]:
    """(kind, rest): kind is local, started, exit or error."""
    kind, _, rest = data.partition(b" ")
    word = kind.decode("ascii", "replace")
    if word not in ("local", "started", "exit", "error"):
        raise ProtocolError("not a service reply")
    return word, rest.decode("utf-8", "replace")
