"""Wire primitives of the BPF control class: numbers, caps, errors, a bounded reader and a writer.

docs/offload-protocol.md is the spec; this module holds what every message shares. The
device decodes bytes a guest wrote, so the reader is the security boundary: every read is
bounds-checked, every length or count is compared with its cap *before* anything is
sliced or allocated, and every failure is one `OffloadProtocolError` naming the command
and the field (the device turns it into ``EINVAL``/``E2BIG`` plus that text). Building a
message that could not be sent (a value out of range, a blob over its cap) is the local
caller's fault and raises `OffloadEncodeError` instead, so what the driver sends always
decodes on the device. Everything is little-endian and packed.
"""

from __future__ import annotations

import struct
from enum import IntEnum

CTRL_CLASS_BPF = 0x40  # VIRTIO_NET_CTRL_BPF (same value as vxdp.virtio.ctrl_framing.CtrlClass.BPF)
VERSION_MAJOR = 1
VERSION_MINOR = 2  # 1.1 added MAP_FREEZE, 1.2 OBJ_LIST

MIN_REPLY = 64  # VIRTIO_NET_BPF_MIN_REPLY: smallest writable area a device executes a command with
REPLY_HEADER_SIZE = 16  # le32 code, flags, payload_len, text_len (after the u8 ack)
NAME_LEN = 16  # BPF_OBJ_NAME_LEN
TAG_LEN = 8  # BPF_TAG_SIZE
FUNC_INFO_SIZE = 8  # struct bpf_func_info
LINE_INFO_SIZE = 16  # struct bpf_line_info

# Codec caps: what any device accepts at most (a device's CAPS limits are usually tighter).
MAX_REQUEST = 16 << 20
MAX_KEY = 4096  # keys and continuation tokens
MAX_VALUE = 1 << 20  # one value on the wire, all CPUs of a per-CPU map included
MAX_INSNS = 1_000_000
MAX_BTF = 8 << 20
MAX_REC_SIZE = 256
MAX_BATCH = 65536
MAX_LICENSE = 128
MAX_ENGINE = 32
MAX_HELPERS = 1024
MAX_ACTIONS = 16
MAX_TEXT = 16 << 20
MAX_CHUNK = MAX_REQUEST
# What vxdp's device gathers of one request (class and command bytes included): its ctrl queue
# refuses a longer chain unread, and CAPS.max_request says this number, so the two cannot differ.
DEVICE_MAX_REQUEST = 1 << 20
MAX_REPLY = 1 + REPLY_HEADER_SIZE + MAX_REQUEST + MAX_TEXT


class Command(IntEnum):
    """Commands of class ``VIRTIO_NET_CTRL_BPF``."""

    CAPS = 0x00
    MAP_CREATE = 0x01
    MAP_FREE = 0x02
    MAP_LOOKUP = 0x03
    MAP_UPDATE = 0x04
    MAP_DELETE = 0x05
    MAP_GET_NEXT_KEY = 0x06
    MAP_LOOKUP_BATCH = 0x07
    MAP_UPDATE_BATCH = 0x08
    MAP_FREEZE = 0x09  # since 1.1
    PROG_LOAD = 0x10
    PROG_FREE = 0x11
    PROG_ATTACH = 0x12
    PROG_DETACH = 0x13
    PROG_QUERY = 0x14
    STATE_EXPORT = 0x20
    STATE_IMPORT = 0x21
    OBJ_LIST = 0x30  # since 1.2


class Errno(IntEnum):
    """Reply codes: asm-generic Linux errno numbers, fixed by the protocol (not the host's ``errno``)."""

    OK = 0
    EPERM = 1
    ENOENT = 2
    EIO = 5
    E2BIG = 7
    EBADF = 9
    EAGAIN = 11
    ENOMEM = 12
    EACCES = 13
    EBUSY = 16
    EEXIST = 17
    EINVAL = 22
    ENOSPC = 28
    EOPNOTSUPP = 95
    ENOBUFS = 105


class ReplyFlag(IntEnum):
    TEXT_TRUNCATED = 1 << 0
    PAYLOAD_OMITTED = 1 << 1


REPLY_FLAGS_KNOWN = ReplyFlag.TEXT_TRUNCATED | ReplyFlag.PAYLOAD_OMITTED


class AttachPoint(IntEnum):
    RX = 0  # frames headed for the driver, before they cross the ring


class AttachFlag(IntEnum):
    REPLACE = 1 << 0


class CapsFlag(IntEnum):
    STATE = 1 << 0  # STATE_EXPORT / STATE_IMPORT work


class StateImportFlag(IntEnum):
    LAST = 1 << 0


class ObjKind(IntEnum):
    """OBJ_LIST record ``kind``."""

    MAP = 1
    PROG = 2


class ObjOrigin(IntEnum):
    """OBJ_LIST record ``origin``: who created the object."""

    DRIVER = 0  # the device's driver (the guest), over the ctrl vq
    OPERATOR = 1  # the host's operator (``vxdp prog load --device``)
    IMPORT = 2  # a STATE_IMPORT recreated it


class ObjFlag(IntEnum):
    ATTACHED = 1 << 0  # a program on attach point RX
    FROZEN = 1 << 1  # a frozen map


OBJ_RECORD_SIZE = 56  # an OBJ_LIST record in version 1.2; later versions may append fields
MAX_OBJ_RECORD = 256


def command_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command {command:#04x}"


def wire_name(name: str) -> str:
    """``name`` as the wire's ``name[16]`` carries it: printable ASCII (anything else becomes ``_``),
    at most 15 characters. The one rule for every name that goes on the wire (MAP_CREATE and PROG_LOAD
    from the driver, OBJ_LIST and a state export from the device), so a name reads back as it was sent."""
    clean = "".join(c if c.isascii() and c.isprintable() else "_" for c in name)
    return clean[: NAME_LEN - 1]


class OffloadProtocolError(ValueError):
    """Bytes from the peer that are not a valid message: names the command and the field.

    ``code`` is what a device answers with: ``EINVAL``, or ``E2BIG`` for a length above a cap.
    """

    def __init__(self, command: int | None, field: str, detail: str, code: Errno = Errno.EINVAL):
        self.command = command
        self.field = field
        self.detail = detail
        self.code = code
        where = "BPF ctrl" if command is None else command_name(command)
        super().__init__(f"{where}: {field}: {detail}")


class OffloadEncodeError(ValueError):
    """A message our own caller built that cannot go on the wire (out of range, over a cap)."""


_U8, _U16, _U32, _U64, _I32 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<Q", "<i"))


class Reader:
    """Bounded cursor over one message body; each read names its field for the error."""

    def __init__(self, data: bytes, command: int | None, what: str = "request"):
        self._buf = memoryview(bytes(data))
        self._pos = 0
        self.command = command
        self.what = what

    def error(self, field: str, detail: str, code: Errno = Errno.EINVAL) -> OffloadProtocolError:
        return OffloadProtocolError(self.command, f"{self.what} {field}", detail, code)

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def take(self, n: int, field: str) -> bytes:
        if n > self.remaining:
            raise self.error(field, f"needs {n} bytes, {self.remaining} left (message truncated)")
        out = self._buf[self._pos : self._pos + n].tobytes()
        self._pos += n
        return out

    def _unpack(self, fmt: struct.Struct, field: str) -> int:
        return fmt.unpack(self.take(fmt.size, field))[0]

    def u8(self, field: str) -> int:
        return self._unpack(_U8, field)

    def u16(self, field: str) -> int:
        return self._unpack(_U16, field)

    def u32(self, field: str) -> int:
        return self._unpack(_U32, field)

    def u64(self, field: str) -> int:
        return self._unpack(_U64, field)

    def i32(self, field: str) -> int:
        return self._unpack(_I32, field)

    def count(self, field: str, cap: int) -> int:
        """A le32 length or count, refused above ``cap`` before anything is read."""
        n = self.u32(field)
        if n > cap:
            raise self.error(field, f"{n} is above the limit of {cap}", Errno.E2BIG)
        return n

    def array(self, field: str, count: int, size: int) -> bytes:
        """``count`` records of ``size`` bytes, checked against what is left before slicing."""
        total = count * size
        if total > self.remaining:
            raise self.error(field, f"{count} x {size} bytes run past the end ({self.remaining} left)")
        return self.take(total, field)

    def blob(self, field: str, cap: int) -> bytes:
        return self.take(self.count(f"{field} length", cap), field)

    def view(self, n: int, field: str) -> memoryview:
        """The next ``n`` bytes as a view of the message (no copy), checked like `take`."""
        if n > self.remaining:
            raise self.error(field, f"needs {n} bytes, {self.remaining} left (message truncated)")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def ahead(self) -> memoryview:
        """The unread bytes, without reading them (a decoder peeking at counts before it allocates)."""
        return self._buf[self._pos :]

    def ascii(self, field: str, cap: int) -> str:
        raw = self.blob(field, cap)
        if not raw.isascii() or b"\0" in raw:
            raise self.error(field, "is not NUL-free ASCII")
        return raw.decode("ascii")

    def name(self, field: str) -> str:
        raw = self.take(NAME_LEN, field)
        head, nul, tail = raw.partition(b"\0")
        if not nul:
            raise self.error(field, f"is not NUL-terminated within {NAME_LEN} bytes")
        if tail.strip(b"\0") or not head.isascii():
            raise self.error(field, "must be ASCII followed by NUL padding")
        return head.decode("ascii")

    def end(self) -> None:
        if self.remaining:
            raise self.error("end", f"{self.remaining} trailing bytes after the last field")


class Writer:
    """Builds one message body; raises `OffloadEncodeError` for what the reader would refuse."""

    def __init__(self, command: int | None, what: str = "request"):
        self._parts: list[bytes] = []
        self.command = command
        self.what = what

    def error(self, field: str, detail: str) -> OffloadEncodeError:
        where = "BPF ctrl" if self.command is None else command_name(self.command)
        return OffloadEncodeError(f"{where} {self.what} {field}: {detail}")

    def _pack(self, fmt: struct.Struct, value: int, field: str) -> None:
        try:
            self._parts.append(fmt.pack(value))
        except struct.error:
            raise self.error(field, f"{value!r} does not fit in {fmt.format}") from None

    def u8(self, value: int, field: str) -> None:
        self._pack(_U8, value, field)

    def u16(self, value: int, field: str) -> None:
        self._pack(_U16, value, field)

    def u32(self, value: int, field: str) -> None:
        self._pack(_U32, value, field)

    def u64(self, value: int, field: str) -> None:
        self._pack(_U64, value, field)

    def i32(self, value: int, field: str) -> None:
        self._pack(_I32, value, field)

    def raw(self, data: bytes) -> None:
        self._parts.append(bytes(data))

    def count(self, n: int, field: str, cap: int) -> None:
        if n > cap:
            raise self.error(field, f"{n} is above the limit of {cap}")
        self.u32(n, field)

    def blob(self, data: bytes, field: str, cap: int) -> None:
        self.count(len(data), f"{field} length", cap)
        self.raw(data)

    def ascii(self, text: str, field: str, cap: int) -> None:
        if not text.isascii() or "\0" in text:
            raise self.error(field, f"{text!r} is not NUL-free ASCII")
        self.blob(text.encode("ascii"), field, cap)

    def name(self, text: str, field: str) -> None:
        if not text.isascii() or "\0" in text or len(text) >= NAME_LEN:
            raise self.error(field, f"{text!r} is not ASCII of at most {NAME_LEN - 1} characters")
        self.raw(text.encode("ascii").ljust(NAME_LEN, b"\0"))

    def bytes(self) -> bytes:
        return b"".join(self._parts)
