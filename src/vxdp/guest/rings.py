"""The guest's side of one vhost-user session: its memory, its vrings, their buffers and eventfds.

Like DPDK's virtio-user, our "guest RAM" is one memfd that we map ourselves and hand to
the backend in SET_MEM_TABLE as a single region at guest-physical address 0. The
``userspace_addr`` we report is our own mapping's address (``GuestMemory.allocate`` sets
it), which is what SET_VRING_ADDR then carries; descriptors carry guest-physical addresses
(offsets into the memfd). Layout, all inside that one region::

    rx ring (vring 0) | tx ring (vring 1) | ctrl ring (vring 2) | rx buffers | tx buffers | ctrl area

Each rx/tx descriptor owns one fixed buffer (``fastring.DriverRing``'s model), so the
compiled kernels post and reap without any per-frame allocation. The ctrl ring is driven
by the Python ``DriverQueue`` half (a command is rare), with its request and reply
buffers in the ctrl area.

A ``GuestRings`` lives exactly as long as one connection: when the backend goes away we
drop it whole (memory, rings, eventfds) and build a fresh one for the next connection, so
no state of a dead session (avail indexes, in-flight descriptors) can leak into the next.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vxdp.vhost_user.frontend import RegionSpec, VringSpec
from vxdp.virtio.fastring import DriverRing
from vxdp.virtio.memory import GuestMemory
from vxdp.virtio.virtqueue import DriverQueue, ring_layout, ring_sizes

RX, TX, CTRL = 0, 1, 2
PAGE = 4096
CTRL_AREA_MAX = 8 << 20  # request + reply buffers of the ctrl queue (offload commands carry programs)
CTRL_QUEUE_SIZE = 64


class GuestSetupError(Exception):
    """The guest's memory cannot hold what was asked (sizes, queue size)."""


def _align(v: int, a: int = PAGE) -> int:
    return (v + a - 1) & ~(a - 1)


def buffer_size(mtu: int, hdr_len: int = 12) -> int:
    """One rx/tx buffer: the net header plus an MTU-sized frame with a VLAN tag, at least 2 KiB."""
    return max(2048, _align(hdr_len + mtu + 18, 1024))


@dataclass
class VringFds:
    kick: int
    call: int


class GuestRings:
    """Memory, rx/tx (and optionally ctrl) vrings with their buffers and eventfds, for one session."""

    def __init__(self, *, mem_bytes: int, queue_size: int, buf_size: int, event_idx: bool,
                 mrg: bool, hdr_len: int = 12, ctrl: bool = False) -> None:
        num = queue_size
        rings_end = 0
        layout: list[int] = []
        for n in (num, num, CTRL_QUEUE_SIZE):
            layout.append(rings_end)
            rings_end = _align(ring_layout(n, rings_end)[3])
        rx_buf = rings_end
        tx_buf = _align(rx_buf + num * buf_size)
        ctrl_area = _align(tx_buf + num * buf_size)
        ctrl_size = min(CTRL_AREA_MAX, mem_bytes - ctrl_area)
        if ctrl_size < 2 * PAGE:
            raise GuestSetupError(f"{mem_bytes >> 20} MiB of guest memory cannot hold two rings of "
                                  f"{num} buffers of {buf_size} bytes (need {(ctrl_area >> 20) + 1} MiB)")
        self.mem = GuestMemory.allocate(mem_bytes, name="vxdp-guest")
        self.fds: dict[int, VringFds] = {}
        try:
            self.queues: dict[int, DriverQueue] = {
                RX: DriverQueue.create(self.mem, num, layout[RX], event_idx=event_idx),
                TX: DriverQueue.create(self.mem, num, layout[TX], event_idx=event_idx),
            }
            if ctrl:
                self.queues[CTRL] = DriverQueue.create(self.mem, CTRL_QUEUE_SIZE, layout[CTRL], event_idx=event_idx)
            self.rx = DriverRing(self.queues[RX], self.mem, rx_buf, buf_size, hdr_len=hdr_len, mrg=mrg)
            self.tx = DriverRing(self.queues[TX], self.mem, tx_buf, buf_size, hdr_len=hdr_len)
            self.ctrl_area, self.ctrl_size = ctrl_area, ctrl_size
            for index in self.queues:
                self.fds[index] = VringFds(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC),
                                           os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            self.rx.refill()  # the device finds a full rx ring from its first look
        except BaseException:
            self.close()
            raise
        self.buf_size = buf_size
        self.hdr_len = hdr_len

    # -- what the frontend tells the backend ---------------------------------------------------
    def region(self) -> RegionSpec:
        r = self.mem.regions[0]
        return RegionSpec(r.guest_phys_addr, r.size, r.userspace_addr, r.mmap_offset, self.mem.fd)

    def vring_specs(self) -> list[VringSpec]:
        out = []
        for index, dq in sorted(self.queues.items()):
            uva = self.mem.gpa_to_uva
            desc, avail, used = ring_sizes(dq.num)
            out.append(VringSpec(index, dq.num, uva(dq.desc_gpa, desc), uva(dq.avail_gpa, avail),
                                 uva(dq.used_gpa, used), self.fds[index].kick, self.fds[index].call))
        return out

    # -- notifications -------------------------------------------------------------------------
    def kick(self, index: int) -> None:
        os.eventfd_write(self.fds[index].kick, 1)

    def drain_call(self, index: int) -> int:
        """Read (reset) a call eventfd; returns the count (0 if it was not signalled)."""
        try:
            return os.eventfd_read(self.fds[index].call)
        except BlockingIOError:
            return 0

    def describe(self) -> list[dict]:
        """Per vring: size, indexes, free descriptors (for ``guest.show``)."""
        names = {RX: "rx", TX: "tx", CTRL: "ctrl"}
        out = []
        for index, dq in sorted(self.queues.items()):
            out.append({"index": index, "name": names[index], "num": dq.num, "avail_idx": dq.avail_idx,
                        "last_used_idx": dq.last_used_idx, "free": dq.nfree, "event_idx": dq.event_idx})
        return out

    def close(self) -> None:
        for f in self.fds.values():
            for fd in (f.kick, f.call):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fds = {}
        self.mem.close()
