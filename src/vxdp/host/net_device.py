"""The virtio-net device the backend daemon serves: features, config space, memory, vrings.

`NetDevice` is the `vxdp.vhost_user.backend.DeviceModel` the session drives. It holds
the resources one frontend's session handed over (guest memory, per-vring eventfds) and
turns a ring into a running one when the session starts it, from the session's record of
the ring (size, addresses, base, enabled: kept there once, read here); it does no I/O on
the vhost-user socket and moves no frames itself (that is `vxdp.host.datapath`, told
about rings starting and stopping through a `RingListener`).

Why the pieces are where they are:

- Vring indexes: rx = 0, tx = 1, ctrl = 2 (virtio-net with one queue pair). QEMU keeps
  the ctrl vq to itself, so a QEMU guest only ever starts 0 and 1; our own guest driver
  hands ctrl over too. rx/tx run on the compiled `DeviceRing`; ctrl is rare and small
  and runs on the Python `QueueState` reference walker.
- Starting a ring: the session calls `start_vring` with its record of the ring once size,
  addresses, kick and memory are known. SET_VRING_ADDR carries the frontend's virtual
  addresses: translated here to guest-physical ones. The used index is read back from the
  used ring (as vhost-net does in ``vhost_vq_init_access``), the avail index to resume
  from is the vring base.
- A hostile ring (a descriptor outside memory, a loop, an avail index too far ahead, ...):
  the kernel returns an error code, `ring_failed` stops that ring, signals its err
  eventfd if the frontend gave one (the vhost-user way to say NEEDS_RESET), logs ONE line
  naming device, queue and error, and keeps the process and the other rings running. A
  new session starts clean (`reset`).
- Every fd the session hands over is ours from then on: replaced or reset fds are closed.
- Fds from the frontend are hostile too. Kick, call and err fds must be eventfds (the anon
  inode ``[eventfd]``; a regular file would make epoll refuse the kick with EPERM) and are
  made non-blocking (O_NONBLOCK on the received fd: that changes the file description the
  frontend shares, harmless for an eventfd it only writes or polls; QEMU's event notifiers
  and KVM's irqfds/ioeventfds are EFD_NONBLOCK or kernel-side already), so a call or err eventfd
  the peer filled to 2**64-2 makes our write fail with EAGAIN, counted in ``eventfd_full``,
  instead of blocking the loop forever. Memory fds are checked by `GuestMemory.from_regions`
  (size, seals); a peer that shrinks an unsealable one under us causes a SIGBUS that
  `vxdp.virtio.sigbus` absorbs: `check_memory` (the datapath calls it after every wake-up)
  then stops every ring and sets ``fault``, and the daemon ends the session.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field
from typing import Protocol

from vxdp.vhost_user import messages as m
from vxdp.vhost_user.backend import DeviceError, DeviceModel, Vring
from vxdp.vhost_user.connection import close_fds
from vxdp.virtio import sigbus
from vxdp.virtio.fastring import DeviceRing
from vxdp.virtio.features import Feature, has
from vxdp.virtio.features import names as feature_names
from vxdp.virtio.memory import GuestMemory, GuestMemoryError
from vxdp.virtio.net import LinkStatus, NetConfig, NetError, header_len
from vxdp.virtio.virtqueue import QueueState, VirtqueueError, ring_sizes

log = logging.getLogger("vxdp.host")

RX, TX, CTRL = 0, 1, 2
NUM_VRINGS = 3
QUEUE_PAIRS = 1
RING_NAMES = {RX: "rx", TX: "tx", CTRL: "ctrl"}

BASE_FEATURES = Feature.mask(
    Feature.VERSION_1, Feature.NET_MAC, Feature.NET_MTU, Feature.NET_STATUS, Feature.NET_CTRL_VQ,
    Feature.NET_CTRL_RX, Feature.NET_MRG_RXBUF, Feature.RING_EVENT_IDX, Feature.RING_INDIRECT_DESC,
    Feature.PROTOCOL_FEATURES,
)


class RingListener(Protocol):
    """Who moves the frames (the datapath): told when a ring starts, stops or breaks."""

    def ring_started(self, index: int) -> None: ...

    def ring_stopped(self, index: int) -> None: ...


@dataclass
class DeviceVring:
    """The device's side of one vring: the eventfds it owns, the running ring, why it broke.

    The ring's protocol state (size, addresses, base, enabled) is the session's
    `vxdp.vhost_user.backend.Vring`, handed over by `NetDevice.start_vring` and read from
    there (``ring``) while the ring runs, never copied."""

    index: int
    ring: Vring | None = None  # the session's record of the ring last started (None: none was)
    kick: int | None = None
    call: int | None = None
    err: int | None = None
    state: QueueState | None = None  # the running ring (None: stopped)
    fast: DeviceRing | None = None  # rx/tx only
    error: str = ""  # why it broke (NEEDS_RESET), "" if it did not

    @property
    def name(self) -> str:
        return RING_NAMES.get(self.index, f"vring{self.index}")

    @property
    def running(self) -> bool:
        return self.state is not None and not self.state.broken

    @property
    def enabled(self) -> bool:
        """SET_VRING_ENABLE's latest word on the running ring (the session keeps it)."""
        return self.ring is not None and self.ring.enabled

    def close_fds(self) -> None:
        close_fds(fd for fd in (self.kick, self.call, self.err) if fd is not None)
        self.kick = self.call = self.err = None


@dataclass
class NetDevice(DeviceModel):
    """One virtio-net device (see the module docstring). ``extra_features``: bits another
    service adds to the offer (offload: `vxdp.virtio.features.Experimental.NET_BPF_OFFLOAD`)."""

    name: str = "vxdp0"
    mac: bytes = b"\x52\x54\x00\x12\x34\x56"
    mtu: int = 1500
    extra_features: int = 0
    listener: RingListener | None = None
    features: int = 0  # acked by the frontend (SET_FEATURES)
    mem: GuestMemory | None = None
    vrings: list[DeviceVring] = field(default_factory=list)
    sessions: int = 0  # resets seen (each frontend session ends with one)
    eventfd_full: int = 0  # call/err signals not delivered: the frontend's eventfd was full
    fault: str = ""  # why this session's guest memory is unusable (SIGBUS absorbed), "" if it is not

    def __post_init__(self) -> None:
        sigbus.install()  # a no-op after the daemon's warm-up; never at a SET_MEM_TABLE under the event loop
        self.config = NetConfig(mac=self.mac, status=LinkStatus.LINK_UP, max_virtqueue_pairs=QUEUE_PAIRS,
                                mtu=self.mtu)
        self.vrings = [DeviceVring(i) for i in range(NUM_VRINGS)]

    # ------------------------------------------------------------------ what we offer
    @property
    def offered(self) -> int:
        return BASE_FEATURES | self.extra_features

    @property
    def hdr_len(self) -> int:
        return header_len(self.features)

    def negotiated(self, feature: Feature) -> bool:
        return has(self.features, feature)

    # ------------------------------------------------------------------ DeviceModel
    def set_features(self, features: int) -> None:
        if features & ~self.offered:
            raise DeviceError(f"features {feature_names(features & ~self.offered)} were not offered")
        if any(vr.state is not None for vr in self.vrings):
            raise DeviceError("features cannot change under running rings", errno.EBUSY)
        self.features = features

    def set_mem_table(self, regions: list[m.MemRegion], fds: list[int]) -> None:
        if any(vr.state is not None for vr in self.vrings):
            close_fds(fds)
            raise DeviceError("memory table replaced under running rings", errno.EBUSY)
        try:
            specs = [(fd, r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset)
                     for r, fd in zip(regions, fds, strict=True)]
            mem = GuestMemory.from_regions(specs)
        except GuestMemoryError as e:
            close_fds(fds)
            raise DeviceError(f"memory table: {e}", errno.EFAULT) from None
        except BaseException:
            close_fds(fds)  # whatever went wrong, no fd of a refused table stays open
            raise
        self._drop_memory()
        self.mem = mem
        if mem.unsealed:
            log.info("%s: %d memory region(s) cannot be sealed against shrinking (a file or "
                     "memfd,seal=off): guarded against SIGBUS instead", self.name, mem.unsealed)

    def _swap_fd(self, index: int, kind: str, fd: int | None) -> None:
        vr = self.vrings[index]
        old = getattr(vr, kind)
        setattr(vr, kind, fd)
        if old is not None and old != fd:
            close_fds([old])

    def _eventfd(self, index: int, kind: str, fd: int | None) -> None:
        """Refuse (and close) an fd that is not an eventfd; make an eventfd non-blocking."""
        if fd is None:
            return
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target == "anon_inode:[eventfd]":
                os.set_blocking(fd, False)
                return
        except OSError as e:
            target = f"({e.strerror})"
        close_fds([fd])
        log.warning("%s: vring %d: refused a %s fd that is not an eventfd: %s", self.name, index, kind, target)
        raise DeviceError(f"vring {index} {kind} fd is not an eventfd ({target})", errno.EINVAL)

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        self._eventfd(index, "kick", fd)
        running = self.vrings[index].state is not None
        if running and self.listener is not None:
            self.listener.ring_stopped(index)  # unregister the old fd before it is closed
        self._swap_fd(index, "kick", fd)
        if running and self.listener is not None:
            self.listener.ring_started(index)

    def set_vring_call(self, index: int, fd: int | None) -> None:
        self._eventfd(index, "call", fd)
        self._swap_fd(index, "call", fd)

    def set_vring_err(self, index: int, fd: int | None) -> None:
        self._eventfd(index, "err", fd)
        self._swap_fd(index, "err", fd)

    def start_vring(self, index: int, vring: Vring) -> None:
        vr = self.vrings[index]
        if self.mem is None or vring.num is None or vring.addr is None:
            raise DeviceError(f"vring {index} started without memory, size or addresses")
        a = vring.addr
        try:
            desc, avail, used = (self.mem.uva_to_gpa(uva, size) for uva, size in
                                 zip((a.descriptor, a.available, a.used), ring_sizes(vring.num), strict=True))
            state = QueueState(vring.num, desc, avail, used, last_avail_idx=vring.base,
                               event_idx=self.negotiated(Feature.RING_EVENT_IDX),
                               indirect=self.negotiated(Feature.RING_INDIRECT_DESC))
            state.validate(self.mem)
            state.used_idx = self.mem.read_u16(used + 2)
            fast = None
            if index in (RX, TX):
                fast = DeviceRing(state, self.mem, hdr_len=self.hdr_len,
                                  mrg=index == RX and self.negotiated(Feature.NET_MRG_RXBUF))
        except (GuestMemoryError, VirtqueueError) as e:
            raise DeviceError(f"vring {index} ({vr.name}): {e}", errno.EFAULT) from None
        vr.ring, vr.state, vr.fast, vr.error = vring, state, fast, ""
        if self.listener is not None:
            try:
                self.listener.ring_started(index)
            except OSError as e:  # epoll refused the kick fd: the ring is not started, the frontend told
                vr.ring = vr.state = vr.fast = None
                raise DeviceError(f"vring {index} ({vr.name}): cannot watch its kick fd: {e.strerror}",
                                  errno.EINVAL) from None
        log.info("%s: %s ring started (size %d, base %d)", self.name, vr.name, vring.num, vring.base)

    def stop_vring(self, index: int) -> int:
        vr = self.vrings[index]
        if vr.state is None:
            return vr.ring.base if vr.ring is not None else 0
        if self.listener is not None:
            self.listener.ring_stopped(index)
        base = vr.state.last_avail_idx
        vr.state = vr.fast = None
        return base

    def reset(self) -> None:
        for vr in self.vrings:
            if vr.state is not None:
                self.stop_vring(vr.index)
            vr.close_fds()
        self.vrings = [DeviceVring(i) for i in range(NUM_VRINGS)]
        self._drop_memory()
        self.features = 0
        self.fault = ""
        self.sessions += 1

    def get_config(self, offset: int, size: int) -> bytes:
        try:
            return self.config.read(offset, size)
        except NetError as e:
            raise DeviceError(str(e), errno.EINVAL) from None

    # ------------------------------------------------------------------ used by the datapath
    def ring_failed(self, index: int, error: str) -> None:
        """NEEDS_RESET for one ring: stop it, tell the frontend (err eventfd), log one line."""
        vr = self.vrings[index]
        if vr.error:
            return
        vr.error = error or "ring error"
        log.error("%s: queue %d (%s) needs reset: %s", self.name, index, vr.name, vr.error)
        if self.listener is not None:
            self.listener.ring_stopped(index)
        if vr.state is not None:
            vr.state.broken = True
        if vr.err is not None:
            self._write_eventfd(vr.err)

    def signal(self, index: int) -> None:
        """Interrupt the driver about ring ``index`` (its call eventfd)."""
        fd = self.vrings[index].call
        if fd is not None:
            self._write_eventfd(fd)

    def _write_eventfd(self, fd: int) -> None:
        try:
            os.eventfd_write(fd, 1)
        except BlockingIOError:
            self.eventfd_full += 1  # the frontend let it fill up: its loss, never our wait
        except OSError:
            pass

    def check_memory(self) -> str:
        """After a SIGBUS was absorbed somewhere: if it was in our guest memory, stop every ring and
        set ``fault`` (the daemon ends the session). Returns ``fault``."""
        if self.fault or self.mem is None:
            return self.fault
        n, addr = self.mem.faults()
        if n:
            self.fault = (f"guest memory fault (SIGBUS) at {addr:#x}: the frontend shrank a memory fd "
                          f"under our mapping")
            log.error("%s: %s; stopping every ring", self.name, self.fault)
            for vr in self.vrings:
                if vr.state is not None:
                    self.ring_failed(vr.index, self.fault)
        return self.fault

    def _drop_memory(self) -> None:
        if self.mem is not None:
            self.mem.close()
            self.mem = None

    def describe(self, rings: list[Vring] | None = None) -> dict:
        """For ``device.show``: ``rings`` is the session's protocol state of each vring (size,
        enabled), None when no frontend is connected."""
        rings = rings or [Vring() for _ in self.vrings]
        return {
            "mac": ":".join(f"{b:02x}" for b in self.mac),
            "mtu": self.mtu,
            "features_offered": self.offered,  # integers in JSON, as bpftool and `vxdp guest show` give them
            "features": self.features,
            "features_negotiated": feature_names(self.features),
            "vrings": [{"index": vr.index, "name": vr.name, "size": ring.num, "enabled": ring.enabled,
                        "running": vr.running, "error": vr.error or None,
                        "last_avail": vr.state.last_avail_idx if vr.state else None,
                        "used": vr.state.used_idx if vr.state else None}
                       for vr, ring in zip(self.vrings, rings, strict=True)],
            "memory_regions": len(self.mem.regions) if self.mem else 0,
            "eventfd_full": self.eventfd_full,
            "fault": self.fault or None,
        }
