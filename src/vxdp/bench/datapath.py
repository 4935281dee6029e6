"""``vxdp bench datapath``: Mpps each way with 64-byte frames and TCP Gbps, each beside its DPDK anchor.

One topology, built and torn down here (NetLab, 198.18.0.0/15 only)::

    traffic netns                host netns                                   guest netns
    vxt0 198.18.10.1 ── veth ── vxp0 = backend's port ── vhost-user ── driver ── tap vxg0 198.18.10.2
    vxt1 198.18.11.1 ─────────────────── veth (no virtio: the kernel's TCP figure) ── vxd1 198.18.11.2

Each direction is measured four times, swapping our halves for DPDK testpmd's ("the same
paths with testpmd in place of our backend and of our driver"):

- ``ours``: our backend + our driver;
- ``pmd_driver``: our backend, testpmd virtio_user as the driver (measures our backend);
- ``pmd_backend``: testpmd net_vhost as the backend, our driver (measures our driver);
- ``pmd_both``: testpmd to testpmd, no port: the DPDK ceiling on this machine.

port → guest: frames come from the kernel's live-frames generator (XDP_TX out of vxt0, see
`vxdp.bpf.kernel.live_frames`) into the port; the driver counts and drops them
(``guest.bench_discard``: the tap would be measured otherwise), testpmd runs ``rxonly``; with
testpmd as the backend the source is its ``txonly``. The figure is frames counted at the
receiver during the source's run divided by its duration.

guest → port: our driver posts prebuilt frames in a tight loop (``guest.bench_tx``; both
methods are `vxdp.bench.guest_hooks`, which ``vxdp guest run`` serves), testpmd runs
``txonly``; at the port's peer an XDP program drops them and the kernel's run count
(BPF_ENABLE_STATS) counts them; with testpmd as the backend its ``rxonly`` counts. The peer's
NAPI runs threaded on CPU 1 (`PEER_NAPI_CPU`), so the backend's CPU pays for sending only.

TCP: iperf3 from the traffic netns to the guest netns and back (``-R``), through our halves,
and through the plain veth (no virtio) as the anchor.

Every loop is bounded in count and time; every process is stopped whatever happens (the
peers are context managers and PDEATHSIG'd).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vxdp.bench import port as port_bench
from vxdp.bpf.isa import XdpAction, verdict_program
from vxdp.bpf.kernel.live_frames import send_live_frames_in
from vxdp.bpf.kernel.prog import KernelProgram, enable_stats
from vxdp.bpf.kernel.xdp import xdp_attached
from vxdp.testing.netns import NetLab

from . import report, tools
from .env import environment
from .measure import Sample, profiled, settled
from .peers import Backend, Guest, testpmd_vhost, testpmd_virtio_user

FRAME_64 = port_bench.FRAME_64  # broadcast, ethertype 0x88b5 (local experimental): nobody answers it
TRAFFIC_IP, GUEST_IP = "198.18.10.1", "198.18.10.2"
DIRECT_TRAFFIC_IP, DIRECT_GUEST_IP = "198.18.11.1", "198.18.11.2"
GEN_MPPS = 2.0  # the generator's count is sized for this rate; it runs as fast as the kernel lets it
TX_MPPS = 3.0  # bench_tx's count is sized for this rate; its time bound stops it first
CPU_A, CPU_B = "0@0,1@0", "0@1,1@1"  # testpmd lcores (main, forwarding) on host CPU 0 / CPU 1
# guest → port: the counting peer's receive work (its XDP program, a copy of every skb) runs in a
# NAPI thread on the driver's CPU, not in softirq inside the backend's sendmmsg on CPU 0: a real
# wire's receiver is another machine. With the kernel's default the same path measured 0.49-0.57
# Mpps (port alone 0.66), threaded 0.72-0.97 (port alone 1.08-1.12): docs/benchmarks.md.
PEER_NAPI_CPU = 1
PLACEMENT = ("one CPU per process: our backend on CPU 0, our driver on CPU 1; with one testpmd, it polls "
             "on CPU 1 and ours runs on CPU 0; testpmd↔testpmd: one on each; the generator unpinned "
             "(pinning it to either CPU changed nothing); guest → port: the counting peer's NAPI "
             "threaded on CPU 1, the port-alone sender on CPU 0")


class DatapathBenchError(Exception):
    """The benchmark could not run (a peer failed, a tool is missing)."""


@dataclass(frozen=True)
class Plan:
    seconds: float  # per Mpps measurement
    tcp_seconds: int  # per iperf3 run
    port_frames: int  # frames for the port-alone figures (vxdp.bench.port)
    profile_dir: str | None = None  # py-spy the daemons during our own runs


def plan(*, quick: bool, profile_dir: str | None = None) -> Plan:
    if quick:
        return Plan(seconds=0.5, tcp_seconds=1, port_frames=200_000, profile_dir=profile_dir)
    return Plan(seconds=4.0, tcp_seconds=4, port_frames=2_000_000, profile_dir=profile_dir)


@dataclass
class Lab:
    traffic: str
    hostns: str
    guest: str
    run_dir: Path
    t_index: int  # vxt0 in the traffic netns: the generator's ingress device
    gen: KernelProgram
    npass: KernelProgram
    drop: KernelProgram
    tag: str
    profiles: dict[str, str] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def sock(self) -> str:
        return str(self.run_dir / "vh.sock")

    def prefix(self, what: str) -> str:
        return f"vxbd{self.tag}{what}"

    def backend(self, cpu: int = 0) -> Backend:
        return Backend(self.sock, "vxp0", self.hostns, self.run_dir, cpu=cpu)

    def guest_daemon(self, *, cpu: int = 1, discard: bool = False) -> Guest:
        g = Guest(self.sock, self.guest, "vxg0", self.run_dir, addr=f"{GUEST_IP}/24", cpu=cpu)
        try:
            g.wait_connected()
            if discard:
                g.call("guest.bench_discard", on=True)
        except BaseException:
            g.stop()
            raise
        return g


@contextlib.contextmanager
def build_lab() -> Iterator[Lab]:
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(NetLab(prefix="vxbd"))
        # IPv6 off: only the benchmark's frames on the links
        traffic, hostns, guest = lab.netns(ipv6=False), lab.netns(ipv6=False), lab.netns(ipv6=False)
        pair = lab.veth(traffic, hostns, "vxt0", "vxp0", addr_a=f"{TRAFFIC_IP}/24")
        # vxt0 keeps the veth defaults (checksum offload, TSO/GSO on), as a user's would: the port
        # completes partial checksums and cuts TCP super-frames to MTU size (vxdp.netdev.gso).
        # GRO stays off at the port's end so the 64-byte Mpps rows count frames, not merges.
        subprocess.run(["ip", "netns", "exec", hostns, "ethtool", "-K", "vxp0", "gro", "off"], check=True,
                       capture_output=True)
        lab.veth(traffic, guest, "vxt1", "vxd1", addr_a=f"{DIRECT_TRAFFIC_IP}/24", addr_b=f"{DIRECT_GUEST_IP}/24")
        run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vxdp-bench-")))
        gen = stack.enter_context(KernelProgram.load(verdict_program(XdpAction.TX), name="bench_gen"))
        npass = stack.enter_context(KernelProgram.load(verdict_program(XdpAction.PASS), name="bench_pass"))
        drop = stack.enter_context(KernelProgram.load(verdict_program(XdpAction.DROP), name="bench_drop"))
        yield Lab(traffic, hostns, guest, run_dir, pair.a_index, gen, npass, drop, tag=str(os.getpid()))


# ---------------------------------------------------------------------------- sources and counters
def _generate(lab: Lab, count: int) -> tuple[int, float]:
    start = time.perf_counter()
    send_live_frames_in(lab.traffic, lab.gen, FRAME_64, ifindex=lab.t_index, count=count, batch_size=64)
    return count, time.perf_counter() - start


def _generated(lab: Lab, p: Plan, counter: Callable[[], int]) -> Sample:
    """Live frames into the port for about ``p.seconds``; what ``counter`` saw meanwhile."""
    start = counter()
    _generate(lab, 20_000)  # warm up
    settled(counter, start)
    before = counter()
    sent, seconds = _generate(lab, int(GEN_MPPS * 1e6 * p.seconds))
    return Sample(counter() - before, seconds, sent)


def _interval(p: Plan, counter: Callable[[], int]) -> Sample:
    """A source that is already running (testpmd txonly): ``counter`` over ``p.seconds``."""
    deadline = time.monotonic() + 60.0  # past the start-up: frames flowing (see `settled`)
    first = counter()
    while counter() == first and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(min(0.5, p.seconds))
    before, start = counter(), time.perf_counter()
    time.sleep(p.seconds)
    return Sample(counter() - before, time.perf_counter() - start)


def _bench_tx(p: Plan, guest: Guest, counter: Callable[[], int]) -> Sample:
    """Our driver posting 64-byte frames as fast as the ring goes; ``counter`` at the far end."""
    guest.call("guest.bench_tx", frame=FRAME_64.hex(), count=20_000, seconds=5.0, timeout=30.0)  # warm up
    time.sleep(0.2)
    before = counter()
    r = guest.call("guest.bench_tx", frame=FRAME_64.hex(), count=int(TX_MPPS * 1e6 * p.seconds),
                   seconds=p.seconds, timeout=p.seconds + 30.0)
    time.sleep(0.05)  # the last batch in flight
    return Sample(counter() - before, r["seconds"], r["frames"])


def _pmd_rx(pmd) -> Callable[[], int]:
    return lambda: pmd.port_stats()[0].rx_packets


@contextlib.contextmanager
def _cpu_use(lab: Lab, name: str, daemons: dict[str, Any]) -> Iterator[None]:
    """Each daemon's share of one CPU (user, system) while the body runs: busy near 1.0 = CPU-bound."""
    before = {who: d.cpu_seconds() for who, d in daemons.items()}
    start = time.perf_counter()
    yield
    wall = time.perf_counter() - start
    for who, d in daemons.items():
        (u0, s0), (u1, s1) = before[who], d.cpu_seconds()
        lab.cpu[f"{name}-{who}"] = {"user": round((u1 - u0) / wall, 3), "system": round((s1 - s0) / wall, 3)}


def _profiled(lab: Lab, p: Plan, name: str, daemons: dict[str, int]) -> contextlib.AbstractContextManager:
    """py-spy record each daemon (by pid) while the body runs, when asked and available."""
    return profiled(p.profile_dir, name, daemons, p.seconds, lab.profiles)


# ---------------------------------------------------------------------------- port -> guest
def rx_runs(lab: Lab, p: Plan) -> dict[str, Sample]:
    out: dict[str, Sample] = {}
    with xdp_attached("vxp0", lab.npass.fd, netns=lab.hostns):  # a PASS program gives vxp0 NAPI: frames are kept
        with lab.backend() as b, lab.guest_daemon(discard=True) as g, \
                _profiled(lab, p, "rx", {"backend": b.pid, "guest": g.pid}), \
                _cpu_use(lab, "rx", {"backend": b, "guest": g}):
            out["ours"] = _generated(lab, p, g.rx_frames)
            lab.cpu["rx-port"] = {"ring_drops": b.show()["port"]["drops"]}
        with lab.backend(), testpmd_virtio_user(lab.sock, "rxonly", lab.prefix("r1"), CPU_B) as pmd:
            out["pmd_driver"] = _generated(lab, p, _pmd_rx(pmd))
    with testpmd_vhost(lab.sock, "txonly", lab.prefix("r2"), CPU_B), lab.guest_daemon(cpu=0, discard=True) as g:
        out["pmd_backend"] = _interval(p, g.rx_frames)
    with testpmd_vhost(lab.sock, "txonly", lab.prefix("r3"), CPU_A), \
            testpmd_virtio_user(lab.sock, "rxonly", lab.prefix("r4"), CPU_B) as pmd:
        out["pmd_both"] = _interval(p, _pmd_rx(pmd))
    return out


# ---------------------------------------------------------------------------- guest -> port
def tx_runs(lab: Lab, p: Plan) -> dict[str, Sample]:
    out: dict[str, Sample] = {}
    with enable_stats(), xdp_attached("vxt0", lab.drop.fd, netns=lab.traffic), \
            port_bench.threaded_napi(lab.traffic, "vxt0", PEER_NAPI_CPU):
        def at_peer() -> int:
            return lab.drop.info().run_cnt
        with lab.backend() as b, lab.guest_daemon() as g, \
                _profiled(lab, p, "tx", {"backend": b.pid, "guest": g.pid}), _cpu_use(lab, "tx", {"backend": b, "guest": g}):
            out["ours"] = _bench_tx(p, g, at_peer)
        with lab.backend(), testpmd_virtio_user(lab.sock, "txonly", lab.prefix("t1"), CPU_B):
            out["pmd_driver"] = _interval(p, at_peer)
    with testpmd_vhost(lab.sock, "rxonly", lab.prefix("t2"), CPU_B) as pmd, lab.guest_daemon(cpu=0) as g:
        out["pmd_backend"] = _bench_tx(p, g, _pmd_rx(pmd))
    with testpmd_vhost(lab.sock, "rxonly", lab.prefix("t3"), CPU_A) as pmd, \
            testpmd_virtio_user(lab.sock, "txonly", lab.prefix("t4"), CPU_B):
        out["pmd_both"] = _interval(p, _pmd_rx(pmd))
    return out


# ---------------------------------------------------------------------------- TCP
def _iperf3(lab: Lab, server_ip: str, seconds: int, reverse: bool) -> float:
    """Gbps received in one iperf3 TCP run: client in the traffic netns, server in the guest's."""
    try:
        return tools.iperf3(lab.traffic, lab.guest, server_ip, seconds, reverse=reverse).bits_per_second / 1e9
    except tools.ToolError as e:
        raise DatapathBenchError(str(e)) from None


def tcp_runs(lab: Lab, p: Plan) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with lab.backend(), lab.guest_daemon():
        out["ours"] = {"to_guest": _iperf3(lab, GUEST_IP, p.tcp_seconds, False),
                       "from_guest": _iperf3(lab, GUEST_IP, p.tcp_seconds, True)}
    out["veth"] = {"to_guest": _iperf3(lab, DIRECT_GUEST_IP, p.tcp_seconds, False),
                   "from_guest": _iperf3(lab, DIRECT_GUEST_IP, p.tcp_seconds, True)}
    return out


# ---------------------------------------------------------------------------- the whole run
def _row(path: str, unit: str, s: dict[str, Sample], notes: str) -> dict[str, Any]:
    return {"path": path, "unit": unit, "ours": round(s["ours"].mpps, 3),
            "pmd_driver": round(s["pmd_driver"].mpps, 3), "pmd_backend": round(s["pmd_backend"].mpps, 3),
            "pmd_both": round(s["pmd_both"].mpps, 3), "notes": notes}


def run(p: Plan) -> dict[str, Any]:
    with build_lab() as lab:
        rx = rx_runs(lab, p)
        tx = tx_runs(lab, p)
        tcp = tcp_runs(lab, p)
        profiles, cpu = dict(lab.profiles), dict(lab.cpu)
    port_rx = port_bench.port_rx_mpps(frames=p.port_frames)
    port_tx = port_bench.port_tx_mpps(frames=p.port_frames, peer_napi_cpu=PEER_NAPI_CPU, sender_cpu=0)
    offered = rx["ours"].to_json().get("offered_mpps")
    rows = [
        _row("port → guest, 64 B", "Mpps", rx,
             f"generator offered {offered} Mpps; AF_PACKET port alone reads {port_rx.mpps:.2f}"),
        _row("guest → port, 64 B", "Mpps", tx,
             f"AF_PACKET port alone sends {port_tx.mpps:.2f} (the two left columns go through it)"),
    ]
    for key, label in (("to_guest", "traffic → guest"), ("from_guest", "guest → traffic")):
        rows.append({"path": f"TCP {label}", "unit": "Gbps", "ours": round(tcp["ours"][key], 3),
                     "veth": round(tcp["veth"][key], 3),
                     "notes": f"iperf3 -t {p.tcp_seconds}; anchor: the same netns pair over a plain veth"})
    return {
        "benchmark": "datapath",
        "environment": environment() | {"placement": PLACEMENT},
        "plan": {"seconds": p.seconds, "tcp_seconds": p.tcp_seconds, "port_frames": p.port_frames},
        "results": rows,
        "samples": {"rx": {k: v.to_json() for k, v in rx.items()}, "tx": {k: v.to_json() for k, v in tx.items()},
                    "tcp_gbps": tcp,
                    "port_alone": {"rx": {"mpps": round(port_rx.mpps, 4), "drops": port_rx.drops},
                                   "tx": {"mpps": round(port_tx.mpps, 4), "given_back": port_tx.drops}}},
        "cpu_share": cpu,  # of one CPU, per daemon, over our own runs (warm-up included)
        "profiles": profiles,
    }


COLUMNS = [
    ("path", "path"),
    ("unit", "unit"),
    ("ours", "ours (our backend + our driver)"),
    ("pmd_driver", "our backend, testpmd driver"),
    ("pmd_backend", "testpmd backend, our driver"),
    ("pmd_both", "testpmd ↔ testpmd"),
    ("veth", "plain veth"),
    ("notes", "notes"),
]


def to_markdown(doc: dict[str, Any], command: str) -> str:
    env = doc["environment"]
    return (
        "# Datapath: Mpps with 64-byte frames and TCP Gbps, with their DPDK anchors\n\n"
        f"`{command}` on {env['date']}: kernel {env['kernel']}, {env['cpu']} ({env['cpus']} CPUs), "
        f"Python {env['python']}; {env['placement']}.\n\n"
        "Columns: the same path with testpmd (DPDK 22.11, virtio_user / net_vhost) in place of our "
        "driver, of our backend, of both. port → guest: live-frames generator into the port, receiver "
        "counts and drops. guest → port: our driver's tx loop (`guest.bench_tx`) or testpmd txonly; "
        "frames counted by an XDP drop program at the port's peer (its NAPI threaded on CPU 1), or by "
        "testpmd rxonly.\n\n"
        + report.markdown_table(COLUMNS, doc["results"])
    )

