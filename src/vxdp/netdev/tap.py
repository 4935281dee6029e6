"""A tap device as a batch port: /dev/net/tun with IFF_TAP | IFF_NO_PI, read and written per batch.

Kernel facts this relies on (``drivers/net/tun.c``):

- The device is created in the network namespace of the *process that opened*
  /dev/net/tun (``tun_chr_open`` records ``current``'s netns), so the fd is
  opened and TUNSETIFF'd on a thread that did ``setns`` into ``netns``.
- A non-persistent tap (we never set TUNSETPERSIST) disappears when its last fd
  closes: `close` is the teardown.
- One ``read(2)`` returns one frame and one ``write(2)`` injects one, so a
  batch is a compiled loop of calls until EAGAIN (fd is O_NONBLOCK) or the
  batch is full/done. With ``vnet_hdr=True`` each frame starts with a
  ``struct virtio_net_hdr`` (10 bytes; the kernel's default header size),
  which this class passes through untouched.
- With ``gro=True`` (also ``IFF_VNET_HDR``) the class keeps the headers to
  itself: `read_batch` drops them (no offloads are set on the tap, so they say
  nothing), and `write_batch` merges each run of a TCP flow's consecutive
  segments into one GSO super-frame with its header (`vxdp.netdev.gro`): the
  stack behind the tap then runs its receive path once per super-frame, not
  per segment. ``tun_get_user`` takes such a frame whole
  (``virtio_net_hdr_to_skb``), as it does QEMU's.
- Without TUNSETOFFLOAD the tap advertises no offloads, so the stack hands it
  whole frames of at most MTU + 14 bytes with checksums filled in; a batch
  slot must hold that (plus the vnet header if any).
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass

import numpy as np
from pyroute2 import IPRoute

from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.bpf.kernel.syscall import FdOwner
from vxdp.frames import FrameBatch

from .compiled import fd_read_batch, fd_readv_batch, fd_write_batch, fd_write_gro_batch
from .errors import NetdevError, where
from .gro import MERGED_MAX
from .gso import VNET_HDR_LEN

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags, padding to 40 bytes


@dataclass(frozen=True)
class TapStats:
    """Running totals of what the batch calls did."""

    rx_frames: int
    tx_frames: int
    tx_rejected: int  # frames the kernel refused (EINVAL...), skipped by write_batch
    gro_frames: int = 0  # super-frames write_batch made (gro=True)
    gro_segments: int = 0  # the frames merged into them


def _open_tap(name: str, flags: int) -> tuple[int, str]:
    """Open /dev/net/tun (in the calling thread's netns) and attach it to a new tap ``name``."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        res = fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(name.encode(), flags))
        return fd, IFREQ.unpack(res)[0].rstrip(b"\0").decode()
    except BaseException:
        os.close(fd)
        raise


def _parse_cidr(addr: str, here: str) -> tuple[str, int]:
    ip, sep, plen = addr.partition("/")
    if not sep or not plen.isdigit() or not 0 <= int(plen) <= 32 or ip.count(".") != 3:
        raise NetdevError(f"tap {here}: address {addr!r} is not an IPv4 CIDR like 198.18.0.1/24")
    return ip, int(plen)


class Tap(FdOwner):
    """A tap device in ``netns`` (created by us, gone when we close), read and written in batches.

    `FdOwner` gives ``close`` (the non-persistent device vanishes with the fd),
    ``closed``, the context manager and the ``__del__`` safety net.
    """

    def __init__(self, name: str, *, netns: str | None = None, mtu: int = 1500, addr: str | None = None,
                 up: bool = True, vnet_hdr: bool = False, gro: bool = False) -> None:
        self.netns = netns
        here = where(name, netns)
        if gro and vnet_hdr:
            raise NetdevError(f"tap {here}: gro and vnet_hdr exclude each other (gro writes the headers itself)")
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
            raise NetdevError(f"tap {here}: not a valid interface name (1..15 bytes, no '/' or space)")
        if not 68 <= mtu <= 65521:
            raise NetdevError(f"tap {here}: MTU {mtu} is outside 68..65521")
        cidr = _parse_cidr(addr, here) if addr is not None else None
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr or gro else 0)
        try:
            self._fd, self.name = (_open_tap(name, flags) if netns is None
                                   else run_in_netns(netns, _open_tap, name, flags))
        except OSError as e:
            raise NetdevError(e.errno, f"tap {here}: open /dev/net/tun and TUNSETIFF: {e.strerror or e}") from None
        self.vnet_hdr = vnet_hdr
        self.gro = gro
        try:
            with IPRoute(netns=netns, flags=0) if netns else IPRoute() as ip:
                self.ifindex = ip.link_lookup(ifname=self.name)[0]
                ip.link("set", index=self.ifindex, mtu=mtu)
                if cidr is not None:
                    ip.addr("add", index=self.ifindex, address=cidr[0], prefixlen=cidr[1])
                if up:
                    ip.link("set", index=self.ifindex, state="up")
                self.mac = ip.get_links(self.ifindex)[0].get_attr("IFLA_ADDRESS")
        except Exception as e:  # noqa: BLE001 -- pyroute2 raises many kinds; close the fd, one clear error
            self.close()
            raise NetdevError(f"tap {here}: configuring MTU/address/state: {e}") from None
        self._out = np.zeros(4, np.int64)  # [2], [3]: GRO's running super-frame and row counts
        if gro:
            self._hdr = np.zeros(VNET_HDR_LEN, np.uint8)
            self._iov = np.zeros(4, np.uint64)
            self._gro_buf = np.zeros(MERGED_MAX, np.uint8)
        self._rx = 0
        self._tx = 0
        self._tx_rejected = 0
        self.last_errno = 0

    def fileno(self) -> int:
        """The tun fd: readable when the stack has sent a frame to the tap."""
        self._check_open()
        return self._fd

    def read_batch(self, batch: FrameBatch) -> int:
        """Read frames until the batch is full or the tap has none; set and return ``batch.count``."""
        self._check_open()
        if self.gro:
            n = fd_readv_batch(self._fd, batch.data, batch.lens, self._hdr, self._iov, self._out)
        else:
            n = fd_read_batch(self._fd, batch.data, batch.lens, self._out)
        self.last_errno = int(self._out[0])
        batch.count = n
        self._rx += n
        return n

    def write_batch(self, batch: FrameBatch) -> int:
        """Write frames ``0..batch.count-1`` into the stack; return how many left the front of the batch.

        Frames the kernel refuses are skipped and counted (``tx_rejected``); a
        return below ``batch.count`` means the tap answered EAGAIN.
        """
        self._check_open()
        if self.gro:
            n = fd_write_gro_batch(self._fd, batch.data, batch.lens, batch.count, self._gro_buf, self._out)
        else:
            n = fd_write_batch(self._fd, batch.data, batch.lens, batch.count, self._out)
        self._tx_rejected += int(self._out[0])
        self.last_errno = int(self._out[1])
        self._tx += n - int(self._out[0])
        return n

    def stats(self) -> TapStats:
        return TapStats(rx_frames=self._rx, tx_frames=self._tx, tx_rejected=self._tx_rejected,
                        gro_frames=int(self._out[2]), gro_segments=int(self._out[3]))

    def _check_open(self) -> None:
        if self._fd < 0:
            raise NetdevError(f"tap {where(self.name, self.netns)} is closed")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"Tap({where(self.name, self.netns)}, {state})"
