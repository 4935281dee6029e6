"""Software GSO at the port: super-frames cut as the kernel would, checked against scapy's frames.

`segment` alone on frames scapy builds (every field we rewrite, against a
reference built field by field and checksummed by scapy), then the real path:
a GSO skb injected into a veth through a PACKET_VNET_HDR socket, so the port's
ring sees exactly what a local TSO sender produces, cut into wire-size frames.
"""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.frames import FrameBatch
from vxdp.netdev.gso import GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, SEG_REFUSED, segment
from vxdp.netdev.port import Port
from vxdp.testing.netns import NetLab, VethPair

SRC4, DST4 = "198.18.0.1", "198.18.0.2"
SRC6, DST6 = "fd00:198:18::1", "fd00:198:18::2"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def payload_of(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def tcp_super(n: int, *, v6: bool = False, flags: str = "PA", seq: int = 1000, vlan: bool = False) -> Ether:
    ip = IPv6(src=SRC6, dst=DST6) if v6 else IP(src=SRC4, dst=DST4, id=0xFFF0, flags="DF")
    l2 = ETH / Dot1Q(vlan=7) if vlan else ETH
    return l2 / ip / TCP(sport=4000, dport=80, seq=seq, ack=77, flags=flags,
                         options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / Raw(payload_of(n))


def udp_super(n: int, *, v6: bool = False) -> Ether:
    ip = IPv6(src=SRC6, dst=DST6) if v6 else IP(src=SRC4, dst=DST4, id=5)
    return ETH / ip / UDP(sport=4000, dport=9) / Raw(payload_of(n))


def reference(sup: Ether, gso_size: int) -> list[bytes]:
    """The frames the kernel's software GSO makes of ``sup``, built by scapy field by field."""
    data = bytes(sup[Raw].load)
    chunks = [data[o:o + gso_size] for o in range(0, len(data), gso_size)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        p = sup.copy()
        l4 = p.getlayer(TCP) or p.getlayer(UDP)
        l4.remove_payload()
        if IP in p:
            p[IP].id = (sup[IP].id + i) & 0xFFFF
            del p[IP].len, p[IP].chksum
        else:
            del p[IPv6].plen
        if TCP in p:
            p[TCP].seq = (sup[TCP].seq + i * gso_size) % 2**32
            flags = int(p[TCP].flags)
            if i > 0:
                flags &= ~0x80  # CWR on the first only
            if i < len(chunks) - 1:
                flags &= ~0x09  # FIN and PSH on the last only
            p[TCP].flags = flags
            del p[TCP].chksum
        else:
            del p[UDP].len, p[UDP].chksum
        out.append(bytes(p / Raw(chunk)))
    return out


def run_segment(frame: bytes, gso_type: int, gso_size: int, *, rows: int = 64, slot: int = 2048,
                first: int = 0, reserve: int = 0) -> tuple[int, list[bytes]]:
    src = np.frombuffer(frame, np.uint8).copy()
    b = FrameBatch.allocate(rows, slot)
    n = segment(src, len(frame), gso_type, gso_size, reserve, b.data, b.lens, first)
    return n, [b.data[first + i, :b.lens[first + i]].tobytes() for i in range(max(n, 0))]


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("flags", ["PA", "FPA", "CA", "A"])
def test_tcp_super_frame_is_cut_like_the_kernel(v6, flags):
    sup = tcp_super(10_000, v6=v6, flags=flags, seq=2**32 - 5000)  # the sequence number wraps inside
    n, got = run_segment(bytes(sup), (GSO_TCPV6 if v6 else GSO_TCPV4) | (GSO_ECN if "C" in flags else 0), 1448)
    want = reference(sup, 1448)
    assert n == len(want) == 7
    assert got == want


@pytest.mark.parametrize("v6", [False, True])
def test_udp_l4_super_frame_becomes_datagrams(v6):
    sup = udp_super(5000, v6=v6)
    n, got = run_segment(bytes(sup), GSO_UDP_L4, 1400)
    assert n == 4
    assert got == reference(sup, 1400)


def test_inner_vlan_tag_and_reserved_room():
    sup = tcp_super(3000, vlan=True)
    n, got = run_segment(bytes(sup), GSO_TCPV4, 1000, reserve=4, first=3)
    assert n == 3
    assert got == reference(sup, 1000)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 20_000), gso=st.integers(200, 1900), v6=st.booleans(),
       flags=st.sampled_from(["A", "PA", "FPA", "SA"]))
def test_any_cut_reassembles_and_checksums(size, gso, v6, flags):
    sup = tcp_super(size, v6=v6, flags=flags)
    n, got = run_segment(bytes(sup), GSO_TCPV6 if v6 else GSO_TCPV4, gso, rows=128)
    assert n == -(-size // gso)
    assert got == reference(sup, gso)
    assert b"".join(bytes(Ether(f)[TCP].payload) for f in got) == payload_of(size)


@pytest.mark.parametrize("frame,gso_type", [
    (bytes(udp_super(3000)), GSO_UDP),  # UFO: IP fragmentation, not ours to do
    (bytes(tcp_super(3000, v6=True)), GSO_TCPV4),  # the type contradicts the headers
    (bytes(udp_super(3000)), GSO_TCPV4),
    (bytes(tcp_super(3000))[:20], GSO_TCPV4),  # headers cut short
    (bytes(tcp_super(3000)), 0x42),
])
def test_what_we_do_not_cut_is_refused(frame, gso_type):
    assert run_segment(frame, gso_type, 1000)[0] == SEG_REFUSED


def test_a_segment_larger_than_a_slot_is_refused_and_rows_short_say_how_many():
    sup = bytes(tcp_super(8000))
    assert run_segment(sup, GSO_TCPV4, 4000, slot=2048)[0] == SEG_REFUSED
    assert run_segment(sup, GSO_TCPV4, 1000, rows=8, first=2)[0] == -8  # 8 frames, 6 rows left
    assert run_segment(sup, GSO_TCPV4, 1000, rows=8, first=0)[0] == 8


# -- the real path: a GSO skb through a veth into the port's ring -----------------------------------
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
NEEDS_CSUM = 1
PACKET_VNET_HDR = 15
DEADLINE_S = 30.0


@pytest.fixture
def pair() -> VethPair:
    with NetLab(prefix="vxgs") as lab:
        yield lab.veth(lab.netns(), lab.netns(), "vxa", "vxb", addr_a="198.18.0.1/30", addr_b="198.18.0.2/30")


def _inject(ifname: str, frames: list[tuple[bytes, int, int, int, int]]) -> None:
    """Send each (frame, gso_type, gso_size, csum_start, csum_offset) as one GSO skb (the netns is the caller's)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.setsockopt(263, PACKET_VNET_HDR, 1)
        s.bind((ifname, 0))
        for frame, gso_type, gso_size, cstart, coff in frames:
            hdr = VNET_HDR.pack(NEEDS_CSUM, gso_type, cstart, gso_size, cstart, coff)
            assert s.send(hdr + frame) == len(hdr) + len(frame)
    finally:
        s.close()


@pytest.mark.privileged
def test_gso_skbs_from_a_veth_reach_the_batch_as_wire_frames(pair):
    sups = [(tcp_super(20_000), GSO_TCPV4, 1448, 34, 16), (tcp_super(9_000, v6=True), GSO_TCPV6, 1428, 54, 16),
            (udp_super(4_000), GSO_UDP_L4, 1472, 34, 6)]
    want = [f for sup, _, size, _, _ in sups for f in reference(sup, size)]
    with Port(pair.b, netns=pair.ns_b) as rx:
        run_in_netns(pair.ns_a, _inject, pair.a, [(bytes(s), t, z, cs, co) for s, t, z, cs, co in sups])
        got: list[bytes] = []
        batch = FrameBatch.allocate(16)  # smaller than one super-frame's 14 segments + others: waits are exercised
        end = time.monotonic() + DEADLINE_S
        while len(got) < len(want) and time.monotonic() < end:
            rx.recv_batch(batch)
            got += [f for f in batch.frames() if f[:12] == bytes(ETH)[:12]]
        assert got == want
        stats = rx.stats()
        assert (stats.gso_frames, stats.gso_segments, stats.gso_refused) == (3, len(want), 0)
        assert stats.oversize == 0
