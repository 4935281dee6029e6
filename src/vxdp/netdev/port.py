"""A host netdev as a batch port: AF_PACKET with a TPACKET_V3 receive ring, sendmmsg for transmit.

Kernel facts this relies on (Linux ``net/packet/af_packet.c``):

- A packet socket keeps the network namespace it was *created* in; the
  interface name is resolved there. So the socket is created on a thread that
  did ``setns`` into ``netns`` (`vxdp.bpf.kernel.netns.run_in_netns`) and then used
  from any thread.
- The socket is created with protocol 0 (it receives nothing), the ring is set
  up, and only then bound to the device with ETH_P_ALL, so no frame ever lands
  in the ordinary receive queue instead of the ring.
- ``PACKET_IGNORE_OUTGOING`` keeps our own transmissions (PACKET_OUTGOING) out
  of the ring; ``PACKET_QDISC_BYPASS`` hands frames straight to the driver.
  With the bypass, a full device (a veth whose peer's ring is full) answers
  ENOBUFS and the frame is gone, so resending it duplicates nothing.
- TPACKET_V3 fills *blocks* of variable-length frames and hands over a block
  when it is full or after ``retire_ms`` (so a lone frame is seen within that
  time); ``poll`` reports the socket readable when a block is ours.
- ``PACKET_STATISTICS`` reads *and resets* the kernel's counters, and its
  ``tp_packets`` includes the drops; `stats` keeps running totals.
- The ring sees frames as the stack has them: a local TCP sender's frame
  through a device with TSO/GSO (a veth, by default) or a GRO-merged one is a
  super-frame of up to 64 KiB. ``PACKET_VNET_HDR`` puts the skb's
  ``virtio_net_hdr`` before every frame in the ring, so `recv_batch` knows
  its ``gso_type``/``gso_size`` and cuts it as the kernel's software GSO
  would (`vxdp.netdev.gso`). The option applies to sending too: each
  sendmmsg message starts with a header. With ``gro=True`` (the default)
  `send_batch` merges each run of a TCP flow's consecutive segments into one
  GSO super-frame (`vxdp.netdev.gro`) sent behind its header, so the stack
  receiving from the port (a veth peer) runs once per run, not per segment
  (a device without TSO gets it segmented again by the kernel on the way out,
  ``validate_xmit_skb``); any other frame goes from its row behind a zeroed
  header (no GSO, checksum done).
  Any other frame longer than a batch slot is skipped and counted
  (``oversize``) rather than truncated.
- A frame a local socket sent through a device with tx checksum offload (a
  veth by default) reaches the ring CHECKSUM_PARTIAL, flagged
  ``TP_STATUS_CSUMNOTREADY``: its TCP/UDP checksum field holds only the
  pseudo-header sum. `recv_batch` finishes such checksums in the copy
  (`vxdp.netdev.csum`), so whoever takes the batch (a guest without
  VIRTIO_NET_F_GUEST_CSUM) gets valid frames; the ring itself is untouched.

Measured here (veth, 64-byte frames, see `vxdp.bench.port`): sendmmsg beats
PACKET_TX_RING, so transmit uses sendmmsg.
"""

from __future__ import annotations

import math
import mmap
import socket
import struct
from dataclasses import dataclass

import numpy as np

from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.bpf.kernel.syscall import FdOwner
from vxdp.frames import FrameBatch

from .compiled import (
    IOVEC_WORDS,
    MMSG_WORDS,
    MSG_IOVECS,
    RX_STATE_LEN,
    ST_CSUM_DONE,
    ST_CSUM_LEFT,
    ST_GSO_FRAMES,
    ST_GSO_REFUSED,
    ST_GSO_SEGMENTS,
    ST_OVERSIZE,
    rx_ring_walk,
    tx_sendmmsg,
    tx_sendmmsg_gro,
)
from .errors import NetdevError, where
from .gso import VNET_HDR_LEN

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_QDISC_BYPASS = 20
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
TPACKET_REQ3 = struct.Struct("=7I")  # block_size, block_nr, frame_size, frame_nr, retire_blk_tov, sizeof_priv, feature_req_word
TPACKET_STATS_V3 = struct.Struct("=3I")  # tp_packets (incl. drops), tp_drops, tp_freeze_q_cnt
RING_FRAME_SIZE = 2048  # the kernel's accounting unit for a V3 ring; frames are packed tighter in blocks
PAGE = mmap.PAGESIZE


@dataclass(frozen=True)
class PortStats:
    """Running totals since the port opened: what the ring got, what the kernel dropped, what we did."""

    packets: int  # frames the kernel put in the ring
    drops: int  # frames the kernel dropped because the ring was full
    freeze_q: int  # times the ring was frozen (all blocks in user space)
    oversize: int  # frames longer than a batch slot, skipped by recv_batch
    tx_rejected: int  # frames the kernel refused to send (bad length...), skipped by send_batch
    tx_retries: int  # ENOBUFS/EAGAIN retries spent by send_batch
    csum_completed: int = 0  # CHECKSUM_PARTIAL TCP/UDP frames whose checksum recv_batch finished
    csum_left: int = 0  # CHECKSUM_PARTIAL frames recv_batch could not finish (not TCP/UDP over IP...)
    gso_frames: int = 0  # GSO super-frames recv_batch cut into wire-size frames
    gso_segments: int = 0  # the frames those made
    gso_refused: int = 0  # GSO super-frames dropped (UFO, truncated, unparsed, a segment larger than a slot)
    tx_gro_frames: int = 0  # super-frames send_batch made of a TCP flow's consecutive segments (gro=True)
    tx_gro_segments: int = 0  # the frames merged into them


def _open_socket(ifname: str, req: bytes, ring_bytes: int) -> tuple[socket.socket, mmap.mmap, int]:
    """Create the socket (in the calling thread's netns), its RX ring, bind it to ``ifname``; add its ifindex."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)  # before the ring: it sizes the frame headroom
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        ring = mmap.mmap(sock.fileno(), ring_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            sock.bind((ifname, ETH_P_ALL))
        except BaseException:
            ring.close()
            raise
        sock.setblocking(False)
        return sock, ring, socket.if_nametoindex(ifname)
    except BaseException:
        sock.close()
        raise


class Port(FdOwner):
    """A netdev read and written in batches (`FrameBatch`); `fileno` for poll/epoll readability.

    `FdOwner` gives ``closed``, the context manager and the ``__del__`` safety
    net; `close` is ours, since the ring must be unmapped before the socket goes.

    ``ring_frames`` sizes the receive ring (in 2 KiB units; small frames pack
    many more per block), ``block_size`` is the TPACKET_V3 block (a power-of-two
    multiple of the page size), ``retire_ms`` the longest a partly filled block
    waits before the kernel hands it over, ``tx_retries`` how many times
    `send_batch` retries a full device before it gives the rest of the batch back,
    ``gro`` whether it merges TCP segments into GSO super-frames (module docstring).
    """

    def __init__(self, ifname: str, *, netns: str | None = None, ring_frames: int = 4096,
                 block_size: int = 1 << 17, retire_ms: int = 2, tx_retries: int = 64,
                 tx_capacity: int = 1024, gro: bool = True) -> None:
        self.ifname, self.netns = ifname, netns
        here = where(ifname, netns)
        if block_size < PAGE or block_size & (block_size - 1):
            raise NetdevError(f"port {here}: block_size {block_size} is not a power of two >= {PAGE}")
        if ring_frames <= 0 or retire_ms <= 0 or tx_retries < 0 or tx_capacity <= 0:
            raise NetdevError(f"port {here}: ring_frames, retire_ms, tx_capacity must be positive, "
                              f"tx_retries >= 0")
        self.block_size = block_size
        self.nblocks = max(2, math.ceil(ring_frames * RING_FRAME_SIZE / block_size))
        frames_per_block = block_size // RING_FRAME_SIZE
        req = TPACKET_REQ3.pack(block_size, self.nblocks, RING_FRAME_SIZE, frames_per_block * self.nblocks,
                                retire_ms, 0, 0)
        ring_bytes = block_size * self.nblocks
        try:
            if netns is None:
                self._sock, self._mm, self.ifindex = _open_socket(ifname, req, ring_bytes)
            else:
                self._sock, self._mm, self.ifindex = run_in_netns(netns, _open_socket, ifname, req, ring_bytes)
        except OSError as e:
            raise NetdevError(e.errno, f"port {here}: AF_PACKET socket with a TPACKET_V3 ring: "
                                       f"{e.strerror or e}") from None
        self._fd = self._sock.fileno()
        self._ring = np.frombuffer(self._mm, np.uint32)
        self._ring_addr = self._ring.ctypes.data
        self._rx_state = np.zeros(RX_STATE_LEN, np.int64)
        self.tx_retries = tx_retries
        self._tx_cap = tx_capacity
        self._iovs = np.zeros(tx_capacity * MSG_IOVECS * IOVEC_WORDS, np.uint64)
        self._msgs = np.zeros(tx_capacity * MMSG_WORDS, np.uint64)
        self._tx_vnet_hdr = np.zeros(VNET_HDR_LEN, np.uint8)  # no GSO, checksum complete: a plain frame
        iov_addr = self._iovs.ctypes.data
        for i in range(tx_capacity):  # msg_iov, msg_iovlen and the header iovec never change
            self._msgs[i * MMSG_WORDS + 2] = iov_addr + 8 * MSG_IOVECS * IOVEC_WORDS * i
            self._msgs[i * MMSG_WORDS + 3] = MSG_IOVECS
            self._iovs[MSG_IOVECS * IOVEC_WORDS * i] = self._tx_vnet_hdr.ctypes.data
            self._iovs[MSG_IOVECS * IOVEC_WORDS * i + 1] = VNET_HDR_LEN
        self._tx_out = np.zeros(5, np.int64)  # [3], [4]: GRO's running super-frame and row counts
        self.gro = gro
        self._row_end = np.zeros(tx_capacity, np.int64)
        self._stage = np.zeros(0, np.uint8)  # merged frames; sized for the batch's slots at first use
        self._totals = [0, 0, 0]  # packets, drops, freeze_q
        self._tx_rejected = 0
        self._tx_retries_used = 0
        self.last_tx_errno = 0

    # -- the datapath ----------------------------------------------------------------------------
    def fileno(self) -> int:
        """The socket fd: readable when a ring block is ready for `recv_batch`."""
        self._check_open()
        return self._fd

    def recv_batch(self, batch: FrameBatch) -> int:
        """Fill ``batch`` with up to ``batch.capacity`` received frames; set and return ``batch.count``."""
        self._check_open()
        n = rx_ring_walk(self._ring, self._ring_addr, self.block_size, self.nblocks, self._rx_state,
                         batch.data, batch.lens)
        batch.count = n
        return n

    def send_batch(self, batch: FrameBatch) -> int:
        """Send frames ``0..batch.count-1``; return how many left the front of the batch.

        Frames the kernel refuses are skipped (counted in `stats`, ``tx_rejected``);
        a return below ``batch.count`` means the device stayed full through
        ``tx_retries`` retries and the caller keeps (or drops) the rest.
        """
        self._check_open()
        count = batch.count
        done = 0
        while done < count:  # chunks of tx_capacity frames (one Python step per chunk, not per frame)
            n = min(count - done, self._tx_cap)
            if self.gro:
                need = n * (batch.data.shape[1] + 18)
                if self._stage.shape[0] < need:
                    self._stage = np.zeros(need, np.uint8)
                sent = tx_sendmmsg_gro(self._fd, batch.data[done:], batch.lens[done:], n, self._msgs, self._iovs,
                                       self._tx_vnet_hdr, self._stage, self._row_end, self.tx_retries, self._tx_out)
            else:
                sent = tx_sendmmsg(self._fd, batch.data[done:], batch.lens[done:], n, self._msgs, self._iovs,
                                   self.tx_retries, self._tx_out)
            self._tx_retries_used += int(self._tx_out[0])
            self._tx_rejected += int(self._tx_out[1])
            self.last_tx_errno = int(self._tx_out[2])
            done += sent
            if sent < n:
                break
        return done

    # -- control ---------------------------------------------------------------------------------
    def stats(self) -> PortStats:
        """The kernel's PACKET_STATISTICS accumulated since open, plus our own counters."""
        self._check_open()
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS_V3.size)
        packets, drops, freeze = TPACKET_STATS_V3.unpack(raw)
        self._totals[0] += packets - drops
        self._totals[1] += drops
        self._totals[2] += freeze
        return PortStats(packets=self._totals[0], drops=self._totals[1], freeze_q=self._totals[2],
                         oversize=int(self._rx_state[ST_OVERSIZE]), tx_rejected=self._tx_rejected,
                         tx_retries=self._tx_retries_used, csum_completed=int(self._rx_state[ST_CSUM_DONE]),
                         csum_left=int(self._rx_state[ST_CSUM_LEFT]),
                         gso_frames=int(self._rx_state[ST_GSO_FRAMES]),
                         gso_segments=int(self._rx_state[ST_GSO_SEGMENTS]),
                         gso_refused=int(self._rx_state[ST_GSO_REFUSED]),
                         tx_gro_frames=int(self._tx_out[3]), tx_gro_segments=int(self._tx_out[4]))

    def _check_open(self) -> None:
        if self._fd < 0:
            raise NetdevError(f"port {where(self.ifname, self.netns)} is closed")

    def close(self) -> None:
        """Unmap the ring and close the socket (idempotent)."""
        if self._fd < 0:
            return
        self._fd = -1
        self._ring = None  # drop the numpy view before unmapping
        try:
            self._mm.close()
        finally:
            self._sock.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"Port({where(self.ifname, self.netns)}, {state})"
