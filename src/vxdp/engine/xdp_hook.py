"""An XDP program on a datapath's receive batches: the verdicts applied, the actions counted.

The one place a batch meets a program outside the kernel, on both sides of the device:
the guest's native XDP (frames that crossed the ring, before its tap) and the host's
offload on an engine of ours (frames from the port, before the guest's rx ring). The
engine runs the program on the whole batch (`Engine.run_batch`: one native call on
the JIT), then one compiled pass (`split_verdicts`) keeps the PASS frames in place, in
order, and gathers the TX frames into a second batch that goes back out where the
frames came from (the guest's tx vring; the host's port). DROP frees the frame;
ABORTED (a fault, or a frame grown past its slot), REDIRECT (nowhere to send it
outside the kernel) and unknown return values are dropped too, each counted by name
as ``host show`` and ``guest show`` print them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from ..bpf.isa import ACTION_NAMES, XdpAction
from ..frames import FrameBatch
from .base import Engine, XdpMd

_PASS, _TX = int(XdpAction.PASS), int(XdpAction.TX)
_OTHER = len(ACTION_NAMES)  # the counting slot of a return value that is no XDP action


@njit(cache=True, nogil=True)
def split_verdicts(data, lens, count, actions, tx_data, tx_lens, counts):
    """Compact the PASS frames of ``data[:count]`` to its front, copy the TX ones into ``tx_data``,
    add one per frame to ``counts[action]`` (``counts[-1]``: not an action); returns (kept, tx)."""
    keep = 0
    ntx = 0
    other = counts.shape[0] - 1
    for i in range(count):
        a = actions[i]
        counts[a if 0 <= a < other else other] += 1
        n = lens[i]
        if a == _PASS:
            if keep != i:
                data[keep, :n] = data[i, :n]
            lens[keep] = n
            keep += 1
        elif a == _TX:
            tx_data[ntx, :n] = data[i, :n]
            tx_lens[ntx] = n
            ntx += 1
    return keep, ntx


class XdpHook:
    """Runs one engine's program on each batch handed to it (see the module docstring).

    ``send(batch) -> int`` puts TX frames back out and says how many it took; those it did not
    are counted ``tx_dropped``. The program is the engine's handle and may change between batches
    (`prog`, set by whoever attaches: the guest's driver, the host's port). ``ctx``: what the program
    reads from ``xdp_md`` besides the frame (the host's port's ifindex as ``ingress_ifindex``)."""

    def __init__(self, engine: Engine, prog: int | None, send: Callable[[FrameBatch], int],
                 ctx: XdpMd | None = None) -> None:
        self.engine = engine
        self.prog = prog
        self.send = send
        self.ctx = ctx
        self._counts = np.zeros(_OTHER + 1, np.int64)
        self._dropped = 0
        self._tx: FrameBatch | None = None
        self._actions = np.zeros(0, np.int32)

    def __call__(self, batch: FrameBatch) -> None:
        prog = self.prog
        if prog is None or batch.count == 0:
            return
        if self._tx is None or self._tx.capacity < batch.capacity or self._tx.slot_size < batch.slot_size:
            self._tx = FrameBatch.allocate(batch.capacity, batch.slot_size)
            self._actions = np.zeros(batch.capacity, np.int32)
        self.engine.run_batch(prog, batch, self._actions, ctx=self.ctx)
        tx = self._tx
        keep, ntx = split_verdicts(batch.data, batch.lens, batch.count, self._actions, tx.data, tx.lens,
                                   self._counts)
        batch.count = int(keep)
        if ntx:
            tx.count = int(ntx)
            self._dropped += int(ntx) - self.send(tx)

    def snapshot(self) -> dict[str, int]:
        """Frames per action name so far (only those seen), ``other`` and ``tx_dropped`` if any."""
        names = [*ACTION_NAMES, "other"]
        out = {names[i]: int(n) for i, n in enumerate(self._counts) if n}
        if self._dropped:
            out["tx_dropped"] = self._dropped
        return out


def warmup() -> None:
    """`split_verdicts` typed as `XdpHook` calls it (see `vxdp.jitcache`)."""
    b = FrameBatch.allocate(1)
    split_verdicts(b.data, b.lens, 0, np.zeros(1, np.int32), b.data, b.lens, np.zeros(_OTHER + 1, np.int64))


__all__ = ["XdpHook", "split_verdicts", "warmup"]
