"""The guest daemon's benchmark methods, ``guest.bench_tx`` and ``guest.bench_discard``.

`vxdp.bench.datapath` measures our driver alone through them: a generator writing into
the tap, or a receiver reading from it, would measure the tap, not the driver. They are
not part of the guest daemon: ``vxdp guest run`` registers them (`methods`), so the
datapath has no benchmark branch in it; discarding swaps where received frames go.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

from vxdp.frames import FrameBatch
from vxdp.guest.datapath import BATCH
from vxdp.guest.driver import GuestDriver, GuestDriverError
from vxdp.guest.rings import TX

MAX_SECONDS = 60.0


def _count_only(batch: FrameBatch) -> int:
    """An rx sink that takes every frame and keeps none (the driver's counters count them)."""
    return batch.count


class GuestBenchHooks:
    """The benchmark methods of one driver's daemon."""

    def __init__(self, driver: GuestDriver) -> None:
        self.driver = driver
        self._kept_sink: tuple[Callable[[FrameBatch], int] | None] | None = None  # set while discarding

    def bench_tx(self, frame: str, count: int, seconds: float = 5.0) -> dict[str, Any]:
        """Post ``count`` copies of ``frame`` (hex) on the tx vring as fast as the device frees buffers,
        for at most ``seconds``.

        The event loop is blocked meanwhile (the caller asked for a timed burst); completions are
        reaped here, waiting at most 1 ms on the tx call eventfd when the ring is full."""
        raw = bytes.fromhex(frame)
        driver = self.driver
        if not driver.connected:
            raise GuestDriverError("not connected to a backend")
        dp = driver.datapath
        longest = dp.max_frame()
        if not 14 <= len(raw) <= longest or count <= 0 or not 0 < seconds <= MAX_SECONDS:
            raise GuestDriverError(f"bench_tx: frame of {len(raw)} bytes, count {count}, {seconds} s: "
                                   f"want 14..{longest} bytes, count > 0, 0 < seconds <= {MAX_SECONDS:g}")
        b = FrameBatch.allocate(BATCH, max(64, len(raw)))
        b.fill([raw] * BATCH)
        rings = driver.rings
        call = rings.fds[TX].call
        sent = 0
        start = time.perf_counter()
        deadline = start + seconds
        while sent < count and time.perf_counter() < deadline:
            rings.tx.reap_tx()
            k = min(rings.queues[TX].nfree, BATCH, count - sent)
            if k:
                sent += dp.post(b.data, b.lens, k)
            elif select.select([call], [], [], 0.001)[0]:
                rings.drain_call(TX)
        return {"frames": sent, "seconds": time.perf_counter() - start}

    def bench_discard(self, on: bool = True) -> dict[str, Any]:
        """Count received frames and drop them instead of writing them to the tap (the driver's own rate);
        ``on=False`` gives them back to the tap."""
        dp = self.driver.datapath
        if on and self._kept_sink is None:
            self._kept_sink = (dp.rx_sink,)
            dp.rx_sink = _count_only
        elif not on and self._kept_sink is not None:
            (dp.rx_sink,) = self._kept_sink
            self._kept_sink = None
        return {"discard": self._kept_sink is not None}


def methods(driver: GuestDriver) -> dict[str, Callable[..., Any]]:
    """The control-socket methods to give the guest daemon (``GuestDaemon(extra_methods=methods)``)."""
    hooks = GuestBenchHooks(driver)
    return {"guest.bench_tx": hooks.bench_tx, "guest.bench_discard": hooks.bench_discard}
