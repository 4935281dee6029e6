"""Cutting a GSO super-frame into wire-size frames, in compiled code (software GSO at the port).

Why: a TCP sender on the host side of the port (a veth peer, with TSO and GSO
on by default) hands the stack one 64 KiB "super-frame" and expects the
device to segment it. AF_PACKET shows it to us whole; a guest that has not
negotiated ``VIRTIO_NET_F_GUEST_TSO4/6``/``GUEST_USO`` (ours offers none)
must get MTU-sized frames. With ``PACKET_VNET_HDR`` the ring puts a
``struct virtio_net_hdr`` before each frame, whose ``gso_type`` and
``gso_size`` say how the sender wanted it cut: we cut it the way the
kernel's ``tcp_gso_segment``/``__udp_gso_segment`` would.

Per segment ``i`` of ``n`` (payload chunks of ``gso_size`` bytes, the last
one shorter), the headers are copied and then:

- IPv4: total length; the identification is the super-frame's plus ``i``
  (the kernel's default, without ``SKB_GSO_TCP_FIXEDID``); the header
  checksum. IPv6: the payload length.
- TCP: the sequence number advances by the bytes before the chunk; FIN and
  PSH stay only on the last segment, CWR only on the first.
- UDP (``GSO_UDP_L4``): each segment is a datagram with its own length.
- The TCP/UDP checksum is computed whole (`complete_l4_checksum`): a GSO
  frame is always CHECKSUM_PARTIAL.

What we refuse (counted, dropped): ``GSO_UDP`` (UFO, IP fragmentation, which
no current kernel produces), a gso type that does not match the headers, a
segment that would not fit a batch slot, headers we do not parse.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .csum import IPPROTO_TCP, IPPROTO_UDP, be16, complete_l4_checksum, ipv4_header_checksum, parse_l4, put16

# struct virtio_net_hdr (include/uapi/linux/virtio_net.h), as PACKET_VNET_HDR puts it before a frame
VNET_HDR_LEN = 10
VNET_GSO_TYPE_OFF = 1
VNET_GSO_SIZE_OFF = 4
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80

SEG_REFUSED = 0  # `segment`: cannot cut this frame (count it and drop it)


@njit(cache=True, nogil=True)
def segment(src: np.ndarray, length: int, gso_type: int, gso_size: int, reserve: int,
            data: np.ndarray, lens: np.ndarray, first: int) -> int:
    """Cut the super-frame ``src[:length]`` into rows ``first, first+1, ...`` of ``data``/``lens``.

    Returns the number of frames written; `SEG_REFUSED` (0) for a frame we do
    not cut; ``-n`` when its ``n`` frames do not fit the rows left (nothing is
    written: the caller keeps the frame for an emptier batch). ``reserve``
    bytes of every row stay free (a VLAN tag the caller puts back).
    """
    kind = gso_type & ~GSO_ECN
    if gso_size <= 0 or (kind != GSO_TCPV4 and kind != GSO_TCPV6 and kind != GSO_UDP_L4):
        return SEG_REFUSED
    l3, l4, l4len, proto, ipv4 = parse_l4(src, length)
    if l3 < 0:
        return SEG_REFUSED
    if kind == GSO_UDP_L4:
        if proto != IPPROTO_UDP:
            return SEG_REFUSED
        hdr_end = l4 + 8
    else:
        if proto != IPPROTO_TCP or ipv4 != (kind == GSO_TCPV4):
            return SEG_REFUSED
        hdr_end = l4 + (np.int64(src[l4 + 12]) >> 4) * 4
        if hdr_end - l4 < 20 or hdr_end > l4 + l4len:
            return SEG_REFUSED
    payload = l4 + l4len - hdr_end
    nseg = max(1, (payload + gso_size - 1) // gso_size)
    slot = data.shape[1]
    if hdr_end + min(gso_size, payload) + reserve > slot:
        return SEG_REFUSED
    if first + nseg > data.shape[0]:
        return -nseg
    ip_id = be16(src, l3 + 4)
    seq = 0
    flags = 0
    if proto == IPPROTO_TCP:
        seq = (be16(src, l4 + 4) << 16) | be16(src, l4 + 6)
        flags = np.int64(src[l4 + 13])
    for i in range(nseg):
        off = i * gso_size
        chunk = min(gso_size, payload - off)
        seglen = hdr_end + chunk
        row = data[first + i]
        row[:hdr_end] = src[:hdr_end]
        row[hdr_end:seglen] = src[hdr_end + off:hdr_end + off + chunk]
        if ipv4:
            put16(row, l3 + 2, seglen - l3)
            put16(row, l3 + 4, (ip_id + i) & 0xFFFF)
            ipv4_header_checksum(row, l3)
        else:
            put16(row, l3 + 4, seglen - l3 - 40)
        if proto == IPPROTO_TCP:
            s = (seq + off) & 0xFFFFFFFF
            put16(row, l4 + 4, s >> 16)
            put16(row, l4 + 6, s & 0xFFFF)
            f = flags
            if i > 0:
                f &= ~TCP_CWR
            if i < nseg - 1:
                f &= ~(TCP_FIN | TCP_PSH)
            row[l4 + 13] = f
        else:
            put16(row, l4 + 4, seglen - l4)
        complete_l4_checksum(row, seglen)
        lens[first + i] = seglen
    return nseg
