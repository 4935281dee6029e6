"""Shared pieces of the host daemon tests: the daemon as a real subprocess (``python -m
vxdp.cli.main host serve``, killed whatever happens), a quiet lab (two namespaces, a veth
pair, IPv6 off so the links carry only the frames a test sends), bounded polling (`poll`, from
`vxdp.testing.proc`), and a peer-side frame counter."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from vxdp.frames import FrameBatch
from vxdp.netdev.port import Port, PortStats
from vxdp.testing.daemon import HostDaemon
from vxdp.testing.netns import NetLab, VethPair
from vxdp.testing.proc import poll

__all__ = ["Counter", "Daemon", "poll", "quiet_lab"]


def quiet_lab(lab: NetLab, *, addr_port: str | None = None, addr_peer: str | None = None,
              mtu: int | None = None) -> VethPair:
    """Namespaces ``ns_a`` (the daemon's port ``vxp``) and ``ns_b`` (the peer ``vxq``), IPv6 off, so
    nothing but the test's frames (and ARP/IPv4 when addresses are given) crosses the link."""
    a, b = lab.netns(ipv6=False), lab.netns(ipv6=False)
    # The veths keep their default offloads (checksum, TSO/GSO): the port completes partial
    # checksums and cuts super-frames (vxdp.netdev.gso), as it must for a user's veth.
    return lab.veth(a, b, "vxp", "vxq", addr_b=addr_peer, addr_a=addr_port, mtu=mtu)


class Daemon(HostDaemon):
    """``vxdp host serve`` as a subprocess with its own run dir (`vxdp.testing.daemon`), always stopped."""

    def __init__(self, run_dir: Path, sock: str, port: str, *, netns: str | None, name: str = "t0",
                 client: bool = False, extra: tuple[str, ...] = ()):
        super().__init__(sock, port, netns, run_dir, name=name, client=client, extra=extra)


class Counter:
    """Reads every frame arriving on a Port (in a thread): ``count``/``bytes`` of those that pass
    ``accept``, ``rejected`` of those that do not, and ``distinct`` (up to 16 different frames
    that passed, to check their contents). `settle` pairs this with the kernel's own count."""

    def __init__(self, port: Port, accept: Callable[[bytes], bool]):
        self.port, self.accept = port, accept
        self.count = 0
        self.bytes = 0
        self.rejected = 0
        self.distinct: set[bytes] = set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import select

        b = FrameBatch.allocate(256)
        while not self._stop.is_set():
            select.select([self.port.fileno()], [], [], 0.05)
            while self.port.recv_batch(b):
                for f in b.frames():
                    if not self.accept(f):
                        self.rejected += 1
                        continue
                    self.count += 1
                    self.bytes += len(f)
                    if len(self.distinct) < 16:
                        self.distinct.add(bytes(f))

    def settle(self, sent: int, timeout: float = 30.0) -> PortStats:
        """Wait (bounded) until the port's kernel counters account for ``sent`` frames and this
        thread has read every frame the ring took; return those counters.

        What is then exact: ``packets + drops == sent`` (each frame was put in the peer's ring
        or dropped there because the ring was full, counted by the kernel: nothing vanished
        unseen, nothing was duplicated) and ``count + rejected == packets``."""
        return poll(self.port.stats,
                    until=lambda st: st.packets + st.drops >= sent and self.count + self.rejected >= st.packets,
                    timeout=timeout, what=f"peer counters for {sent} frames (count {self.count})")

    def stop(self) -> int:
        self._stop.set()
        self._t.join(10)
        return self.count
