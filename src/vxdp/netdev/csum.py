"""Completing a TCP/UDP checksum the sending stack left partial (CHECKSUM_PARTIAL), in compiled code.

Why: a frame sent by a local socket through a device with tx checksum offload
(a veth, by default) is never checksummed in software; the skb carries
``CHECKSUM_PARTIAL`` and the L4 checksum field holds only the folded
pseudo-header sum, left for "the hardware" to finish. An AF_PACKET ring shows
such a frame with ``TP_STATUS_CSUMNOTREADY`` in ``tp_status``
(``net/packet/af_packet.c``: ``skb->ip_summed == CHECKSUM_PARTIAL``; the
opposite case, ``TP_STATUS_CSUM_VALID``, means the checksum was verified and
needs nothing). The ring does not expose ``csum_start``/``csum_offset``, so we
find the L4 header by parsing, and a guest that has not negotiated
``VIRTIO_NET_F_GUEST_CSUM`` must get a finished checksum, which
`complete_l4_checksum` writes in place.

We recompute the whole checksum (pseudo header + L4 header + payload, per
RFC 793 / 768 / 8200) with the field taken as zero, rather than adding to the
partial sum the field holds: the result then does not depend on what the
sender left there. A frame we cannot parse (not IPv4/IPv6 over Ethernet with
at most two VLAN tags, an IPv4 fragment, IPv6 extension headers, lengths that
do not fit the frame) is left exactly as it came.

The sum: the Internet checksum is a ones' complement sum of big-endian 16-bit
words, i.e. a sum modulo 0xffff in which a byte weighs 256 or 1 according to
its parity. `sum_be16` sums the bytes with the weight of their *absolute*
parity (little-endian words), which lets the bulk be 8-byte loads, and swaps
the folded result when the range starts at an even offset (256 * 256 ≡ 1
mod 0xffff, so swapping the two bytes multiplies by 256).
"""

from __future__ import annotations

import numpy as np
from numba import njit

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
MAX_VLAN_TAGS = 2
IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_CSUM_OFF = 16
TCP_MIN_HLEN = 20
UDP_CSUM_OFF = 6
UDP_HLEN = 8
IPV6_HLEN = 40
IPV4_FRAG_MASK = 0x3FFF  # MF flag + fragment offset


@njit(cache=True, nogil=True, inline="always")
def be16(b: np.ndarray, i: int) -> int:
    return (np.int64(b[i]) << 8) | np.int64(b[i + 1])


@njit(cache=True, nogil=True, inline="always")
def put16(b: np.ndarray, i: int, v: int) -> None:
    """Store ``v`` as a big-endian (network order) 16-bit word at ``b[i]``."""
    b[i] = (v >> 8) & 0xFF
    b[i + 1] = v & 0xFF


@njit(cache=True, nogil=True)
def _fold(s: int) -> int:
    """Fold a non-negative sum to 16 bits with end-around carry (the ones' complement sum)."""
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@njit(cache=True, nogil=True)
def sum_be16(b: np.ndarray, start: int, end: int) -> int:
    """Ones' complement sum (folded, 16 bits) of ``b[start:end]`` as big-endian words, an odd tail padded."""
    s = np.uint64(0)
    i = start
    head = min(end, (start + 7) & ~7)
    while i < head:  # up to an 8-byte boundary, one byte at a time, weighted by its absolute parity
        s += np.uint64(b[i]) << np.uint64((i & 1) << 3)
        i += 1
    words = b[i:i + ((end - i) & ~7)].view(np.uint64) if i < end else b[0:0].view(np.uint64)
    for k in range(words.shape[0]):  # little-endian u64: two u32 halves, each ≡ its two u16 words
        w = words[k]
        s += (w & np.uint64(0xFFFFFFFF)) + (w >> np.uint64(32))
    i += words.shape[0] * 8
    while i < end:
        s += np.uint64(b[i]) << np.uint64((i & 1) << 3)
        i += 1
    r = _fold(np.int64(s & np.uint64(0xFFFFFFFF)) + np.int64(s >> np.uint64(32)))
    if (start & 1) == 0:
        r = ((r & 0xFF) << 8) | (r >> 8)
    return r


@njit(cache=True, nogil=True)
def parse_l4(b: np.ndarray, length: int) -> tuple[int, int, int, int, bool]:
    """Where the TCP/UDP segment of the Ethernet frame ``b[:length]`` lies: ``(l3, l4, l4len, proto, ipv4)``.

    ``l4len`` is the L3 payload as the IP header declares it (trailing padding
    excluded). ``l3`` is -1 for a frame we do not parse: not IPv4/IPv6 over
    Ethernet with at most two VLAN tags, an IPv4 fragment, IPv6 extension
    headers, not TCP/UDP, lengths that do not fit the frame.
    """
    if length < ETH_HLEN:
        return -1, 0, 0, 0, False
    l3 = ETH_HLEN
    etype = be16(b, 12)
    for _ in range(MAX_VLAN_TAGS):
        if etype != ETH_P_8021Q and etype != ETH_P_8021AD:
            break
        if l3 + 4 > length:
            return -1, 0, 0, 0, False
        etype = be16(b, l3 + 2)
        l3 += 4
    if etype == ETH_P_IP:
        if l3 + 20 > length or (b[l3] >> 4) != 4:
            return -1, 0, 0, 0, False
        ihl = np.int64(b[l3] & 0xF) * 4
        total = be16(b, l3 + 2)
        if ihl < 20 or total < ihl or l3 + total > length:
            return -1, 0, 0, 0, False
        if be16(b, l3 + 6) & IPV4_FRAG_MASK:
            return -1, 0, 0, 0, False  # a fragment: its L4 checksum spans other frames
        proto = np.int64(b[l3 + 9])
        l4 = l3 + ihl
        l4len = total - ihl
        ipv4 = True
    elif etype == ETH_P_IPV6:
        if l3 + IPV6_HLEN > length or (b[l3] >> 4) != 6:
            return -1, 0, 0, 0, False
        l4len = be16(b, l3 + 4)
        proto = np.int64(b[l3 + 6])
        l4 = l3 + IPV6_HLEN
        if l4 + l4len > length:
            return -1, 0, 0, 0, False
        ipv4 = False
    else:
        return -1, 0, 0, 0, False
    if proto == IPPROTO_TCP:
        if l4len < TCP_MIN_HLEN:
            return -1, 0, 0, 0, False
    elif proto == IPPROTO_UDP:
        if l4len < UDP_HLEN:
            return -1, 0, 0, 0, False
    else:
        return -1, 0, 0, 0, False
    return l3, l4, l4len, proto, ipv4


@njit(cache=True, nogil=True)
def ipv4_header_checksum(b: np.ndarray, l3: int) -> None:
    """Write the header checksum of the IPv4 header at ``b[l3:]`` (its IHL already valid)."""
    ihl = np.int64(b[l3] & 0xF) * 4
    b[l3 + 10] = 0
    b[l3 + 11] = 0
    c = (~sum_be16(b, l3, l3 + ihl)) & 0xFFFF
    b[l3 + 10] = c >> 8
    b[l3 + 11] = c & 0xFF


@njit(cache=True, nogil=True)
def complete_l4_checksum(b: np.ndarray, length: int) -> bool:
    """Write the full TCP/UDP checksum of the Ethernet frame ``b[:length]`` in place; False if left as is.

    ``b`` is the frame's buffer (uint8, 1-D, contiguous; it may be longer than
    the frame). Only a frame `parse_l4` fully parses is changed.
    """
    l3, l4, l4len, proto, ipv4 = parse_l4(b, length)
    if l3 < 0:
        return False
    if ipv4:
        pseudo = sum_be16(b, l3 + 12, l3 + 20) + proto
    else:
        pseudo = sum_be16(b, l3 + 8, l3 + 40) + proto
    if proto == IPPROTO_TCP:
        field = l4 + TCP_CSUM_OFF
    else:
        ulen = be16(b, l4 + 4)
        if ulen < UDP_HLEN or ulen > l4len:
            return False
        l4len = ulen  # RFC 768: the datagram as its header declares it (the IP payload may be padded)
        field = l4 + UDP_CSUM_OFF
    b[field] = 0
    b[field + 1] = 0
    s = _fold(pseudo + (l4len >> 16) + (l4len & 0xFFFF) + sum_be16(b, l4, l4 + l4len))
    c = (~s) & 0xFFFF
    if c == 0 and proto == IPPROTO_UDP:
        c = 0xFFFF  # RFC 768: zero means "no checksum", so a computed zero is sent as all ones
    b[field] = c >> 8
    b[field + 1] = c & 0xFF
    return True
