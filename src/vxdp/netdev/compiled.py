"""The compiled per-batch loops of the netdev layer: one call per batch, never a Python step per frame.

Seven loops, each ``@njit(cache=True, nogil=True)`` and each returning a count
plus an array of side results (``out``: errno, errors, retries; `rx_ring_walk`'s
``state`` carries its position and counts across calls), since compiled code
cannot raise with a useful message:

- `rx_ring_walk` walks an AF_PACKET ``TPACKET_V3`` receive ring (blocks of
  variable-length frames the kernel fills and hands over one block at a time),
  and finishes in the copy the TCP/UDP checksum of every frame the kernel marks
  ``TP_STATUS_CSUMNOTREADY`` (`vxdp.netdev.csum`) and cuts every GSO
  super-frame into wire-size frames (`vxdp.netdev.gso`).
- `tx_sendmmsg` sends a batch with ``sendmmsg(2)``: one syscall for as many
  frames as the kernel takes, bounded retries when the device is full;
  `tx_sendmmsg_gro` does the same on a ``PACKET_VNET_HDR`` socket, each run of
  one TCP flow's segments sent as one GSO super-frame (`vxdp.netdev.gro`).
- `fd_read_batch` / `fd_write_batch` move frames through a tap fd with one
  ``read(2)``/``write(2)`` per frame (a tap has no batched call) until the batch
  is full/done or the fd answers EAGAIN; `fd_readv_batch` / `fd_write_gro_batch`
  do the same through an ``IFF_VNET_HDR`` tap (each frame's ``virtio_net_hdr``
  read apart; a flow's run of segments written as one super-frame).

Memory ordering in `rx_ring_walk` (numba has no fences, volatile loads or
atomics). The kernel fills a block's frames, then ``smp_wmb()``, then stores
``TP_STATUS_USER`` into the block's status word (``prb_close_block``). We load
that status word first, once per visit of a block, and read the block's
frames only if it says USER; x86 (TSO) never reorders a load with an earlier
load, so the frame bytes we load after seeing USER are the ones the kernel
wrote before publishing it. A compiler cannot hoist those loads above the
status check either: their addresses (``tp_mac``, ``tp_next_offset``) are
themselves read from the block after the check. Handing the block back is one
store of ``TP_STATUS_KERNEL`` after the last load from the block; x86 never
reorders a store with earlier loads, and the compiler cannot sink the frame
copies (``memcpy`` calls into the caller's batch) past it since they may alias
the ring. The kernel, for its part, reads the status with ``smp_rmb()`` before
reusing a block. No loop here spins on the status word: a call returns as soon
as the next block is not ours, so a stale read only delays a frame to the next
call.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._libc import (
    EAGAIN,
    EINTR,
    ENOBUFS,
    c_memcpy,
    c_read,
    c_readv,
    c_sched_yield,
    c_sendmmsg,
    c_write,
    last_errno,
)
from .csum import complete_l4_checksum
from .gro import coalesce, find_run, write_merged
from .gso import GSO_NONE, SEG_REFUSED, VNET_GSO_SIZE_OFF, VNET_GSO_TYPE_OFF, VNET_HDR_LEN, segment

# TPACKET_V3 layout (include/uapi/linux/if_packet.h)
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_CSUMNOTREADY = 1 << 3  # tp_status: the skb is CHECKSUM_PARTIAL, its L4 checksum unfinished
BLK_STATUS_OFF = 8  # tpacket_block_desc.hdr.bh1.block_status
BLK_NUM_PKTS_OFF = 12  # .num_pkts
BLK_FIRST_PKT_OFF = 16  # .offset_to_first_pkt
PKT_NEXT_OFF = 0  # tpacket3_hdr.tp_next_offset
PKT_SNAPLEN_OFF = 12  # .tp_snaplen
PKT_LEN_OFF = 16  # .tp_len
PKT_STATUS_OFF = 20  # .tp_status
PKT_MAC_OFF = 24  # .tp_mac (u16)
TP_STATUS_VLAN_VALID = 1 << 4  # tp_status: the stack took an 802.1Q/802.1ad tag out of the frame
TP_STATUS_VLAN_TPID_VALID = 1 << 6
PKT_VLAN_TCI_OFF = 32  # .hv1.tp_vlan_tci
PKT_VLAN_TPID_OFF = 36  # .hv1.tp_vlan_tpid (u16)
ETH_P_8021Q = 0x8100

# rx_ring_walk's state array
ST_BLOCK, ST_INDEX, ST_OFFSET, ST_OVERSIZE, ST_CSUM_DONE, ST_CSUM_LEFT = 0, 1, 2, 3, 4, 5
ST_GSO_FRAMES, ST_GSO_SEGMENTS, ST_GSO_REFUSED = 6, 7, 8
RX_STATE_LEN = 9

MMSGHDR_SIZE = 64  # struct mmsghdr on x86_64: msghdr (56) + msg_len (4) + padding
MMSG_WORDS = MMSGHDR_SIZE // 8
IOVEC_WORDS = 2  # struct iovec: base, len
MSG_IOVECS = 2  # per message: the (zero) virtio_net_hdr PACKET_VNET_HDR expects, then the frame


@njit(cache=True, nogil=True, inline="always")
def _insert_vlan(row: np.ndarray, length: int, tpid: int, tci: int) -> None:
    """Put an 802.1Q/802.1ad tag back after the MAC addresses of the frame ``row[:length]``."""
    for i in range(length - 1, 11, -1):
        row[i + 4] = row[i]
    row[12] = tpid >> 8
    row[13] = tpid & 0xFF
    row[14] = tci >> 8
    row[15] = tci & 0xFF


@njit(cache=True, nogil=True)
def rx_ring_walk(ring32: np.ndarray, ring_addr: int, block_size: int, nblocks: int, state: np.ndarray,
                 data: np.ndarray, lens: np.ndarray) -> int:
    """Copy up to ``data.shape[0]`` frames out of the ring into the batch; return how many.

    ``ring32`` is the mapped ring as uint32 words, ``ring_addr`` its address.
    ``state`` (int64[RX_STATE_LEN]) carries the position across calls: the
    current block, the index and byte offset of the next frame in it (a batch
    may fill up in the middle of a block, which we then keep until a later call
    empties it), and running counts: frames longer than a slot (skipped, not
    truncated), CSUMNOTREADY frames whose checksum we completed, and those we
    left as they came (not TCP/UDP over IPv4/IPv6, truncated, a fragment);
    GSO super-frames cut into segments (`vxdp.netdev.gso`), the segments made,
    and super-frames refused. A super-frame whose segments do not fit what is
    left of the batch waits for the next call, like the rest of its block.
    Every block emptied is handed back to the kernel at once.
    """
    cap = data.shape[0]
    slot = data.shape[1]
    dst = data.ctypes.data
    ring8 = ring32.view(np.uint8)
    n = 0
    blk = state[ST_BLOCK]
    idx = state[ST_INDEX]
    off = state[ST_OFFSET]
    while n < cap:
        base = blk * block_size
        status = ring32[(base + BLK_STATUS_OFF) >> 2]  # the one read of the status per block visit
        if (status & TP_STATUS_USER) == 0:
            break
        num = ring32[(base + BLK_NUM_PKTS_OFF) >> 2]
        if idx == 0:
            off = ring32[(base + BLK_FIRST_PKT_OFF) >> 2]
        while idx < num and n < cap:
            p = base + off
            snaplen = ring32[(p + PKT_SNAPLEN_OFF) >> 2]
            mac = ring32[(p + PKT_MAC_OFF) >> 2] & 0xFFFF
            pstatus = ring32[(p + PKT_STATUS_OFF) >> 2]
            whole = snaplen == ring32[(p + PKT_LEN_OFF) >> 2]
            # The receive path moves a VLAN tag out of the frame into the skb (skb_vlan_untag) and
            # AF_PACKET reports it beside the frame: put it back, the guest must see the frame as sent.
            tagged = (pstatus & TP_STATUS_VLAN_VALID) != 0 and snaplen >= 12
            reserve = 4 if tagged else 0
            vh = p + mac - VNET_HDR_LEN  # PACKET_VNET_HDR: the skb's virtio_net_hdr just before the frame
            gso_type = np.int64(ring8[vh + VNET_GSO_TYPE_OFF])
            if gso_type != GSO_NONE:
                made = SEG_REFUSED
                if whole:
                    gso_size = np.int64(ring8[vh + VNET_GSO_SIZE_OFF]) | (np.int64(ring8[vh + VNET_GSO_SIZE_OFF + 1]) << 8)
                    made = segment(ring8[p + mac:p + mac + snaplen], snaplen, gso_type, gso_size, reserve,
                                   data, lens, n)
                if made < 0:
                    if n > 0:
                        break  # its frames do not fit what is left of the batch: it waits for the next call
                    made = SEG_REFUSED  # they would not fit an empty batch either
                if made == SEG_REFUSED:
                    state[ST_GSO_REFUSED] += 1
                else:
                    state[ST_GSO_FRAMES] += 1
                    state[ST_GSO_SEGMENTS] += made
            elif snaplen + reserve <= slot:
                c_memcpy(dst + n * slot, ring_addr + p + mac, snaplen)
                lens[n] = snaplen
                if pstatus & TP_STATUS_CSUMNOTREADY:
                    if whole and complete_l4_checksum(data[n], snaplen):
                        state[ST_CSUM_DONE] += 1
                    else:
                        state[ST_CSUM_LEFT] += 1
                made = 1
            else:
                state[ST_OVERSIZE] += 1
                made = 0
            if tagged and made > 0:
                tpid = ETH_P_8021Q
                if pstatus & TP_STATUS_VLAN_TPID_VALID:
                    tpid = ring32[(p + PKT_VLAN_TPID_OFF) >> 2] & 0xFFFF
                tci = ring32[(p + PKT_VLAN_TCI_OFF) >> 2] & 0xFFFF
                for r in range(n, n + made):
                    _insert_vlan(data[r], lens[r], tpid, tci)
                    lens[r] += 4
            n += made
            off += ring32[(p + PKT_NEXT_OFF) >> 2]
            idx += 1
        if idx < num:
            break  # the batch is full; the rest of this block waits for the next call
        ring32[(base + BLK_STATUS_OFF) >> 2] = TP_STATUS_KERNEL  # hand the block back
        blk += 1
        if blk == nblocks:
            blk = 0
        idx = 0
        off = 0
    state[ST_BLOCK] = blk
    state[ST_INDEX] = idx
    state[ST_OFFSET] = off
    return n


@njit(cache=True, nogil=True)
def _sendmmsg_all(fd: int, msgs: np.ndarray, count: int, max_retries: int, out: np.ndarray) -> int:
    """sendmmsg the prepared messages ``0..count-1`` of ``msgs``; return how many are done (sent or skipped).

    ENOBUFS/EAGAIN (the device or the socket buffer is full) is retried ``max_retries`` times in
    all, yielding the CPU in between; then we stop and the caller keeps the rest. Any other error
    belongs to the message at the front (e.g. EMSGSIZE): it is skipped and counted, so one bad
    frame never stalls the queue. out: [0] retries used, [1] messages rejected, [2] the last errno
    seen (0 if none).
    """
    mp = msgs.ctypes.data
    done = 0
    retries = 0
    rejected = 0
    last = 0
    while done < count:
        r = c_sendmmsg(fd, mp + done * MMSGHDR_SIZE, count - done, 0)
        if r > 0:
            done += r
            continue
        e = last_errno()
        if e == EINTR:
            continue
        last = e
        if e == ENOBUFS or e == EAGAIN:
            if retries >= max_retries:
                break
            retries += 1
            c_sched_yield()
            continue
        rejected += 1
        done += 1
    out[0] = retries
    out[1] = rejected
    out[2] = last
    return done


@njit(cache=True, nogil=True)
def tx_sendmmsg(fd: int, data: np.ndarray, lens: np.ndarray, count: int, msgs: np.ndarray, iovs: np.ndarray,
                max_retries: int, out: np.ndarray) -> int:
    """Send frames ``0..count-1`` of the batch with sendmmsg; return how many left the front of the batch.

    ``msgs`` (uint64[cap*8]) holds prepared ``struct mmsghdr``s whose iovec
    pointers point into ``iovs`` (uint64[cap*4]: per message the header iovec,
    prepared too, then the frame's, which we fill). Retries, errors and ``out`` as in
    `_sendmmsg_all`.
    """
    base = data.ctypes.data
    slot = data.shape[1]
    for i in range(count):
        iovs[4 * i + 2] = base + i * slot
        iovs[4 * i + 3] = lens[i]
    return _sendmmsg_all(fd, msgs, count, max_retries, out)


@njit(cache=True, nogil=True)
def tx_sendmmsg_gro(fd: int, data: np.ndarray, lens: np.ndarray, count: int, msgs: np.ndarray, iovs: np.ndarray,
                    zero_hdr: np.ndarray, stage: np.ndarray, row_end: np.ndarray, max_retries: int,
                    out: np.ndarray) -> int:
    """`tx_sendmmsg` for a ``PACKET_VNET_HDR`` socket, each run of one TCP flow's segments sent as one
    GSO super-frame (`vxdp.netdev.gro`): the stack behind the port then receives one skb per run.

    Per message the header iovec points at ``zero_hdr`` (a frame alone, sent from its row) or at a
    merged frame's header in ``stage`` (which holds at least ``count * (slot + 18)`` bytes);
    ``row_end[m]`` is the batch row after message ``m``. Errors, retries and ``out[0..2]`` as in
    `_sendmmsg_all`, counted in messages; ``out[3]``/``out[4]`` add the super-frames sent and the rows
    they were made of. Returns the rows that left the front of the batch.
    """
    base = data.ctypes.data
    slot = data.shape[1]
    zh = zero_hdr.ctypes.data
    sbase = stage.ctypes.data
    m = 0
    i = 0
    so = 0
    while i < count:
        nxt, mss = find_run(data, lens, i, count)
        w = 4 * m
        if nxt - i > 1:
            nb = write_merged(data, lens, i, nxt, mss, stage[so:])
            iovs[w] = sbase + so
            iovs[w + 2] = sbase + so + VNET_HDR_LEN
            iovs[w + 3] = nb - VNET_HDR_LEN
            so += (nb + 7) & ~7
        else:
            iovs[w] = zh
            iovs[w + 2] = base + i * slot
            iovs[w + 3] = lens[i]
        iovs[w + 1] = VNET_HDR_LEN
        row_end[m] = nxt
        m += 1
        i = nxt
    done = _sendmmsg_all(fd, msgs, m, max_retries, out)
    supers = 0
    rows = 0
    for k in range(done):
        start = row_end[k - 1] if k > 0 else 0
        if row_end[k] - start > 1:
            supers += 1
            rows += row_end[k] - start
    out[3] += supers
    out[4] += rows
    return row_end[done - 1] if done > 0 else 0


@njit(cache=True, nogil=True)
def fd_read_batch(fd: int, data: np.ndarray, lens: np.ndarray, out: np.ndarray) -> int:
    """read(2) one frame per slot until the batch is full or the fd has none; return the frames read.

    out: [0] the errno that ended the loop (EAGAIN normally; 0 if the batch filled).
    """
    cap = data.shape[0]
    slot = data.shape[1]
    base = data.ctypes.data
    n = 0
    out[0] = 0
    while n < cap:
        r = c_read(fd, base + n * slot, slot)
        if r < 0:
            e = last_errno()
            if e == EINTR:
                continue
            out[0] = e
            break
        if r == 0:
            break
        lens[n] = r
        n += 1
    return n


@njit(cache=True, nogil=True)
def fd_write_batch(fd: int, data: np.ndarray, lens: np.ndarray, count: int, out: np.ndarray) -> int:
    """write(2) frames ``0..count-1``; stop at EAGAIN; return how many left the front of the batch.

    A frame the kernel refuses (EINVAL for a malformed one) is skipped and counted.
    out: [0] frames rejected, [1] the last errno seen (0 if none).
    """
    slot = data.shape[1]
    base = data.ctypes.data
    i = 0
    rejected = 0
    last = 0
    while i < count:
        r = c_write(fd, base + i * slot, lens[i])
        if r < 0:
            e = last_errno()
            if e == EINTR:
                continue
            last = e
            if e == EAGAIN:
                break
            rejected += 1
        i += 1
    out[0] = rejected
    out[1] = last
    return i


@njit(cache=True, nogil=True)
def fd_readv_batch(fd: int, data: np.ndarray, lens: np.ndarray, hdr: np.ndarray, iov: np.ndarray,
                   out: np.ndarray) -> int:
    """`fd_read_batch` for an ``IFF_VNET_HDR`` tap: each frame's ``virtio_net_hdr`` goes to ``hdr``
    (scratch, overwritten) and the frame alone to its row; one ``readv(2)`` per frame.

    ``iov`` is uint64[4]. out: [0] the errno that ended the loop (EAGAIN normally; 0 if full).
    """
    cap = data.shape[0]
    slot = data.shape[1]
    base = data.ctypes.data
    iov[0] = hdr.ctypes.data
    iov[1] = hdr.shape[0]
    iov[3] = slot
    n = 0
    out[0] = 0
    while n < cap:
        iov[2] = base + n * slot
        r = c_readv(fd, iov.ctypes.data, 2)
        if r < 0:
            e = last_errno()
            if e == EINTR:
                continue
            out[0] = e
            break
        if r <= hdr.shape[0]:
            break
        lens[n] = r - hdr.shape[0]
        n += 1
    return n


@njit(cache=True, nogil=True)
def fd_write_gro_batch(fd: int, data: np.ndarray, lens: np.ndarray, count: int, buf: np.ndarray,
                       out: np.ndarray) -> int:
    """write(2) frames ``0..count-1`` into an ``IFF_VNET_HDR`` tap, each run of one TCP flow's
    segments merged into one GSO super-frame (`vxdp.netdev.gro`); stop at EAGAIN; return how many
    rows left the front of the batch.

    A frame the kernel refuses is skipped and counted with the rows it was made of.
    out: [0] rows rejected, [1] the last errno seen (0 if none), [2] super-frames written,
    [3] the rows they were made of.
    """
    base = buf.ctypes.data
    i = 0
    rejected = 0
    last = 0
    supers = 0
    rows = 0
    while i < count:
        nxt, nbytes, merged = coalesce(data, lens, i, count, buf)
        r = c_write(fd, base, nbytes)
        if r < 0:
            e = last_errno()
            if e == EINTR:
                continue
            last = e
            if e == EAGAIN:
                break
            rejected += nxt - i
        elif merged:
            supers += 1
            rows += merged
        i = nxt
    out[0] = rejected
    out[1] = last
    out[2] += supers
    out[3] += rows
    return i
