"""The compiled ring loops typed before a daemon serves (see `vxdp.jitcache` for why).

Each warm-up drives the real wrappers (`DeviceRing` for the backend, `DriverRing`
for the driver) over a small memfd with rings laid out by the Python
`DriverQueue`, so the compiled loops see exactly the argument types the datapath gives
them. A loop is compiled for its argument types, not their contents, so the
rings may stay empty: the device half finds no buffers, the driver half's
frames are never taken, and nothing leaves the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from . import sigbus
from .fastring import DeviceRing, DriverRing
from .memory import GuestMemory
from .virtqueue import DriverQueue

__all__ = ["device", "driver"]

_NUM = 64
_BUF = 2048


@contextmanager
def _rings() -> Iterator[tuple[GuestMemory, DriverQueue, DriverQueue, int]]:
    """A 1 MiB guest memory with an rx and a tx ring and the buffer area after them."""
    mem = GuestMemory.allocate(1 << 20, name="vxdp-warmup")
    try:
        tx = DriverQueue.create(mem, _NUM, 0, event_idx=True)
        rx = DriverQueue.create(mem, _NUM, tx.end_gpa, event_idx=True)
        yield mem, rx, tx, (rx.end_gpa + 4095) & ~4095
    finally:
        mem.close()


def _batch() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((4, _BUF), np.uint8), np.zeros(4, np.uint32)


def device() -> None:
    """`DeviceRing.deliver`, `collect` and `pop_chains` (the backend's rx, tx and ctrl rings), and the
    backend's SIGBUS guard (`vxdp.virtio.sigbus`: compiled at install, never cached)."""
    sigbus.install()
    with _rings() as (mem, rx, tx, _):
        data, lens = _batch()
        DeviceRing(rx.state(), mem, mrg=True).deliver(data, lens, 1)
        DeviceRing(tx.state(), mem).collect(data, lens)
        DeviceRing(tx.state(), mem).pop_chains(1)


def driver() -> None:
    """`DriverRing.refill`, `reap_rx`, `post_tx` and `reap_tx` (the guest driver's rings)."""
    with _rings() as (mem, rx, tx, area):
        data, lens = _batch()
        drv_rx = DriverRing(rx, mem, area, _BUF, mrg=True)
        drv_tx = DriverRing(tx, mem, area + _NUM * _BUF, _BUF)
        drv_rx.refill()
        drv_rx.reap_rx(data, lens)
        drv_tx.post_tx(data, lens, 1)
        drv_tx.reap_tx()
