"""How fast a `Port` moves 64-byte frames here: Mpps in, Mpps out (benchmark functions, not tests).

RX: the kernel's live-frames generator (XDP_TX from one end of a veth pair) on
a thread of its own floods the other end, where a PASS program gives the veth
NAPI and our `Port` reads batches; the rate is what the port received over the
time it took, with the kernel's ring drops reported beside it. Measured here:
~1.8 Mpps with no ring drops, i.e. the kernel's side (generator, veth NAPI and
AF_PACKET delivery, all on the generator's CPU) is the limit, not the reader.

TX: our `Port` sends batches into a veth whose peer drops them with an XDP
program; the kernel's per-program run count (BPF_ENABLE_STATS) counts what
arrived, so the rate is frames that reached the peer per second. Measured
here: 0.55-0.7 Mpps (0.55-0.85 into a peer without XDP); PACKET_TX_RING
(TPACKET_V2, one send() per 256 frames) measured the same 0.55-0.77, so the
port keeps sendmmsg, which needs no second ring. The kernel's per-frame cost
(skb allocation; with XDP on the peer veth, a copy of each skb into a page
with XDP headroom, in softirq on our CPU, one frame per NAPI poll) sets the
rate. With the peer's NAPI threaded and pinned to the other CPU
(``peer_napi_cpu``, `threaded_napi`) the peer's work leaves our CPU: 1.08-1.19
Mpps; sendmmsg batches of 64/256/1024 make no difference either way.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute

from vxdp.bpf.isa import XdpAction, verdict_program
from vxdp.bpf.kernel.live_frames import send_live_frames_in
from vxdp.bpf.kernel.prog import KernelProgram, enable_stats
from vxdp.bpf.kernel.xdp import XdpMode, attach_xdp
from vxdp.frames import FrameBatch

from ..netdev.errors import NetdevError, where
from ..netdev.port import Port

FRAME_64 = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(64 - 14)


@dataclass(frozen=True)
class Rate:
    frames: int  # frames that made it (received by the port / reached the peer)
    seconds: float
    drops: int  # RX: the kernel's ring drops; TX: frames send_batch gave back after its retries

    @property
    def mpps(self) -> float:
        return self.frames / self.seconds / 1e6 if self.seconds > 0 else 0.0


@contextlib.contextmanager
def _veth_pair() -> Iterator[tuple[str, str]]:
    """Two fresh namespaces joined by a veth pair ``vba`` (in the first) -- ``vbb`` (in the second).

    The harness helper (`vxdp.testing.netns`) is imported here, not at the top:
    only this benchmark needs it, never the datapath.
    """
    from vxdp.testing.netns import NetLab

    with NetLab(prefix="vxbn") as lab:
        ns_a, ns_b = lab.netns(), lab.netns()
        lab.veth(ns_a, ns_b, "vba", "vbb")
        yield ns_a, ns_b


def port_rx_mpps(frames: int = 2_000_000, batch: int = 256, **port_args) -> Rate:
    """Receive ``frames`` live 64-byte frames (or as many as the ring keeps) on a Port; the rate it read them."""
    with _veth_pair() as (ns_a, ns_b), \
            KernelProgram.load(verdict_program(XdpAction.PASS), name="bench_pass") as npass, \
            KernelProgram.load(verdict_program(XdpAction.TX), name="bench_gen") as gen, \
            Port("vbb", netns=ns_b, **port_args) as port:
        attach_xdp("vbb", npass.fd, XdpMode.NATIVE, netns=ns_b)
        with IPRoute(netns=ns_a, flags=0) as ip:
            a_index = ip.link_lookup(ifname="vba")[0]
        b = FrameBatch.allocate(batch)
        port.recv_batch(b)  # compile (or load the cache) before the clock starts
        done = threading.Event()

        def generate() -> None:
            try:
                send_live_frames_in(ns_a, gen, FRAME_64, ifindex=a_index, count=frames, batch_size=64)
            finally:
                done.set()

        got = 0
        poller = select.poll()
        poller.register(port.fileno(), select.POLLIN)
        t = threading.Thread(target=generate, daemon=True)
        start = time.perf_counter()
        last = start
        t.start()
        idle_after_done = 0
        while idle_after_done < 3:
            n = port.recv_batch(b)
            if n:
                got += n
                last = time.perf_counter()
                continue
            if done.is_set():
                idle_after_done += 1
            poller.poll(10)
        t.join()
        return Rate(got, last - start, port.stats().drops)


def _napi_threads(ifname: str) -> set[int]:
    """Pids of the kernel threads ``napi/IFNAME-ID`` (of any netns: callers take a before/after difference)."""
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().startswith(f"napi/{ifname}-"):
                        out.add(int(pid))
            except OSError:
                pass
    return out


@contextlib.contextmanager
def threaded_napi(netns: str, ifname: str, cpu: int | None) -> Iterator[None]:
    """Run ``ifname``'s NAPI in kernel threads (``/sys/class/net/IF/threaded``), pinned to ``cpu``.

    Why: a veth peer's receive work (its XDP program, the skb copy into a page-pool page) is
    otherwise done in softirq inside the *sender's* sendmmsg, on the sender's CPU, and one frame
    per NAPI poll. A transmit benchmark then measures the receiver as much as the sender. In a
    thread the peer's work moves off the sender's CPU and is batched (up to 64 frames a poll).
    The device needs NAPI first (an XDP program attached), or the kernel answers EIO.
    """
    def write(value: int) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", netns, "sh", "-c",
                               f"echo {value} > /sys/class/net/{ifname}/threaded"],
                              check=False, capture_output=True, text=True)

    before = _napi_threads(ifname)
    r = write(1)
    if r.returncode != 0:
        raise NetdevError(f"{where(ifname, netns)}: cannot make its NAPI threaded: {r.stderr.strip()}")
    try:
        if cpu is not None:
            for pid in _napi_threads(ifname) - before:
                try:
                    os.sched_setaffinity(pid, {cpu})
                except ProcessLookupError:  # a thread of another device of that name, gone meanwhile
                    pass
        yield
    finally:
        write(0)  # best effort: the namespace is usually torn down next anyway


def port_tx_mpps(frames: int = 2_000_000, batch: int = 256, *, peer_napi_cpu: int | None = None,
                 sender_cpu: int | None = None, **port_args) -> Rate:
    """Send ``frames`` 64-byte frames from a Port into a veth whose peer XDP-drops and counts them.

    ``peer_napi_cpu``: run the peer's NAPI threaded on that CPU (`threaded_napi`); ``sender_cpu``:
    send from that CPU. None: the kernel's defaults (peer's work in our syscall, sender unpinned).
    """
    with _veth_pair() as (ns_a, ns_b), enable_stats(), \
            KernelProgram.load(verdict_program(XdpAction.DROP), name="bench_drop") as drop, \
            Port("vba", netns=ns_a, **port_args) as port:
        attach_xdp("vbb", drop.fd, XdpMode.NATIVE, netns=ns_b)
        with contextlib.ExitStack() as stack:
            if peer_napi_cpu is not None:
                stack.enter_context(threaded_napi(ns_b, "vbb", peer_napi_cpu))
            if sender_cpu is not None:
                stack.enter_context(_pinned(sender_cpu))
            return _send_timed(port, drop, frames, batch)


@contextlib.contextmanager
def _pinned(cpu: int) -> Iterator[None]:
    """The calling thread on ``cpu`` while the body runs."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def _send_timed(port: Port, drop: KernelProgram, frames: int, batch: int) -> Rate:
    """Send ``frames`` copies of FRAME_64 in batches; the rate at which ``drop`` (the peer) saw them."""
    b = FrameBatch.allocate(batch)
    b.fill([FRAME_64] * batch)
    port.send_batch(b)  # compile before the clock starts
    before = drop.info().run_cnt
    gave_back = 0
    start = time.perf_counter()
    for _ in range(frames // batch):
        gave_back += batch - port.send_batch(b)
    seconds = time.perf_counter() - start
    return Rate(drop.info().run_cnt - before, seconds, gave_back)


def main() -> None:
    rx = port_rx_mpps()
    tx = port_tx_mpps()
    print(f"port rx: {rx.mpps:.2f} Mpps ({rx.frames} frames in {rx.seconds:.3f} s, ring drops {rx.drops})")
    print(f"port tx: {tx.mpps:.2f} Mpps ({tx.frames} frames in {tx.seconds:.3f} s, given back {tx.drops})")


if __name__ == "__main__":
    main()
