"""Frames for program runs, tests and benchmarks: a known traffic mix, and pcap files.

Built with scapy, the field's packet library, so that every header and checksum
is right without our own encoder. Addresses come from the ranges set aside for
benchmarking: 198.18.0.0/15 (RFC 2544) and 2001:2::/48 (RFC 5180).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.utils import RawPcapReader, wrpcap

SRC_MAC = "02:00:00:00:00:01"
DST_MAC = "02:00:00:00:00:02"
SRC_IP4, DST_IP4 = "198.18.0.1", "198.18.0.2"
SRC_IP6, DST_IP6 = "2001:2::1", "2001:2::2"


@dataclass(frozen=True)
class MixEntry:
    """One kind of frame in the mix and the IP protocol number a counter should see (None: not IP)."""

    kind: str
    proto: int | None


MIX_KINDS = (
    MixEntry("ipv4/tcp", 6),
    MixEntry("ipv4/udp", 17),
    MixEntry("ipv4/icmp", 1),
    MixEntry("ipv6/tcp", 6),
    MixEntry("ipv6/udp", 17),
    MixEntry("ipv6/icmpv6", 58),
    MixEntry("vlan/ipv4/udp", 17),
    MixEntry("arp", None),
)


def frame(kind: str, *, payload: bytes = b"", sport: int = 1024, dport: int = 9) -> bytes:
    """One Ethernet frame of the named kind (see `MIX_KINDS`)."""
    eth = Ether(src=SRC_MAC, dst=DST_MAC)
    ip4 = IP(src=SRC_IP4, dst=DST_IP4)
    ip6 = IPv6(src=SRC_IP6, dst=DST_IP6)
    layers = {
        "ipv4/tcp": lambda: eth / ip4 / TCP(sport=sport, dport=dport, flags="S"),
        "ipv4/udp": lambda: eth / ip4 / UDP(sport=sport, dport=dport),
        "ipv4/icmp": lambda: eth / ip4 / ICMP(id=sport, seq=dport),
        "ipv6/tcp": lambda: eth / ip6 / TCP(sport=sport, dport=dport, flags="S"),
        "ipv6/udp": lambda: eth / ip6 / UDP(sport=sport, dport=dport),
        "ipv6/icmpv6": lambda: eth / ip6 / ICMPv6EchoRequest(id=sport, seq=dport),
        "vlan/ipv4/udp": lambda: eth / Dot1Q(vlan=100) / ip4 / UDP(sport=sport, dport=dport),
        "arp": lambda: Ether(src=SRC_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=SRC_IP4, pdst=DST_IP4),
    }
    try:
        build = layers[kind]
    except KeyError:
        raise ValueError(f"unknown frame kind {kind!r}; known: {', '.join(layers)}") from None
    pkt = build()
    if payload and kind != "arp":
        pkt = pkt / payload
    return bytes(pkt)


def mix(count: int, *, seed: int = 1) -> list[bytes]:
    """``count`` frames cycling through `MIX_KINDS`, with ports and payload sizes from ``seed``."""
    rng = random.Random(seed)
    frames = []
    for i in range(count):
        entry = MIX_KINDS[i % len(MIX_KINDS)]
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        frames.append(frame(entry.kind, payload=payload, sport=rng.randrange(1024, 65536), dport=rng.randrange(1, 1024)))
    return frames


def mix_protocol_counts(count: int) -> Counter[int]:
    """How many frames of ``mix(count)`` carry each IP protocol (what xdp1 should count)."""
    counts: Counter[int] = Counter()
    for i in range(count):
        proto = MIX_KINDS[i % len(MIX_KINDS)].proto
        if proto is not None:
            counts[proto] += 1
    return counts


def read_pcap(path: str | Path) -> list[bytes]:
    """The frames of a pcap file, in order."""
    try:
        return [bytes(data) for data, _meta in RawPcapReader(str(path))]
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read pcap: {e}") from None
    except Exception as e:  # noqa: BLE001 -- scapy raises Scapy_Exception for a bad magic, and others
        raise ValueError(f"{path}: not a pcap file ({e})") from None


def write_pcap(path: str | Path, frames: list[bytes]) -> None:
    wrpcap(str(path), [Ether(f) for f in frames])
