"""Guest-native XDP: a program run by the guest driver on its rx path, the non-offload baseline.

This is what a guest does without offload: every frame crosses the virtio ring,
then the guest's own XDP program decides. It runs on each rx batch before the
tap: PASS frames go on to the tap (as the program left them: adjust_head/tail
and rewrites included), TX frames go back out on the tx vring, DROP, ABORTED
and REDIRECT (which a virtio-user driver has nowhere to send) are dropped and
counted. With a program also offloaded, this one sees what the host passed.

The engine is the reference interpreter for now, so this loop runs one frame at
a time in Python: it is the baseline's semantics, not its speed; a compiled
engine takes its place behind the same `Engine` interface.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from ..bpf.isa import ACTION_NAMES, XdpAction
from ..engine.base import Engine
from ..frames import FrameBatch


class NativeXdp:
    """The driver's ``rx_program`` hook: filters a batch in place, sends TX frames back."""

    def __init__(self, engine: Engine, prog: int, send: Callable[[FrameBatch], int]) -> None:
        self.engine = engine
        self.prog = prog
        self.send = send
        self.counters: Counter[str] = Counter()
        self._tx: FrameBatch | None = None

    def __call__(self, batch: FrameBatch) -> None:
        if self._tx is None or self._tx.capacity < batch.capacity or self._tx.slot_size < batch.slot_size:
            self._tx = FrameBatch.allocate(batch.capacity, batch.slot_size)
        tx, keep, ntx = self._tx, 0, 0
        for i in range(batch.count):
            frame = batch.data[i, : batch.lens[i]].tobytes()
            result = self.engine.run(self.prog, frame)
            name = ACTION_NAMES[result.action] if 0 <= result.action < len(ACTION_NAMES) else "other"
            self.counters[name] += 1
            out = result.packet
            if len(out) > batch.slot_size:  # grown past a slot by adjust_tail: nowhere to put it
                self.counters["oversize"] += 1
                continue
            if result.action == XdpAction.PASS:
                batch.data[keep, : len(out)] = np.frombuffer(out, np.uint8)
                batch.lens[keep] = len(out)
                keep += 1
            elif result.action == XdpAction.TX:
                tx.data[ntx, : len(out)] = np.frombuffer(out, np.uint8)
                tx.lens[ntx] = len(out)
                ntx += 1
        batch.count = keep
        if ntx:
            tx.count = ntx
            dropped = ntx - self.send(tx)
            if dropped:
                self.counters["tx_dropped"] += dropped

    def snapshot(self) -> dict[str, int]:
        return dict(self.counters)
