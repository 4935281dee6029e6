"""Software GRO for a tap: a flow's consecutive segments merged into one GSO super-frame, the kernel's way.

The reference is `vxdp.netdev.gso.segment` in reverse: cutting a super-frame and
merging the pieces must give the super-frame back (its headers, payload, lengths,
IPv4 checksum), with the ``virtio_net_hdr`` a tap needs and the TCP checksum
field holding the pseudo-header sum (CHECKSUM_PARTIAL). Then the kernel's side:
a tap in a namespace takes the merged frames whole, as one skb each.
"""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from test_gso import payload_of, tcp_super

from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.frames import FrameBatch
from vxdp.netdev.gro import MERGED_MAX, coalesce
from vxdp.netdev.gso import GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN, segment
from vxdp.netdev.port import Port
from vxdp.netdev.tap import Tap
from vxdp.testing.netns import NetLab

VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset


def cut(frames: list[bytes], gso: int) -> FrameBatch:
    """A batch of the segments of each super-frame, in order."""
    b = FrameBatch.allocate(256)
    n = 0
    for f in frames:
        src = np.frombuffer(f, np.uint8).copy()
        v6 = Ether(f).haslayer(IPv6)
        n += segment(src, len(f), GSO_TCPV6 if v6 else GSO_TCPV4, gso, 0, b.data, b.lens, n)
    b.count = n
    return b


def merge_all(b: FrameBatch) -> list[tuple[tuple, bytes, int]]:
    """``(vnet header fields, frame, rows merged)`` for each frame the batch becomes."""
    buf = np.zeros(MERGED_MAX, np.uint8)
    out, i = [], 0
    while i < b.count:
        i, nbytes, merged = coalesce(b.data, b.lens, i, b.count, buf)
        out.append((VNET.unpack(buf[:VNET_HDR_LEN].tobytes()), buf[VNET_HDR_LEN:nbytes].tobytes(), merged))
    return out


def partial(frame: bytes) -> bytes:
    """``frame`` with its TCP checksum field set to the pseudo-header sum, as CHECKSUM_PARTIAL has it."""
    pkt = Ether(frame)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    tcp_len = len(bytes(pkt[TCP]))
    if IP in pkt:
        words = socket.inet_aton(ip.src) + socket.inet_aton(ip.dst)
    else:
        words = socket.inet_pton(socket.AF_INET6, ip.src) + socket.inet_pton(socket.AF_INET6, ip.dst)
    s = sum(struct.unpack(f"!{len(words) // 2}H", words)) + 6 + tcp_len
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    pkt[TCP].chksum = s
    return bytes(pkt)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("flags", ["A", "PA"])
def test_segments_merge_back_into_the_super_frame(v6, flags):
    sup = bytes(tcp_super(20_000, v6=v6, flags=flags, seq=2**32 - 7000))
    (hdr, frame, merged), = merge_all(cut([sup], 1448))
    assert merged == 14
    l4 = 14 + (40 if v6 else 20)
    assert hdr == (1, GSO_TCPV6 if v6 else GSO_TCPV4, l4 + 32, 1448, l4, 16)  # NEEDS_CSUM, hdr_len, gso_size
    assert frame == partial(sup)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=4), gso=st.integers(300, 1460))
def test_consecutive_flows_merge_each_into_its_own(sizes, gso):
    sups = [bytes(tcp_super(n, seq=1000 * k, flags="PA")) for k, n in enumerate(sizes)]
    sups = [s[:36] + (4000 + k).to_bytes(2, "big") + s[38:] for k, s in enumerate(sups)]  # a flow each (dport)
    got = merge_all(cut(sups, gso))
    assert len(got) == len(sups)
    for (hdr, frame, merged), sup, n in zip(got, sups, sizes, strict=True):
        nseg = -(-n // gso)
        if nseg == 1:
            assert (hdr, merged) == ((0,) * 6, 0)
            assert Ether(frame)[TCP].payload.load == payload_of(n)
        else:
            assert merged == nseg and hdr[3] == gso
            assert Ether(frame)[TCP].payload.load == payload_of(n)
            assert len(frame) == len(sup)


def test_what_may_not_merge_goes_alone():
    segs = cut([bytes(tcp_super(3000, flags="A"))], 1000)  # 3 segments, mergeable
    b = FrameBatch.allocate(8)
    rows = [segs.data[i, :segs.lens[i]].tobytes() for i in range(3)]
    gap = bytearray(rows[2])
    gap[38:42] = (int.from_bytes(gap[38:42], "big") + 1).to_bytes(4, "big")  # a sequence gap
    syn = bytes(tcp_super(10, flags="S"))
    b.fill([rows[0], rows[1], bytes(gap), syn])
    got = merge_all(b)
    assert [m for _, _, m in got] == [2, 0, 0]  # the gap and the SYN go alone, behind zero headers
    assert got[1][0] == (0,) * 6 and got[1][1] == bytes(gap)


@pytest.mark.privileged
def test_a_tap_takes_merged_frames_whole():
    """The kernel accepts what write_batch makes: a packet socket on the tap sees one GSO skb per run."""
    sup = bytes(tcp_super(20_000))
    segs = cut([sup], 1448)
    with NetLab("vxgr") as lab:
        ns = lab.netns()
        with Tap("vxgr0", netns=ns, gro=True) as tap:
            def capture() -> socket.socket:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
                s.setsockopt(263, 15, 1)  # PACKET_VNET_HDR: see each skb's gso fields
                s.bind(("vxgr0", 0))
                s.settimeout(0.2)
                return s
            cap = run_in_netns(ns, capture)
            try:
                assert tap.write_batch(segs) == segs.count
                seen: list[bytes] = []
                end = time.monotonic() + 10
                while time.monotonic() < end and not any(len(f) > 10_000 for f in seen):
                    try:
                        seen.append(cap.recv(1 << 17))
                    except TimeoutError:
                        pass
            finally:
                cap.close()
            big = [f for f in seen if len(f) > 10_000]
            assert len(big) == 1
            hdr = VNET.unpack(big[0][:VNET_HDR_LEN])
            assert hdr[1] == GSO_TCPV4 and hdr[3] == 1448
            assert big[0][VNET_HDR_LEN:][14 + 20 + 32:] == payload_of(20_000)
            st = tap.stats()
            assert (st.gro_frames, st.gro_segments) == (1, 14)


@pytest.mark.privileged
def test_a_port_sends_a_flows_segments_as_one_gso_skb():
    """Port A merges the segments into one super-frame; the veth carries it whole; Port B's ring sees
    one GSO skb and cuts it back into exactly the segments A was given. Other frames pass as they are."""
    segs = cut([bytes(tcp_super(30_000, flags="PA"))], 1448)
    other = bytes(tcp_super(100, flags="S"))  # a SYN never merges
    frames = [segs.data[i, :segs.lens[i]].tobytes() for i in range(segs.count)] + [other]
    batch = FrameBatch.allocate(64)
    batch.fill(frames)
    with NetLab("vxgp") as lab:
        pair = lab.veth(lab.netns(), lab.netns(), "vxa", "vxb")
        with Port(pair.a, netns=pair.ns_a) as tx, Port(pair.b, netns=pair.ns_b) as rx:
            assert tx.send_batch(batch) == len(frames)
            got: list[bytes] = []
            rb = FrameBatch.allocate(64)
            end = time.monotonic() + 10
            while len(got) < len(frames) and time.monotonic() < end:
                rx.recv_batch(rb)
                got += [f for f in rb.frames() if f[:12] == frames[0][:12]]
            assert got == frames
            st_tx, st_rx = tx.stats(), rx.stats()
            assert (st_tx.tx_gro_frames, st_tx.tx_gro_segments) == (1, segs.count)
            assert (st_rx.gso_frames, st_rx.gso_segments) == (1, segs.count)
