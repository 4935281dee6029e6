"""The port's and tap's compiled loops typed before a daemon serves (see `vxdp.jitcache` for why).

A loop is compiled for the types of its arguments, not their contents, so each
is called once with arrays of exactly the dtypes, shapes and layouts `Port` and
`Tap` pass, on an fd of -1 and empty rings: every syscall fails with EBADF at
once and no frame moves. `tests/netdev/test_warmup.py` checks that a real port
and tap afterwards need no compile of their own.
"""

from __future__ import annotations

import numpy as np

from vxdp.frames import FrameBatch

from .compiled import (
    IOVEC_WORDS,
    MMSG_WORDS,
    MSG_IOVECS,
    RX_STATE_LEN,
    fd_read_batch,
    fd_readv_batch,
    fd_write_batch,
    fd_write_gro_batch,
    rx_ring_walk,
    tx_sendmmsg,
    tx_sendmmsg_gro,
)
from .gro import MERGED_MAX
from .gso import VNET_HDR_LEN

__all__ = ["port", "tap"]

_NO_FD = -1


def port() -> None:
    """`Port.recv_batch` (a ring whose one block the kernel still owns) and both `Port.send_batch` kinds."""
    batch = FrameBatch.allocate(4)
    block = 4096
    ring = np.zeros(2 * block // 4, np.uint32)  # block status 0: owned by the kernel, nothing to read
    rx_ring_walk(ring, ring.ctypes.data, block, 2, np.zeros(RX_STATE_LEN, np.int64), batch.data, batch.lens)
    iovs = np.zeros(MSG_IOVECS * IOVEC_WORDS, np.uint64)
    msgs = np.zeros(MMSG_WORDS, np.uint64)
    out = np.zeros(5, np.int64)
    tx_sendmmsg(_NO_FD, batch.data[0:], batch.lens[0:], 0, msgs, iovs, 0, out)
    tx_sendmmsg_gro(_NO_FD, batch.data[0:], batch.lens[0:], 0, msgs, iovs, np.zeros(VNET_HDR_LEN, np.uint8),
                    np.zeros(batch.data.shape[1] + 18, np.uint8), np.zeros(1, np.int64), 0, out)


def tap() -> None:
    """`Tap.read_batch` and `Tap.write_batch`, with and without GRO."""
    batch = FrameBatch.allocate(4)
    out = np.zeros(4, np.int64)
    fd_read_batch(_NO_FD, batch.data, batch.lens, out)
    fd_write_batch(_NO_FD, batch.data, batch.lens, 0, out)
    fd_readv_batch(_NO_FD, batch.data, batch.lens, np.zeros(VNET_HDR_LEN, np.uint8), np.zeros(4, np.uint64), out)
    fd_write_gro_batch(_NO_FD, batch.data, batch.lens, 0, np.zeros(MERGED_MAX, np.uint8), out)
