"""vxdp.netdev.csum against scapy's checksums: frames left CHECKSUM_PARTIAL come out as scapy builds
them; frames we must not touch (not TCP/UDP, fragments, truncated, unknown EtherType) stay as they are."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packet_strategies import frames
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from vxdp.netdev.csum import complete_l4_checksum, sum_be16

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def rebuilt(frame: bytes) -> bytes:
    """The frame with its TCP/UDP checksum recomputed by scapy (the independent reference)."""
    pkt = Ether(frame)
    l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
    del l4.chksum
    return bytes(pkt)


def l4_csum_offset(frame: bytes) -> int:
    """Where the TCP/UDP checksum field is (scapy's Padding layer hangs under the L4 layer)."""
    l4 = Ether(frame).getlayer(TCP) or Ether(frame).getlayer(UDP)
    return len(frame) - len(bytes(l4)) + (16 if isinstance(l4, TCP) else 6)


def run(frame: bytes, slack: int = 0) -> tuple[bool, bytes]:
    buf = np.zeros(len(frame) + slack, np.uint8)
    buf[:len(frame)] = np.frombuffer(frame, np.uint8)
    done = complete_l4_checksum(buf, len(frame))
    return bool(done), buf[:len(frame)].tobytes()


def partial(frame: bytes, field: bytes = b"\x12\x34") -> bytes:
    """``frame`` with its L4 checksum field replaced, as a sender leaving it to offload would."""
    off = l4_csum_offset(frame)
    return frame[:off] + field + frame[off + 2:]


IP4 = IP(src="198.18.0.1", dst="198.18.1.1")
IP4_OPTS = IP(src="198.18.0.1", dst="198.18.1.1", options=b"\x01\x01\x01\x00\x94\x04\x00\x00")  # NOP,NOP,NOP,EOL+RA
IP6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
CASES = {
    "tcp4_syn": Ether(**MACS) / IP4 / TCP(sport=40000, dport=80, flags="S", options=[("MSS", 1460)]),
    "tcp4_odd_payload": Ether(**MACS) / IP4 / TCP(sport=1, dport=2) / (b"x" * 1001),
    "tcp4_full_mtu": Ether(**MACS) / IP4 / TCP(sport=1, dport=2) / (bytes(range(256)) * 5 + b"\xa5" * 180),
    "udp4": Ether(**MACS) / IP4 / UDP(sport=5353, dport=9) / b"hello",
    "udp4_ip_options": Ether(**MACS) / IP4_OPTS / UDP(sport=5353, dport=9) / b"odd",
    "tcp4_ip_options": Ether(**MACS) / IP4_OPTS / TCP(sport=3, dport=4) / b"payload!",
    "udp4_vlan": Ether(**MACS) / Dot1Q(vlan=7) / IP4 / UDP(sport=1, dport=2) / b"v",
    "tcp4_qinq": Ether(**MACS) / Dot1AD(vlan=3) / Dot1Q(vlan=7) / IP4 / TCP(sport=1, dport=2) / b"qq",
    "tcp6": Ether(**MACS) / IP6 / TCP(sport=40000, dport=443, flags="S"),
    "udp6_odd": Ether(**MACS) / IP6 / UDP(sport=1, dport=2) / (b"z" * 333),
    "udp6_vlan": Ether(**MACS) / Dot1Q(vlan=9) / IP6 / UDP(sport=1, dport=2) / b"six",
    "udp4_short_padded": Ether(**MACS) / IP4 / UDP(sport=1, dport=2) / b"a",  # padded to 60 below
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("field", [b"\x12\x34", b"\x00\x00", b"\xff\xff"])
def test_a_partial_checksum_is_completed_as_scapy_computes_it(name, field):
    good = bytes(CASES[name])
    if len(good) < 60:
        good += bytes(60 - len(good))  # Ethernet padding after the IP datagram is not summed
    assert rebuilt(good) == good
    done, out = run(partial(good, field), slack=7)
    assert done
    assert out == good


def test_the_field_as_the_kernel_leaves_it_is_completed():
    """The kernel stores the folded pseudo-header sum (not complemented) in the field."""
    good = bytes(CASES["tcp4_odd_payload"])
    ip = Ether(good)[IP]
    pseudo = ip.src, ip.dst
    s = sum(int.from_bytes(bytes(map(int, a.split("."))), "big") for a in pseudo)
    s = (s >> 16) + (s & 0xFFFF) + 6 + (len(good) - 34)
    s = (s >> 16) + (s & 0xFFFF)
    assert run(partial(good, s.to_bytes(2, "big"))) == (True, good)


def test_a_udp_checksum_that_sums_to_zero_is_sent_as_all_ones():
    base = Ether(**MACS) / IP4 / UDP(sport=1, dport=2)
    probe = bytes(base / b"\x00\x00")
    word = probe[40:42]  # a payload word equal to the checksum (~sum) brings the sum to 0xffff
    frame = bytes(base / word)
    done, out = run(partial(frame))
    assert done
    assert out[40:42] == b"\xff\xff"  # the computed 0 is sent as all ones


@pytest.mark.parametrize("frame", [
    Ether(**MACS) / IP4 / ICMP() / b"ping",
    Ether(**MACS) / IP(src="198.18.0.1", dst="198.18.1.1", flags="MF") / UDP(sport=1, dport=2) / b"frag",
    Ether(**MACS) / IP(src="198.18.0.1", dst="198.18.1.1", frag=100) / b"tail of a fragment",
    Ether(**MACS) / IP6 / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2) / b"ext",
    Ether(**MACS, type=0x88B5) / (b"\x00" * 50),
    Ether(**MACS) / Dot1Q() / Dot1Q() / Dot1Q() / IP4 / UDP() / b"three tags",
], ids=["icmp", "ip4_mf", "ip4_offset", "ip6_ext", "other_ethertype", "three_vlans"])
def test_frames_we_cannot_complete_are_left_untouched(frame):
    raw = bytes(frame)
    assert run(raw, slack=16) == (False, raw)


def test_truncated_frames_are_left_untouched():
    good = bytes(CASES["tcp4_odd_payload"])
    for cut in (13, 14, 20, 33, 34, 40, 53, len(good) - 1):
        raw = partial(good)[:cut]
        assert run(raw, slack=64) == (False, raw)  # bytes past the frame (the slot's rest) never read
    six = bytes(CASES["udp6_odd"])
    for cut in (30, 53, 61, len(six) - 1):
        raw = six[:cut]
        assert run(raw, slack=64) == (False, raw)


@settings(max_examples=400, deadline=None)
@given(frames(), st.integers(0, 7))
def test_any_frame_is_either_completed_correctly_or_left_alone(frame, slack):
    done, out = run(frame, slack)
    if done:
        assert out == rebuilt(out)
        assert out[:12] == frame[:12] and len(out) == len(frame)
    else:
        assert out == frame


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.integers(0, 9))
def test_the_sum_matches_the_textbook_definition_at_every_offset(data, start):
    start = min(start, len(data))
    buf = np.frombuffer(data, np.uint8).copy()
    tail = data[start:] + (b"\x00" if (len(data) - start) % 2 else b"")
    s = sum(int.from_bytes(tail[i:i + 2], "big") for i in range(0, len(tail), 2))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    got = sum_be16(buf, start, len(data))
    assert got == s or {got, s} <= {0, 0xFFFF}  # ones' complement: 0 and 0xffff are both zero
