"""virtio-net: the per-frame header, the device configuration space, queue numbering (spec §5.1).

Everything here is little-endian, as virtio 1.x says of its structures.

Header length: 12 bytes (``struct virtio_net_hdr_mrg_rxbuf``, with
``num_buffers``) when VERSION_1 or MRG_RXBUF is negotiated, otherwise the
legacy 10 bytes. Without MRG_RXBUF a VERSION_1 device still writes the 12-byte
header and MUST set ``num_buffers`` to 1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from vxdp.virtio.features import Feature, has

HDR_LEN = 12
HDR_LEN_LEGACY = 10
_HDR = struct.Struct("<BBHHHHH")
_HDR_LEGACY = struct.Struct("<BBHHHH")


class NetError(Exception):
    """A malformed virtio-net header or config space."""


class HdrFlags(IntFlag):
    NEEDS_CSUM = 1
    DATA_VALID = 2
    RSC_INFO = 4


class GsoType(IntEnum):
    NONE = 0
    TCPV4 = 1
    UDP = 3
    TCPV6 = 4
    UDP_L4 = 5
    ECN = 0x80


class LinkStatus(IntFlag):
    LINK_UP = 1
    ANNOUNCE = 2


def header_len(features: int) -> int:
    """The net header length the negotiated ``features`` imply."""
    if has(features, Feature.VERSION_1) or has(features, Feature.NET_MRG_RXBUF):
        return HDR_LEN
    return HDR_LEN_LEGACY


@dataclass(frozen=True)
class NetHeader:
    flags: int = 0
    gso_type: int = 0
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 1

    def encode(self, length: int = HDR_LEN) -> bytes:
        if length == HDR_LEN:
            return _HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                             self.csum_start, self.csum_offset, self.num_buffers)
        if length == HDR_LEN_LEGACY:
            return _HDR_LEGACY.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                                    self.csum_start, self.csum_offset)
        raise NetError(f"a virtio-net header is 10 or 12 bytes, not {length}")

    @classmethod
    def decode(cls, data: bytes, length: int = HDR_LEN) -> NetHeader:
        if length not in (HDR_LEN, HDR_LEN_LEGACY):
            raise NetError(f"a virtio-net header is 10 or 12 bytes, not {length}")
        if len(data) < length:
            raise NetError(f"virtio-net header truncated: {len(data)} of {length} bytes")
        if length == HDR_LEN:
            return cls(*_HDR.unpack_from(data))
        return cls(*_HDR_LEGACY.unpack_from(data), num_buffers=1)


# Device configuration space (§5.1.4): mac[6], status u16, max_virtqueue_pairs u16, mtu u16,
# speed u32, duplex u8, rss_max_key_size u8, rss_max_indirection_table_length u16,
# supported_hash_types u32. Which fields exist depends on features; we encode the first 12
# bytes (through mtu) and speed/duplex, and decode whatever prefix is given.
_CFG = struct.Struct("<6sHHHIB")
CONFIG_LEN = _CFG.size  # 17


@dataclass(frozen=True)
class NetConfig:
    mac: bytes = b"\x52\x54\x00\x12\x34\x56"
    status: int = LinkStatus.LINK_UP
    max_virtqueue_pairs: int = 1
    mtu: int = 1500
    speed: int = 0xFFFFFFFF  # unknown
    duplex: int = 0xFF  # unknown

    def __post_init__(self) -> None:
        if len(self.mac) != 6:
            raise NetError(f"a MAC address is 6 bytes, not {len(self.mac)}")
        if not 1 <= self.max_virtqueue_pairs <= 0x8000:
            raise NetError(f"max_virtqueue_pairs {self.max_virtqueue_pairs} outside 1..0x8000")
        if not 68 <= self.mtu <= 65535:
            raise NetError(f"mtu {self.mtu} outside 68..65535")

    def encode(self) -> bytes:
        return _CFG.pack(self.mac, self.status, self.max_virtqueue_pairs, self.mtu, self.speed, self.duplex)

    @classmethod
    def decode(cls, data: bytes) -> NetConfig:
        """Decode a config space read (at least mac + status + max pairs + mtu, 12 bytes)."""
        if len(data) < 12:
            raise NetError(f"virtio-net config truncated: {len(data)} bytes, need at least 12")
        padded = bytes(data[:CONFIG_LEN]).ljust(CONFIG_LEN, b"\xff")
        mac, status, pairs, mtu, speed, duplex = _CFG.unpack(padded)
        return cls(mac, status, pairs, mtu, speed, duplex)

    def read(self, offset: int, size: int) -> bytes:
        """The bytes a driver reading ``size`` bytes at ``offset`` gets (vhost-user GET_CONFIG)."""
        raw = self.encode()
        if offset < 0 or size < 0 or offset + size > len(raw):
            raise NetError(f"config read at {offset} size {size} outside the {len(raw)}-byte config space")
        return raw[offset:offset + size]


def rx_queue(pair: int) -> int:
    return 2 * pair


def tx_queue(pair: int) -> int:
    return 2 * pair + 1


def ctrl_queue(max_queue_pairs: int = 1) -> int:
    return 2 * max_queue_pairs


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise NetError(f"MAC address {text!r} is not six colon-separated bytes")
    try:
        out = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise NetError(f"MAC address {text!r} has a byte that is not hex") from None
    return out
