"""Batch frame I/O on host netdevs: a `Port` (AF_PACKET ring + sendmmsg) and a `Tap` (/dev/net/tun).

A low layer: imports `vxdp.frames` and `vxdp.bpf.kernel` only. Every per-frame
loop is compiled (`vxdp.netdev.compiled`), called once per `FrameBatch`.
"""
