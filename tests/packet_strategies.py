"""Hypothesis strategies for frames: well-formed traffic with random fields, and raw bytes.

Programs under test branch on EtherType, IP protocol, ports, TTL and lengths,
so well-formed frames with random fields reach the deep paths, while raw bytes
and truncated frames reach the bounds checks. Sizes stay within what
BPF_PROG_TEST_RUN takes for XDP (at least an Ethernet header).
"""

from __future__ import annotations

from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

MIN_FRAME, MAX_FRAME = 14, 1514

_macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
_ip4 = st.integers(0, 2**32 - 1).map(lambda v: ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0)))
_ip6 = st.binary(min_size=16, max_size=16).map(
    lambda b: ":".join(b[i : i + 2].hex() for i in range(0, 16, 2))
)
_port = st.one_of(st.integers(0, 65535), st.sampled_from([22, 53, 80, 443, 4789, 8080]))


@st.composite
def well_formed(draw) -> bytes:
    l3 = draw(st.sampled_from(["ip4", "ip6", "arp", "other"]))
    eth = Ether(src=draw(_macs), dst=draw(_macs))
    vlans = draw(st.integers(0, 2))
    for _ in range(vlans):
        eth = eth / Dot1Q(vlan=draw(st.integers(0, 4095)))
    if l3 == "arp":
        pkt = eth / ARP(psrc=draw(_ip4), pdst=draw(_ip4))
    elif l3 == "other":
        pkt = eth / draw(st.binary(min_size=0, max_size=64))
        pkt[Ether].type = draw(st.integers(0, 0xFFFF))
    else:
        if l3 == "ip4":
            ip = IP(src=draw(_ip4), dst=draw(_ip4), ttl=draw(st.integers(0, 255)), tos=draw(st.integers(0, 255)))
        else:
            ip = IPv6(src=draw(_ip6), dst=draw(_ip6), hlim=draw(st.integers(0, 255)))
        l4 = draw(st.sampled_from(["tcp", "udp", "icmp", "raw"]))
        if l4 == "tcp":
            ip = ip / TCP(sport=draw(_port), dport=draw(_port), flags=draw(st.integers(0, 255)),
                          seq=draw(st.integers(0, 2**32 - 1)))
        elif l4 == "udp":
            ip = ip / UDP(sport=draw(_port), dport=draw(_port))
        elif l4 == "icmp":
            ip = ip / (ICMP(type=draw(st.integers(0, 255))) if l3 == "ip4" else ICMPv6EchoRequest())
        else:
            if l3 == "ip4":
                ip.proto = draw(st.integers(0, 255))
            else:
                ip.nh = draw(st.integers(0, 255))
        pkt = eth / ip / draw(st.binary(min_size=0, max_size=256))
    data = bytes(pkt)
    cut = draw(st.one_of(st.none(), st.integers(MIN_FRAME, max(MIN_FRAME, len(data)))))
    if cut is not None:
        data = data[:cut]
    if len(data) < MIN_FRAME:
        data = data + bytes(MIN_FRAME - len(data))
    return data[:MAX_FRAME]


def frames() -> st.SearchStrategy[bytes]:
    """Mostly well-formed frames, with raw bytes now and then."""
    return st.one_of(
        well_formed(),
        well_formed(),
        well_formed(),
        st.binary(min_size=MIN_FRAME, max_size=MAX_FRAME),
    )
