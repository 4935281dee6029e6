"""vhost-user wire format: the header, one dataclass per payload, decoders keyed by request.

Byte order: every vhost-user field is in the machine's NATIVE byte order (the spec says so;
little-endian on x86_64). The virtio rings the messages point at are little-endian, but that
is ``vxdp.virtio``'s business, not this module's.

Validation happens in three layers (rust-vmm's split):

1. syntax: ``problem()`` / ``is_valid()`` on every payload struct checks what the bytes alone
   can tell (reserved bits zero, counts in range, no 64-bit overflow);
2. dispatch: ``decode_request`` checks the exact payload size for the request and the number
   of fds that arrived with it (``allowed_fds``);
3. semantics: the session state machines (``backend``/``frontend``) check what needs state
   (vring index < number of vrings, ring size a power of two, regions not overlapping, ...).

Every error names the request and what is wrong, as a ``RemoteProtocolError``.
"""

from __future__ import annotations

import enum
import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from .errors import LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct("=III")  # request, flags, size
HEADER_SIZE = HEADER.size
VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
KNOWN_FLAGS = VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY
REPLY_FLAGS = VERSION | FLAG_REPLY  # 0x5: what every reply from a backend carries

MAX_PAYLOAD = 4096  # rust-vmm's MAX_MSG_SIZE; the biggest real message (mem table) is 264
MAX_FDS = 8  # the spec: at most 8 fds per message (QEMU's VHOST_MEMORY_BASELINE_NREGIONS)
MAX_REGIONS = 8
VRING_INDEX_MASK = 0xFF  # KICK/CALL/ERR payload: low byte is the vring index,
VRING_NOFD_MASK = 0x100  # bit 8 set means no fd travels with the message
VHOST_VRING_F_LOG = 0x1  # the only defined vring address flag
U64_MAX = (1 << 64) - 1

F_PROTOCOL_FEATURES = 1 << 30  # VHOST_USER_F_PROTOCOL_FEATURES, a virtio feature bit
F_LOG_ALL = 1 << 26  # VHOST_F_LOG_ALL


class FrontendReq(enum.IntEnum):
    """Front-end message types, named as the spec names them (without ``VHOST_USER_``).

    ``SET_BACKEND_REQ_FD`` is the spec's newer name of ``SET_SLAVE_REQ_FD``.
    """

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(enum.IntFlag):
    """``VHOST_USER_PROTOCOL_F_*`` bits (negotiated with GET/SET_PROTOCOL_FEATURES)."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16


def req_name(request: int | None) -> str:
    """The spec's name of a request code, or the number when it is not one we know."""
    try:
        return FrontendReq(request).name  # type: ignore[arg-type]
    except ValueError:
        return f"request {request}"


# ----------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class Empty:
    """No payload (size 0)."""

    SIZE: ClassVar[int] = 0

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, buf: bytes) -> Empty:
        return cls()

    def problem(self) -> str | None:
        return None

    def is_valid(self) -> bool:
        return self.problem() is None


@dataclass(frozen=True)
class U64:
    """A single u64 (features, acks, status, queue num)."""

    value: int
    SIZE: ClassVar[int] = 8
    _S: ClassVar[struct.Struct] = struct.Struct("=Q")

    def pack(self) -> bytes:
        return self._S.pack(self.value)

    @classmethod
    def unpack(cls, buf: bytes) -> U64:
        return cls(*cls._S.unpack(buf))

    def problem(self) -> str | None:
        return None if 0 <= self.value <= U64_MAX else f"value {self.value} is not a u64"

    def is_valid(self) -> bool:
        return self.problem() is None


@dataclass(frozen=True)
class VringFd:
    """KICK/CALL/ERR payload: a u64 whose low byte is the vring index and bit 8 "no fd"."""

    index: int
    no_fd: bool = False
    SIZE: ClassVar[int] = 8
    _S: ClassVar[struct.Struct] = struct.Struct("=Q")
    raw: int = field(default=-1, compare=False, repr=False)  # the u64 as received

    def pack(self) -> bytes:
        return self._S.pack((self.index & VRING_INDEX_MASK) | (VRING_NOFD_MASK if self.no_fd else 0))

    @classmethod
    def unpack(cls, buf: bytes) -> VringFd:
        (v,) = cls._S.unpack(buf)
        return cls(v & VRING_INDEX_MASK, bool(v & VRING_NOFD_MASK), raw=v)

    def problem(self) -> str | None:
        if not 0 <= self.index <= VRING_INDEX_MASK:
            return f"vring index {self.index} does not fit the low byte"
        if self.raw >= 0 and self.raw & ~(VRING_INDEX_MASK | VRING_NOFD_MASK):
            return f"reserved bits set in 0x{self.raw:x}"
        return None

    def is_valid(self) -> bool:
        return self.problem() is None


@dataclass(frozen=True)
class VringState:
    """A vring state description: index u32, num u32 (NUM, BASE, ENABLE, GET_VRING_BASE)."""

    index: int
    num: int
    SIZE: ClassVar[int] = 8
    _S: ClassVar[struct.Struct] = struct.Struct("=II")

    def pack(self) -> bytes:
        return self._S.pack(self.index, self.num)

    @classmethod
    def unpack(cls, buf: bytes) -> VringState:
        return cls(*cls._S.unpack(buf))

    def problem(self) -> str | None:
        if not (0 <= self.index < 1 << 32 and 0 <= self.num < 1 << 32):
            return "index/num do not fit u32"
        return None

    def is_valid(self) -> bool:
        return self.problem() is None


@dataclass(frozen=True)
class VringAddr:
    """A vring address description. Addresses are the FRONTEND's virtual addresses
    (translate through each region's ``userspace_addr``), ``log`` a guest address."""

    index: int
    flags: int
    descriptor: int
    used: int
    available: int
    log: int = 0
    SIZE: ClassVar[int] = 40
    _S: ClassVar[struct.Struct] = struct.Struct("=IIQQQQ")

    def pack(self) -> bytes:
        return self._S.pack(self.index, self.flags, self.descriptor, self.used, self.available, self.log)

    @classmethod
    def unpack(cls, buf: bytes) -> VringAddr:
        return cls(*cls._S.unpack(buf))

    def problem(self) -> str | None:
        if self.flags & ~VHOST_VRING_F_LOG:
            return f"unknown vring address flags 0x{self.flags:x}"
        return None

    def is_valid(self) -> bool:
        return self.problem() is None


@dataclass(frozen=True)
class MemRegion:
    """One memory region: guest physical address, size, frontend user address, offset of
    the region's first byte in the fd that travels with it."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int
    SIZE: ClassVar[int] = 32
    _S: ClassVar[struct.Struct] = struct.Struct("=QQQQ")

    def pack(self) -> bytes:
        return self._S.pack(self.guest_phys_addr, self.memory_size, self.userspace_addr, self.mmap_offset)

    @classmethod
    def unpack(cls, buf: bytes) -> MemRegion:
        return cls(*cls._S.unpack(buf))

    def problem(self) -> str | None:
        if self.memory_size == 0:
            return "region of size 0"
        for name in ("guest_phys_addr", "userspace_addr", "mmap_offset"):
            if getattr(self, name) + self.memory_size - 1 > U64_MAX:
                return f"{name} 0x{getattr(self, name):x} + size 0x{self.memory_size:x} overflows 64 bits"
        return None

    def is_valid(self) -> bool:
        return self.problem() is None


@dataclass(frozen=True)
class MemoryTable:
    """Memory regions description: nregions u32, padding u32, then nregions regions.

    QEMU sends only the regions in use (size = 8 + 32 * nregions); so do we, and we accept
    exactly that size.
    """

    regions: tuple[MemRegion, ...]
    _H: ClassVar[struct.Struct] = struct.Struct("=II")

    @property
    def size(self) -> int:
        return 8 + MemRegion.SIZE * len(self.regions)

    def pack(self) -> bytes:
        return self._H.pack(len(self.regions), 0) + b"".join(r.pack() for r in self.regions)

    @classmethod
    def unpack(cls, buf: bytes) -> MemoryTable:
        n, _pad = cls._H.unpack_from(buf)
        if n > MAX_REGIONS or len(buf) != 8 + MemRegion.SIZE * n:
            raise ValueError(f"nregions {n} does not match a {len(buf)}-byte payload")
        rs = tuple(MemRegion.unpack(buf[8 + i * 32 : 40 + i * 32]) for i in range(n))
        return cls(rs)

    def problem(self) -> str | None:
        if not 1 <= len(self.regions) <= MAX_REGIONS:
            return f"{len(self.regions)} regions (1..{MAX_REGIONS} allowed)"
        for i, r in enumerate(self.regions):
            p = r.problem()
            if p:
                return f"region {i}: {p}"
        return None

    def is_valid(self) -> bool:
        return self.problem() is None


@dataclass(frozen=True)
class SingleMemRegion:
    """ADD_MEM_REG/REM_MEM_REG payload: u64 padding then one region."""

    region: MemRegion
    SIZE: ClassVar[int] = 40

    def pack(self) -> bytes:
        return bytes(8) + self.region.pack()

    @classmethod
    def unpack(cls, buf: bytes) -> SingleMemRegion:
        return cls(MemRegion.unpack(buf[8:40]))

    def problem(self) -> str | None:
        return self.region.problem()

    def is_valid(self) -> bool:
        return self.problem() is None


CONFIG_SPACE_MAX = 256  # virtio-pci device config space; virtio-net's is 60-odd bytes


@dataclass(frozen=True)
class Config:
    """Virtio device config space access: offset u32, size u32, flags u32, payload[size].

    A GET_CONFIG reply of size 0 (no header fields even) is the spec's error answer; we
    represent it as ``Config(0, 0, 0, b"")`` with ``error=True``.
    """

    offset: int
    size: int
    flags: int
    payload: bytes = b""
    error: bool = False
    _H: ClassVar[struct.Struct] = struct.Struct("=III")

    def pack(self) -> bytes:
        if self.error:
            return b""
        return self._H.pack(self.offset, self.size, self.flags) + self.payload

    @classmethod
    def unpack(cls, buf: bytes) -> Config:
        if len(buf) == 0:
            return cls(0, 0, 0, b"", error=True)
        off, size, flags = cls._H.unpack_from(buf)
        return cls(off, size, flags, bytes(buf[12:]))

    def problem(self) -> str | None:
        if self.error:
            return None
        if self.size != len(self.payload):
            return f"size field {self.size} but {len(self.payload)} payload bytes"
        if self.flags not in (0, 1):
            return f"unknown config flags 0x{self.flags:x}"
        if self.offset + self.size > CONFIG_SPACE_MAX:
            return f"offset {self.offset} + size {self.size} beyond the {CONFIG_SPACE_MAX}-byte config space"
        return None

    def is_valid(self) -> bool:
        return self.problem() is None


Payload = Empty | U64 | VringFd | VringState | VringAddr | MemoryTable | SingleMemRegion | Config
EMPTY = Empty()


@dataclass(frozen=True)
class Message:
    """One vhost-user message: header fields, the decoded payload and the fds it carries.

    ``fds`` belong to whoever holds the message: the receiver must hand them on or close them.
    """

    request: FrontendReq
    payload: Payload = EMPTY
    flags: int = VERSION
    fds: tuple[int, ...] = ()

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def encode(self) -> bytes:
        body = self.payload.pack()
        return HEADER.pack(int(self.request), self.flags, len(body)) + body


# ----------------------------------------------------------------------------- decoders

Decoder = Callable[[bytes], Payload]


def _fixed(cls: type) -> tuple[Callable[[int], bool], Decoder, str]:
    return (lambda n: n == cls.SIZE, cls.unpack, f"{cls.SIZE} bytes")  # type: ignore[attr-defined]


def _mem_table_size(n: int) -> bool:
    return n >= 8 and (n - 8) % MemRegion.SIZE == 0 and (n - 8) // MemRegion.SIZE <= MAX_REGIONS


def _config_size(n: int) -> bool:
    return 12 <= n <= 12 + CONFIG_SPACE_MAX


_EMPTY = _fixed(Empty)
_U64 = _fixed(U64)
_VFD = _fixed(VringFd)
_STATE = _fixed(VringState)

# request -> (size predicate, decoder, size description). A known request missing here is
# one we do not implement (log, inflight, postcopy, IOTLB, crypto, gpu...): refused by name.
REQUEST_DECODERS: dict[FrontendReq, tuple[Callable[[int], bool], Decoder, str]] = {
    FrontendReq.GET_FEATURES: _EMPTY,
    FrontendReq.SET_FEATURES: _U64,
    FrontendReq.SET_OWNER: _EMPTY,
    FrontendReq.RESET_OWNER: _EMPTY,
    FrontendReq.SET_MEM_TABLE: (_mem_table_size, MemoryTable.unpack, "8 + 32 * nregions (<= 8) bytes"),
    FrontendReq.SET_VRING_NUM: _STATE,
    FrontendReq.SET_VRING_ADDR: _fixed(VringAddr),
    FrontendReq.SET_VRING_BASE: _STATE,
    FrontendReq.GET_VRING_BASE: _STATE,
    FrontendReq.SET_VRING_KICK: _VFD,
    FrontendReq.SET_VRING_CALL: _VFD,
    FrontendReq.SET_VRING_ERR: _VFD,
    FrontendReq.GET_PROTOCOL_FEATURES: _EMPTY,
    FrontendReq.SET_PROTOCOL_FEATURES: _U64,
    FrontendReq.GET_QUEUE_NUM: _EMPTY,
    FrontendReq.SET_VRING_ENABLE: _STATE,
    FrontendReq.SET_BACKEND_REQ_FD: _EMPTY,
    FrontendReq.GET_CONFIG: (_config_size, Config.unpack, "12 + size bytes"),
    FrontendReq.SET_CONFIG: (_config_size, Config.unpack, "12 + size bytes"),
    FrontendReq.GET_MAX_MEM_SLOTS: _EMPTY,
    FrontendReq.ADD_MEM_REG: _fixed(SingleMemRegion),
    FrontendReq.REM_MEM_REG: _fixed(SingleMemRegion),
    FrontendReq.SET_STATUS: _U64,
    FrontendReq.GET_STATUS: _EMPTY,
}

# Replies: GET_VRING_BASE answers a vring state, GET_CONFIG a config (or size 0 = error),
# every other reply (GET_* values and REPLY_ACK acks) is a u64.
REPLY_DECODERS: dict[FrontendReq, tuple[Callable[[int], bool], Decoder, str]] = {
    FrontendReq.GET_VRING_BASE: _STATE,
    FrontendReq.GET_CONFIG: (lambda n: n == 0 or _config_size(n), Config.unpack, "0 or 12 + size bytes"),
}
_DEFAULT_REPLY = _U64


def allowed_fds(request: FrontendReq, payload: Payload) -> tuple[int, int]:
    """The fd whitelist: (min, max) fds a request may carry, given its decoded payload."""
    if request == FrontendReq.SET_MEM_TABLE:
        n = len(payload.regions)  # type: ignore[union-attr]
        return (n, n)
    if request in (FrontendReq.SET_VRING_KICK, FrontendReq.SET_VRING_CALL, FrontendReq.SET_VRING_ERR):
        return (0, 0) if payload.no_fd else (1, 1)  # type: ignore[union-attr]
    if request in (FrontendReq.SET_BACKEND_REQ_FD, FrontendReq.ADD_MEM_REG):
        return (1, 1)
    if request == FrontendReq.REM_MEM_REG:
        return (0, 1)  # the spec: MAY accept one (and must close it unused)
    return (0, 0)


def decode_request(request: int, flags: int, body: bytes, nfds: int) -> Message:
    """Decode a framed request (fds attached by the caller afterwards). Raises a
    non-fatal RemoteProtocolError naming the request and the problem."""
    name = req_name(request)

    def err(what: str, code: int = errno.EINVAL) -> RemoteProtocolError:
        return RemoteProtocolError(f"{name}: {what}", request=request, flags=flags, errno=code)

    if flags & FLAG_REPLY:
        raise err("reply flag set on a request")
    try:
        req = FrontendReq(request)
    except ValueError:
        raise err("unknown request code", errno.EOPNOTSUPP) from None
    entry = REQUEST_DECODERS.get(req)
    if entry is None:
        raise err("not supported by this implementation", errno.EOPNOTSUPP)
    size_ok, decode, size_desc = entry
    if not size_ok(len(body)):
        raise err(f"payload of {len(body)} bytes, expected {size_desc}")
    try:
        payload = decode(body)
    except (ValueError, struct.error) as exc:
        raise err(str(exc)) from None
    problem = payload.problem()
    if problem:
        raise err(problem)
    lo, hi = allowed_fds(req, payload)
    if not lo <= nfds <= hi:
        want = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise err(f"carries {nfds} fds, expected {want}", errno.EBADF)
    return Message(req, payload, flags)


def decode_reply(request: int, flags: int, body: bytes, nfds: int) -> Message:
    """Decode a reply from a backend (fds are never expected in replies we ask for)."""
    name = req_name(request)

    def err(what: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"reply to {name}: {what}", request=request, flags=flags)

    if not flags & FLAG_REPLY:
        raise err("reply flag missing")
    try:
        req = FrontendReq(request)
    except ValueError:
        raise err("unknown request code") from None
    size_ok, decode, size_desc = REPLY_DECODERS.get(req, _DEFAULT_REPLY)
    if not size_ok(len(body)):
        raise err(f"payload of {len(body)} bytes, expected {size_desc}")
    try:
        payload = decode(body)
    except (ValueError, struct.error) as exc:
        raise err(str(exc)) from None
    problem = payload.problem()
    if problem:
        raise err(problem)
    if nfds:
        raise err(f"carries {nfds} fds, expected none")
    return Message(req, payload, flags)


def check_outgoing(msg: Message, *, as_reply: bool) -> None:
    """Refuse to encode what we would refuse to receive (LocalProtocolError)."""
    name = req_name(msg.request)
    if bool(msg.flags & FLAG_REPLY) != as_reply:
        raise LocalProtocolError(f"{name}: reply flag {'missing' if as_reply else 'set'}")
    if msg.flags & ~KNOWN_FLAGS or msg.flags & VERSION_MASK != VERSION:
        raise LocalProtocolError(f"{name}: bad header flags 0x{msg.flags:x}")
    problem = msg.payload.problem()
    if problem:
        raise LocalProtocolError(f"{name}: {problem}")
    if len(msg.fds) > MAX_FDS:
        raise LocalProtocolError(f"{name}: {len(msg.fds)} fds (at most {MAX_FDS})")
    if as_reply:
        if msg.fds:
            raise LocalProtocolError(f"{name}: replies carry no fds")
        return
    lo, hi = allowed_fds(msg.request, msg.payload)
    if not lo <= len(msg.fds) <= hi:
        raise LocalProtocolError(f"{name}: {len(msg.fds)} fds, the request takes {lo}..{hi}")


def ack(request: FrontendReq, err: int = 0) -> Message:
    """A REPLY_ACK answer: u64 0 on success, an errno on failure."""
    return Message(request, U64(err), REPLY_FLAGS)


def reply(request: FrontendReq, payload: Payload) -> Message:
    return Message(request, payload, REPLY_FLAGS)


def expects_reply(msg: Message) -> bool:
    """Whether the backend answers this request: the GET_* family always, others when the
    need_reply flag is set (only sent once REPLY_ACK is negotiated)."""
    return msg.request in ALWAYS_REPLIED or msg.need_reply


ALWAYS_REPLIED = frozenset(
    {
        FrontendReq.GET_FEATURES,
        FrontendReq.GET_PROTOCOL_FEATURES,
        FrontendReq.GET_VRING_BASE,
        FrontendReq.GET_QUEUE_NUM,
        FrontendReq.GET_CONFIG,
        FrontendReq.GET_MAX_MEM_SLOTS,
        FrontendReq.GET_STATUS,
    }
)
