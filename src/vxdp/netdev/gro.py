"""Coalescing a batch's TCP segments into GSO super-frames (software GRO), in compiled code.

Two users: the guest driver's tap (`Tap(gro=True)`) and the host's port
(`Port.send_batch`, whose ``PACKET_VNET_HDR`` socket takes the same header); the
tap's case is told here, the port's is the same with sendmmsg for write.

Why: a tap takes one frame per ``write(2)``, and the stack behind it runs its
whole receive path (IP, TCP, the socket) for each. Measured here, the guest
driver spent 72 % of its time in those writes during a TCP transfer to the
guest. A kernel NIC driver would hand its frames to GRO, which merges a flow's
consecutive segments into one large skb; a tap written from user space never
gets that (with ``IFF_NAPI`` every write is flushed on its own). It does take a
GSO frame whole, though, when ``IFF_VNET_HDR`` is on: a ``virtio_net_hdr`` in
front saying ``gso_type``/``gso_size``/``NEEDS_CSUM`` (what QEMU writes for a
guest's TSO frame). So we do GRO's merge ourselves, with the kernel's rules
(``tcp_gro_receive``, ``inet_gro_receive``, ``ipv6_gro_receive``):

- only TCP over IPv4 without options or IPv6 without extension headers,
  segments with payload, flags ACK (PSH allowed, and it ends the run; any of
  SYN, FIN, RST, URG, ECE, CWR: the segment goes alone);
- the same Ethernet header and VLAN tags, the same IP header but for the
  length, id and checksum, the same ports, acknowledgment, data offset,
  window and options;
- each sequence number follows the previous segment's; every segment but the
  last carries exactly the first one's payload size (``gso_size``); the
  merged IP packet stays within 64 KiB.

The merged frame has the first segment's headers, the lengths of the whole,
a fresh IPv4 header checksum, PSH if the last segment had it, and
``CHECKSUM_PARTIAL`` (``NEEDS_CSUM``, ``csum_start`` at the TCP header, the
field holding the pseudo-header sum): the stack treats its payload as verified,
and a GSO engine that re-segments it finishes each checksum.

Only consecutive rows of a batch are merged (a bulk flow's segments arrive
back to back); a segment that cannot join goes alone, with a zero header.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .csum import IPPROTO_TCP, be16, ipv4_header_checksum, parse_l4, put16, sum_be16
from .gso import GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN

VNET_F_NEEDS_CSUM = 1
TCP_ACK = 0x10
TCP_PSH = 0x08
TCP_ALONE = 0x01 | 0x02 | 0x04 | 0x20 | 0x40 | 0x80  # FIN SYN RST URG ECE CWR
IP_MAX = 0xFFFF  # the largest IPv4 total length / IPv6 payload length
MERGED_MAX = VNET_HDR_LEN + 14 + 8 + 40 + IP_MAX  # the largest header + frame GRO makes (two VLAN tags, IPv6)


@njit(cache=True, nogil=True)
def _segment_info(b: np.ndarray, length: int) -> tuple[int, int, int, int, bool]:
    """``(l3, l4, hdr_end, payload, ipv4)`` of a TCP segment GRO may merge; ``l3`` -1 if it may not."""
    l3, l4, l4len, proto, ipv4 = parse_l4(b, length)
    if l3 < 0 or proto != IPPROTO_TCP or (ipv4 and b[l3] != 0x45):
        return -1, 0, 0, 0, False
    thl = (np.int64(b[l4 + 12]) >> 4) * 4
    flags = np.int64(b[l4 + 13])
    if thl < 20 or thl >= l4len or (flags & TCP_ALONE) or not (flags & TCP_ACK):
        return -1, 0, 0, 0, False
    return l3, l4, l4 + thl, l4len - thl, ipv4


@njit(cache=True, nogil=True)
def _same(a: np.ndarray, b: np.ndarray, start: int, end: int) -> bool:
    for i in range(start, end):
        if a[i] != b[i]:
            return False
    return True


@njit(cache=True, nogil=True)
def _joins(f: np.ndarray, c: np.ndarray, l3: int, l4: int, hdr_end: int, ipv4: bool, seq: int) -> bool:
    """Whether segment ``c`` continues the run that ``f`` starts, at sequence number ``seq``."""
    if not _same(f, c, 0, l3):
        return False
    if ipv4:  # tos; DF/MF and offset; ttl and protocol; both addresses
        if f[l3 + 1] != c[l3 + 1] or not _same(f, c, l3 + 6, l3 + 10) or not _same(f, c, l3 + 12, l3 + 20):
            return False
    elif not _same(f, c, l3, l3 + 4) or not _same(f, c, l3 + 6, l3 + 40):  # version, class, flow; next, hop, addrs
        return False
    if ((be16(c, l4 + 4) << 16) | be16(c, l4 + 6)) != seq:
        return False
    if (not _same(f, c, l4, l4 + 4) or not _same(f, c, l4 + 8, l4 + 13) or not _same(f, c, l4 + 14, l4 + 16)
            or not _same(f, c, l4 + 18, hdr_end)):
        return False  # ports; ack and data offset; window; urgent pointer and options (the checksum aside)
    return (np.int64(f[l4 + 13]) & ~TCP_PSH) == (np.int64(c[l4 + 13]) & ~TCP_PSH)


@njit(cache=True, nogil=True)
def find_run(data: np.ndarray, lens: np.ndarray, first: int, count: int) -> tuple[int, int]:
    """The run of segments GRO merges starting at row ``first``: ``(next_row, gso_size)``.

    ``next_row == first + 1`` when the row goes alone.
    """
    f = data[first]
    l3, l4, hdr_end, mss, ipv4 = _segment_info(f, np.int64(lens[first]))
    nxt = first + 1
    if l3 < 0 or (f[l4 + 13] & TCP_PSH):
        return nxt, 0
    seq = (((be16(f, l4 + 4) << 16) | be16(f, l4 + 6)) + mss) & 0xFFFFFFFF
    total = mss
    while nxt < count:
        c = data[nxt]
        cl3, cl4, cend, cpay, cv4 = _segment_info(c, np.int64(lens[nxt]))
        if (cl3 != l3 or cl4 != l4 or cend != hdr_end or cv4 != ipv4 or cpay > mss
                or hdr_end - l3 + total + cpay > IP_MAX + (40 if not ipv4 else 0)
                or not _joins(f, c, l3, l4, hdr_end, ipv4, seq)):
            break
        total += cpay
        seq = (seq + cpay) & 0xFFFFFFFF
        nxt += 1
        if cpay < mss or (c[l4 + 13] & TCP_PSH):
            break  # a short or pushed segment ends the run
    return nxt, mss


@njit(cache=True, nogil=True)
def write_merged(data: np.ndarray, lens: np.ndarray, first: int, nxt: int, mss: int, buf: np.ndarray) -> int:
    """Write rows ``[first, nxt)`` (a run of `find_run`) as ``virtio_net_hdr | super-frame`` into ``buf``;
    return the bytes written. ``buf`` holds at least `MERGED_MAX` bytes."""
    f = data[first]
    l3, l4, hdr_end, _, ipv4 = _segment_info(f, np.int64(lens[first]))
    out = buf[VNET_HDR_LEN:]
    out[:hdr_end] = f[:hdr_end]
    pos = hdr_end
    for r in range(first, nxt):
        pay = _segment_info(data[r], np.int64(lens[r]))[3]
        out[pos:pos + pay] = data[r, hdr_end:hdr_end + pay]
        pos += pay
    last = data[nxt - 1]
    out[l4 + 13] = f[l4 + 13] | (last[l4 + 13] & TCP_PSH)
    tcp_len = pos - l4
    if ipv4:
        put16(out, l3 + 2, pos - l3)
        ipv4_header_checksum(out, l3)
        pseudo = sum_be16(out, l3 + 12, l3 + 20)
    else:
        put16(out, l3 + 4, pos - l3 - 40)
        pseudo = sum_be16(out, l3 + 8, l3 + 40)
    s = pseudo + IPPROTO_TCP + (tcp_len >> 16) + (tcp_len & 0xFFFF)
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    put16(out, l4 + 16, s)  # CHECKSUM_PARTIAL: the pseudo-header sum, not inverted
    buf[0] = VNET_F_NEEDS_CSUM
    buf[1] = GSO_TCPV4 if ipv4 else GSO_TCPV6
    _put16le(buf, 2, hdr_end)  # hdr_len
    _put16le(buf, 4, mss)  # gso_size
    _put16le(buf, 6, l4)  # csum_start
    _put16le(buf, 8, 16)  # csum_offset: TCP's checksum field
    return VNET_HDR_LEN + pos


@njit(cache=True, nogil=True)
def coalesce(data: np.ndarray, lens: np.ndarray, first: int, count: int, buf: np.ndarray) -> tuple[int, int, int]:
    """Merge the run of rows starting at ``first``; write ``virtio_net_hdr | frame`` into ``buf``.

    Returns ``(next_row, nbytes, merged)``: rows ``[first, next_row)`` went into
    ``buf[:nbytes]``; ``merged`` is their number when more than one, else 0 (the
    row as it came, behind a zero header). ``buf`` holds at least `MERGED_MAX` bytes.
    """
    nxt, mss = find_run(data, lens, first, count)
    if nxt == first + 1:
        flen = np.int64(lens[first])
        buf[:VNET_HDR_LEN] = 0
        buf[VNET_HDR_LEN:VNET_HDR_LEN + flen] = data[first, :flen]
        return nxt, VNET_HDR_LEN + flen, 0
    return nxt, write_merged(data, lens, first, nxt, mss, buf), nxt - first


@njit(cache=True, nogil=True, inline="always")
def _put16le(b: np.ndarray, i: int, v: int) -> None:
    b[i] = v & 0xFF
    b[i + 1] = (v >> 8) & 0xFF
