"""Batch frame I/O on host netdevs: a `Port` (AF_PACKET ring + sendmmsg) and a `Tap` (/dev/net/tun).

A low layer: imports `vxdp.frames` and `vxdp.bpf.kernel` only. Every per-frame
loop is compiled (`vxdp.netdev.kernels`), called once per `FrameBatch`.
"""

from .errors import NetdevError
from .port import Port, PortStats
from .tap import Tap, TapStats

__all__ = ["NetdevError", "Port", "PortStats", "Tap", "TapStats"]
