"""Frames between a datapath's `FrameBatch` and the JIT's XDP pages, copied in compiled loops.

A `FrameBatch` slot holds a frame at offset 0 with no room around it; an XDP program
needs the kernel's geometry (256 bytes of headroom for ``adjust_head``, the tailroom
``adjust_tail`` grows into). So `Engine.run_batch` on the JIT stages each frame into a
page of that geometry, runs the batch in one native call, and copies each result back
(the frame from ``data`` to ``data_end``: metadata stays behind, as it does with the
XDP frame). A result that no longer fits its slot is ABORTED and its slot left as it
came in. Two numba loops, so no Python runs per frame.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..interp.xdp import XDP_PACKET_HEADROOM

_ABORTED = 0


@njit(cache=True, nogil=True)
def stage_in(data, lens, count, pages, geometry):
    """Frame ``i`` of the batch into page ``i`` at the headroom; geometry (data_meta, data, data_end)."""
    for i in range(count):
        n = lens[i]
        pages[i, XDP_PACKET_HEADROOM:XDP_PACKET_HEADROOM + n] = data[i, :n]
        geometry[i, 0] = XDP_PACKET_HEADROOM
        geometry[i, 1] = XDP_PACKET_HEADROOM
        geometry[i, 2] = XDP_PACKET_HEADROOM + n


@njit(cache=True, nogil=True)
def stage_out(pages, geometry, actions, count, data, lens, out):
    """Each page's frame back into its slot; one grown past the slot is ABORTED, its slot untouched."""
    slot = data.shape[1]
    for i in range(count):
        lo, hi = geometry[i, 1], geometry[i, 2]
        n = hi - lo
        if n > slot or n < 0:
            out[i] = _ABORTED
            continue
        data[i, :n] = pages[i, lo:hi]
        lens[i] = n
        out[i] = actions[i]


def warmup() -> None:
    """Both loops typed as `JitEngine.run_batch` calls them (see `vxdp.jitcache`)."""
    data, lens = np.zeros((1, 64), np.uint8), np.zeros(1, np.uint32)
    pages, geometry = np.zeros((1, 4096), np.uint8), np.zeros((1, 3), np.int32)
    stage_in(data, lens, 0, pages, geometry)
    stage_out(pages, geometry, np.zeros(1, np.int32), 0, data, lens, np.zeros(1, np.int32))


__all__ = ["stage_in", "stage_out", "warmup"]
