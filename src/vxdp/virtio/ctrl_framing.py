"""The virtio-net control virtqueue's generic framing (virtio 1.x §5.1.6.5), sans-IO.

Every control command is ``{u8 class; u8 command; u8 data[]}`` in the device-readable
part of a descriptor chain, answered by ``{u8 ack; u8 result[]}`` in the device-writable
part. Only the two header bytes and the ack are generic; what ``data`` and ``result``
hold belongs to the class. This module knows nothing of descriptors or guest memory:
the virtqueue layer gathers the readable bytes into one ``bytes`` and scatters the
reply back, so both the device (host) and the driver (guest) use the same two
dataclasses here.

The class numbers are those of virtio-v1.4-cs01; `CtrlClass.BPF` is vxdp's own
(experimental, see docs/offload-protocol.md) and the codec for it is
`vxdp.offload.codec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

HEADER_SIZE = 2  # u8 class, u8 command


class CtrlError(ValueError):
    """Bytes that are not a control-virtqueue request or reply (too short, bad ack)."""


class CtrlClass(IntEnum):
    """``VIRTIO_NET_CTRL_*`` classes. vxdp's device answers RX/MAC/VLAN/ANNOUNCE/MQ minimally
    and BPF fully; the rest exist so a log can name what a driver asked for."""

    RX = 0
    MAC = 1
    VLAN = 2
    ANNOUNCE = 3
    MQ = 4  # also RSS (cmd 1) and hash config (cmd 2)
    GUEST_OFFLOADS = 5
    NOTF_COAL = 6  # the 2019 offload RFC used 6 before the spec gave it to coalescing
    HASH_TUNNEL = 7
    STATS = 8
    BPF = 0x40  # vxdp: not allocated by OASIS


class Ack(IntEnum):
    """The device-written ``ack`` byte."""

    OK = 0  # VIRTIO_NET_OK
    ERR = 1  # VIRTIO_NET_ERR


class RxCmd(IntEnum):
    PROMISC = 0
    ALLMULTI = 1
    ALLUNI = 2
    NOMULTI = 3
    NOUNI = 4
    NOBCAST = 5


class MacCmd(IntEnum):
    TABLE_SET = 0
    ADDR_SET = 1


class VlanCmd(IntEnum):
    ADD = 0
    DEL = 1


class AnnounceCmd(IntEnum):
    ACK = 0


class MqCmd(IntEnum):
    VQ_PAIRS_SET = 0
    RSS_CONFIG = 1
    HASH_CONFIG = 2


class GuestOffloadsCmd(IntEnum):
    SET = 0


class NotfCoalCmd(IntEnum):
    TX_SET = 0
    RX_SET = 1
    VQ_SET = 2
    VQ_GET = 3


class HashTunnelCmd(IntEnum):
    SET = 0


class StatsCmd(IntEnum):
    QUERY = 0
    GET = 1


def class_name(cls: int) -> str:
    """``"MQ"`` for a known class, ``"class 0x2a"`` otherwise (for messages)."""
    try:
        return CtrlClass(cls).name
    except ValueError:
        return f"class {cls:#x}"


@dataclass(frozen=True)
class CtrlRequest:
    """What the driver puts in the device-readable part: class, command, command data."""

    cls: int
    command: int
    data: bytes = b""

    def __post_init__(self) -> None:
        for name in ("cls", "command"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFF:
                raise CtrlError(f"ctrl request {name} {value} does not fit in a u8")

    def encode(self) -> bytes:
        return bytes((self.cls, self.command)) + self.data

    @classmethod
    def decode(cls, buf: bytes) -> CtrlRequest:
        """Split the readable bytes of one chain. Raises `CtrlError` if under two bytes."""
        if len(buf) < HEADER_SIZE:
            raise CtrlError(f"ctrl request of {len(buf)} bytes has no class/command header")
        return cls(buf[0], buf[1], bytes(buf[HEADER_SIZE:]))


@dataclass(frozen=True)
class CtrlReply:
    """What the device writes into the device-writable part: ack, then the class's result."""

    ack: Ack
    result: bytes = b""

    def encode(self, capacity: int | None = None) -> bytes:
        """The bytes to write, cut to ``capacity`` (the writable area's size) if given."""
        out = bytes((self.ack,)) + self.result
        return out if capacity is None else out[: max(capacity, 0)]

    @classmethod
    def decode(cls, buf: bytes) -> CtrlReply:
        """Read what the device wrote (the used length's worth). Raises `CtrlError`."""
        if not buf:
            raise CtrlError("ctrl reply is empty: the device wrote no ack")
        try:
            ack = Ack(buf[0])
        except ValueError:
            raise CtrlError(f"ctrl reply ack {buf[0]} is neither VIRTIO_NET_OK nor VIRTIO_NET_ERR") from None
        return cls(ack, bytes(buf[1:]))

    @property
    def ok(self) -> bool:
        return self.ack == Ack.OK
