"""The XDP buffer: one page laid out as BPF_PROG_TEST_RUN lays it out, and the adjust helpers.

``bpf_prog_test_run_xdp`` puts the packet in a 4096-byte frame (``frame_sz`` =
PAGE_SIZE): ``XDP_PACKET_HEADROOM`` (256) bytes of headroom, the packet, then
room up to the ``skb_shared_info`` tailroom at the end of the page. At most
``PAGE - HEADROOM - TAILROOM`` bytes are linear and a packet shorter than an
Ethernet header is refused. ``data_meta`` starts equal to ``data``, or ``meta_len``
bytes below it when the context gives metadata (the first bytes of the packet given,
taken from the headroom), and the test run returns the bytes from ``data_meta`` to
``data_end``.

The limits of ``bpf_xdp_adjust_head/tail/meta`` below are the kernel's
(net/core/filter.c), measured against this host's kernel in the tests:
the front can move down to ``data_hard_start + sizeof(struct xdp_frame)``
(plus the metadata), the packet keeps at least ``ETH_HLEN`` bytes, the end can
grow up to ``frame_sz - tailroom``, and metadata is a multiple of 4 bytes of at
most 255 (the width of ``skb_shared_info.meta_len``), which the 216 bytes of
usable headroom never reach. Measured here: adjust_head down to -216 on a fresh
buffer, adjust_tail up to +3456 on a 64-byte packet (3520 linear bytes).
"""

from __future__ import annotations

import errno

from .memory import CTX_RID, PKT_RID, Memory, ptr

PAGE_SIZE = 4096
XDP_PACKET_HEADROOM = 256
SKB_SHARED_INFO_TAILROOM = 320  # SKB_DATA_ALIGN(sizeof(struct skb_shared_info)) on x86_64
XDP_FRAME_SIZE = 40  # sizeof(struct xdp_frame): the front of the headroom adjust_head may not touch
ETH_HLEN = 14
MAX_LINEAR = PAGE_SIZE - XDP_PACKET_HEADROOM - SKB_SHARED_INFO_TAILROOM
META_MAX = 255  # type_max(skb_shared_info.meta_len)

CTX_PTR = ptr(CTX_RID, 0)


class PacketSizeError(ValueError):
    """A packet the kernel's test run would refuse (shorter than ETH_HLEN, or not linear)."""


class XdpContextError(ValueError):
    """A ``struct xdp_md`` the kernel's test run refuses with EINVAL (`vxdp.engine.base.XdpMd`)."""

    errno = errno.EINVAL


LOOPBACK_IFINDEX = 1  # what ingress_ifindex reads when the context names no device
# The metadata a test run's ctx_in may give: what the headroom holds beside a struct xdp_frame.
# Measured against this host's kernel (6.18): 216 accepted, 220 refused (EINVAL).
META_CTX_MAX = XDP_PACKET_HEADROOM - XDP_FRAME_SIZE


def check_context(size: int, ingress_ifindex: int, rx_queue_index: int, meta_len: int, egress_ifindex: int) -> None:
    """The kernel's checks of ctx_in that do not depend on its devices (EINVAL): whether
    ``ingress_ifindex`` names a device with that many queues only the kernel can say."""
    if egress_ifindex:
        raise XdpContextError(f"egress_ifindex {egress_ifindex}: a test run has no egress device")
    if rx_queue_index and not ingress_ifindex:
        raise XdpContextError(f"rx_queue_index {rx_queue_index} without an ingress_ifindex")
    if meta_len % 4 or not 0 <= meta_len <= META_CTX_MAX:
        raise XdpContextError(f"metadata of {meta_len} bytes: a multiple of 4 of at most {META_CTX_MAX}")
    if meta_len > size:
        raise XdpContextError(f"metadata of {meta_len} bytes in a packet of {size}")


class XdpBuff:
    """``struct xdp_buff`` over one page, kept in step with the memory's packet region and ctx."""

    def __init__(self, mem: Memory, packet: bytes, ingress_ifindex: int = 1, rx_queue_index: int = 0,
                 meta_len: int = 0, egress_ifindex: int = 0):
        check_context(len(packet), ingress_ifindex, rx_queue_index, meta_len, egress_ifindex)
        if len(packet) - meta_len < ETH_HLEN:  # the metadata does not count (kernel: EINVAL)
            raise PacketSizeError(f"packet of {len(packet) - meta_len} bytes after {meta_len} of metadata is "
                                  f"shorter than an Ethernet header ({ETH_HLEN})")
        if len(packet) > MAX_LINEAR + meta_len:  # the metadata comes out of the headroom
            raise PacketSizeError(f"packet of {len(packet)} bytes exceeds the {MAX_LINEAR} linear bytes of a frame")
        self.mem = mem
        self.frame = bytearray(PAGE_SIZE)
        self.data_meta = XDP_PACKET_HEADROOM - meta_len
        self.data = XDP_PACKET_HEADROOM
        self.data_end = self.data_meta + len(packet)
        self.frame[self.data_meta:self.data_end] = packet
        region = mem.regions[PKT_RID]
        region.buf = self.frame
        fields = mem.ctx_fields
        fields[3] = (ingress_ifindex or LOOPBACK_IFINDEX) & 0xFFFFFFFF
        fields[4], fields[5] = rx_queue_index & 0xFFFFFFFF, 0
        self._sync()

    def _sync(self) -> None:
        """Publish the geometry: the packet region's window and the ctx pointer fields."""
        region = self.mem.regions[PKT_RID]
        region.lo, region.hi = self.data_meta, self.data_end
        fields = self.mem.ctx_fields
        fields[0], fields[1], fields[2] = ptr(PKT_RID, self.data), ptr(PKT_RID, self.data_end), ptr(
            PKT_RID, self.data_meta)

    def output(self) -> bytes:
        """What the test run hands back: from data_meta to data_end."""
        return bytes(self.frame[self.data_meta:self.data_end])

    @property
    def hard_end(self) -> int:
        return PAGE_SIZE - SKB_SHARED_INFO_TAILROOM

    def adjust_head(self, delta: int) -> int:
        metalen = self.data - self.data_meta
        data = self.data + delta
        if data < XDP_FRAME_SIZE + metalen or data > self.data_end - ETH_HLEN:
            return -errno.EINVAL
        if metalen:
            self.frame[self.data_meta + delta:data] = self.frame[self.data_meta:self.data]
        self.data_meta += delta
        self.data = data
        self._sync()
        return 0

    def adjust_tail(self, delta: int) -> int:
        end = self.data_end + delta
        if end > self.hard_end or end < self.data + ETH_HLEN:
            return -errno.EINVAL
        if delta > 0:
            self.frame[self.data_end:end] = bytes(delta)
        self.data_end = end
        self._sync()
        return 0

    def adjust_meta(self, delta: int) -> int:
        meta = self.data_meta + delta
        if meta < XDP_FRAME_SIZE or meta > self.data:
            return -errno.EINVAL
        metalen = self.data - meta
        if metalen % 4 or metalen > META_MAX:
            return -errno.EACCES
        self.data_meta = meta
        self._sync()
        return 0

    def load_bytes(self, off: int, length: int) -> bytes | None:
        """``bpf_xdp_load_bytes`` on a linear buffer: ``None`` when out of range."""
        if off < 0 or length < 0 or self.data + off + length > self.data_end:
            return None
        return bytes(self.frame[self.data + off:self.data + off + length])

    def store_bytes(self, off: int, data: bytes) -> bool:
        if off < 0 or self.data + off + len(data) > self.data_end:
            return False
        self.frame[self.data + off:self.data + off + len(data)] = data
        return True
