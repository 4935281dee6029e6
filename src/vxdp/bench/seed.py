"""``vxdp bench seed``: the RFC's tables, on our stack, beside the physical limit, in one run.

The 2019 "virtio_net XDP offload" RFC measured xdp1 (count per protocol, DROP) and xdp2
(count, swap MACs, TX) in Mpps, non-offload (the guest's XDP) against offload (the host runs
the guest's program), in two cases, and checked with netperf that offload support alone
costs nothing. This module rebuilds both tables here, one topology for both cases (NetLab,
198.18.0.0/15 only, gone whatever happens)::

    traffic netns              host netns                                                    guest netns
    vxt0 ───────── veth ────── vxp0 (Case 1 port) ─┐
    vxt1 ─ veth ─ vxb0 ─ br0 ─ vxq0 ─ veth ─ vxp1 (Case 2 port) ┴ vxdp host serve ═ vxdp guest run ─ tap vxg0

Case 1 sends the frames straight at the port; Case 2 through a Linux bridge on the host.
Traffic: XDP live frames (64-byte UDP) out of vxt0 or vxt1, for a fixed time per run after a
warm-up. Columns (`COLUMNS`): the guest's own XDP after the frame crossed the virtio ring, in
our driver on its JIT (``non-offload/driver-jit``) or in the guest namespace's kernel as native
XDP on the tap (``non-offload/guest-kernel``: tun runs XDP on the frames the driver writes);
offloaded on each host engine (``offload/kernel``: native XDP on the port; ``offload/jit``: in
the backend); and the same object attached to the port by ``ip link`` with no vxdp running
(``limit``).

Every figure is frames handled, counted where they end: xdp1's own count of UDP frames (it
drops every one it counts), read through the view that owns the program (the guest's tools
over the device, the kernel's map); for xdp2, frames back in the traffic netns, counted by
xdp1 attached to the traffic end. The generator's own rate is kept as ``offered_mpps``.

Regression (`regression`): iperf3 UDP 18 B and 1472 B and TCP streams and sockperf UDP and
TCP ping-pong between the traffic and the guest netns, through our backend and driver, with
offload support not offered (``vxdp host serve --no-offload``) and offered, runs alternated.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from vxdp.bpf.elf import load_object as parse_object
from vxdp.bpf.isa import XdpAction, verdict_program
from vxdp.bpf.kernel.live_frames import send_live_frames
from vxdp.bpf.kernel.maps import KernelMap
from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.bpf.kernel.objects import map_get_fd_by_id, prog_get_fd_by_id
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.kernel.xdp import xdp_attached
from vxdp.engine.kernel import KernelEngine
from vxdp.engine.loader import LoadedObject, load_object
from vxdp.testing.netns import NetLab

from . import tools
from .env import environment, versions
from .measure import Progress, Sample, profiled, settled
from .peers import Backend, Guest

CASES = (1, 2)
PROGRAMS = ("xdp1", "xdp2")
DRIVER_JIT, GUEST_KERNEL = "non-offload/driver-jit", "non-offload/guest-kernel"
OFFLOAD_KERNEL, OFFLOAD_JIT, LIMIT = "offload/kernel", "offload/jit", "limit"
COLUMNS = (DRIVER_JIT, GUEST_KERNEL, OFFLOAD_KERNEL, OFFLOAD_JIT, LIMIT)
# the RFC's figures (Mpps, non-offload -> offload), its cover letter's tables
RFC_MPPS = {(1, "xdp1"): (2.46, 12.90), (1, "xdp2"): (1.50, 7.26), (2, "xdp1"): (1.03, 1.01), (2, "xdp2"): (1.10, 0.99)}
UDP_PROTO = 17
RXCNT_KEY = UDP_PROTO.to_bytes(4, "little").hex()

TRAFFIC_IP, CASE2_TRAFFIC_IP, GUEST_IP = "198.18.30.1", "198.18.31.1", "198.18.30.2"
GUEST_MAC = "52:54:00:1e:00:02"  # the device's MAC (the frames' destination; the bridge's static entry)
FRAME_LEN = 64
FIRST_CHUNK, MAX_CHUNK = 131_072, 64 << 20  # frames per live-frames call (see `SeedLab.generate`)
BACKEND_CPU, DRIVER_CPU = 0, 1
PLACEMENT = (f"our backend on CPU {BACKEND_CPU}, our driver on CPU {DRIVER_CPU}; the generator unpinned (the "
             "veth receive work it causes runs on its CPU, as the kernel does for live frames)")


class SeedBenchError(Exception):
    """The benchmark could not run (a tool missing, a program refused, a daemon failed)."""


@dataclass(frozen=True)
class Wiring:
    """Where one case's frames enter and where its port is."""

    case: int
    traffic_if: str  # the generator's device in the traffic netns
    port: str  # the backend's port in the host netns
    napi: tuple[str, ...]  # host-side veth ends that always get an XDP_PASS program (NAPI: frames kept)
    port_napi: bool  # the port receives XDP frames itself: it needs NAPI when no program of the column is there


WIRING = {1: Wiring(1, "vxt0", "vxp0", (), True), 2: Wiring(2, "vxt1", "vxp1", ("vxb0", "vxq0"), False)}


@dataclass(frozen=True)
class Plan:
    samples_dir: str
    runs: int = 3
    seconds: float = 3.0  # per run
    warm_seconds: float = 1.0
    regression_seconds: int = 4
    cases: tuple[int, ...] = CASES
    programs: tuple[str, ...] = PROGRAMS
    regression: bool = True
    quick: bool = False
    profile_dir: str | None = None  # py-spy the daemons and perf the machine during each point's first run


def plan(samples_dir: str, *, quick: bool, runs: int | None = None, seconds: float | None = None,
         cases: tuple[int, ...] = CASES, programs: tuple[str, ...] = PROGRAMS, regression: bool = True,
         profile_dir: str | None = None) -> Plan:
    base = Plan(samples_dir, 1, 0.3, 0.2, 1, quick=True) if quick else Plan(samples_dir)
    if runs is not None and runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    if seconds is not None and not 0 < seconds <= 60:
        raise ValueError(f"seconds must be in (0, 60], not {seconds}")
    for c in cases:
        if c not in CASES:
            raise ValueError(f"case {c}: one of {', '.join(map(str, CASES))}")
    for prog in programs:
        if prog not in PROGRAMS:
            raise ValueError(f"program {prog!r}: one of {', '.join(PROGRAMS)}")
    return Plan(samples_dir, runs or base.runs, seconds or base.seconds, base.warm_seconds,
                base.regression_seconds, tuple(cases), tuple(programs), regression, quick, profile_dir)


def _frame(src_mac: str, src_ip: str) -> bytes:
    pkt = Ether(src=src_mac, dst=GUEST_MAC) / IP(src=src_ip, dst=GUEST_IP) / UDP(sport=1024, dport=9)
    raw = bytes(pkt)
    return raw + bytes(FRAME_LEN - len(raw))  # padding after the datagram, as a 64-byte frame on a wire


def _sh(ns: str, *argv: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], check=False, capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise SeedBenchError(f"{' '.join(argv)} in {ns}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


@dataclass
class SeedLab:
    traffic: str
    hostns: str
    guest: str
    run_dir: Path
    plan: Plan
    progress: Progress
    gen: KernelProgram
    npass: KernelProgram
    ifindex: dict[int, int]  # case -> the generator's device
    frames: dict[int, bytes]  # case -> the frame it sends
    pids: dict[str, int] = field(default_factory=dict)  # the daemons running now, for the profilers
    profiles: dict[str, str] = field(default_factory=dict)  # what each profile was written to

    @property
    def sock(self) -> str:
        return str(self.run_dir / "vh.sock")

    def path(self, program: str) -> str:
        return f"{self.plan.samples_dir}/{program}.o"

    # -- traffic ----------------------------------------------------------------------------
    def generate(self, case: int, seconds: float) -> int:
        """Live frames out of the case's traffic device until ``seconds`` passed; how many were sent.

        Each live-frames call costs the kernel ~25 ms of set-up and tear-down (its page pool) on top
        of the frames, idle time for the receiver: so the first call is `FIRST_CHUNK` frames, and the
        next ones are sized by the rate seen so far to fill what is left of the time."""
        frame, ifindex = self.frames[case], self.ifindex[case]

        def body() -> int:
            sent, start = 0, time.monotonic()
            deadline, count = start + seconds, FIRST_CHUNK
            while True:
                send_live_frames(self.gen, frame, ifindex=ifindex, count=count, batch_size=64)
                sent += count
                now = time.monotonic()
                if now >= deadline:
                    return sent
                count = min(MAX_CHUNK, max(FIRST_CHUNK, int(sent / (now - start) * (deadline - now))))
        return run_in_netns(self.traffic, body)

    def point(self, case: int, program: str, column: str, counter: Callable[[], int]) -> dict[str, Any]:
        """Warm-up, then ``plan.runs`` runs of ``plan.seconds``: frames ``counter`` saw per second."""
        p = self.plan
        self.progress.step(f"case {case} {program} {column}: warm-up", _warm_cost(p))
        start = counter()
        self.generate(case, p.warm_seconds)
        if settled(counter, start) <= start:
            raise SeedBenchError(f"case {case} {program} {column}: no frame counted after the warm-up")
        runs: list[Sample] = []
        for i in range(p.runs):
            self.progress.step(f"case {case} {program} {column}: run {i + 1}/{p.runs}", _run_cost(p))
            name = f"case{case}-{program}-{column.replace('/', '-')}"
            with profiled(p.profile_dir if i == 0 else None, name, self.pids, p.seconds, self.profiles, kernel=True):
                before, t0 = counter(), time.perf_counter()
                offered = self.generate(case, p.seconds)
                after = counter()  # what drained meanwhile counts, and so does the time it took to read
            runs.append(Sample(after - before, time.perf_counter() - t0, offered))
            settled(counter, None, timeout=10.0)
        mpps = [r.mpps for r in runs]
        return {"case": case, "program": program, "column": column, "mpps": round(statistics.median(mpps), 4),
                "runs": [round(m, 4) for m in mpps],
                "spread_pct": _spread(mpps),
                "offered_mpps": round(statistics.median((r.offered_frames or 0) / r.seconds / 1e6 for r in runs), 4)}

    # -- what runs where ----------------------------------------------------------------------
    @contextlib.contextmanager
    def napi(self, ifnames: tuple[str, ...]) -> Iterator[None]:
        """An XDP_PASS program on each of ``ifnames`` (host netns): a veth end drops XDP frames without NAPI."""
        with contextlib.ExitStack() as stack:
            for ifname in ifnames:
                stack.enter_context(xdp_attached(ifname, self.npass.fd, netns=self.hostns))
            yield

    @contextlib.contextmanager
    def kernel_xdp(self, program: str, ns: str, ifname: str) -> Iterator[LoadedObject]:
        """``program`` loaded here on the kernel engine and attached natively to ``ifname`` in ``ns``."""
        with load_object(KernelEngine(name_prefix="seed_"), parse_object(self.path(program))) as loaded:
            engine = loaded.engine
            assert isinstance(engine, KernelEngine)
            with xdp_attached(ifname, engine.program(loaded.program_handle()).fd, netns=ns):
                yield loaded

    @contextlib.contextmanager
    def bounced(self, case: int) -> Iterator[Callable[[], int]]:
        """xdp1 on the case's traffic device: counts (and drops) the frames TX sent back."""
        with self.kernel_xdp("xdp1", self.traffic, WIRING[case].traffic_if) as counter:
            yield _map_counter(counter.maps["rxcnt"])

    @contextlib.contextmanager
    def daemons(self, case: int, *extra: str) -> Iterator[tuple[Backend, Guest]]:
        with Backend(self.sock, WIRING[case].port, self.hostns, self.run_dir, mac=GUEST_MAC, cpu=BACKEND_CPU,
                     extra=extra) as b, \
                Guest(self.sock, self.guest, "vxg0", self.run_dir, addr=f"{GUEST_IP}/24", cpu=DRIVER_CPU) as g:
            g.wait_connected()
            self.pids.update(backend=b.pid, driver=g.pid)
            try:
                yield b, g
            finally:
                self.pids.clear()

    @contextlib.contextmanager
    def guest_load(self, g: Guest, program: str, mode: str, **kw: str) -> Iterator[Callable[[], int]]:
        """``program`` loaded by the guest (``offload`` or ``native``); its rxcnt[UDP] read as the guest reads it."""
        try:
            g.call("prog.load", path=os.path.abspath(self.path(program)), mode=mode, timeout=120.0, **kw)
        except Exception as e:
            raise SeedBenchError(f"{program} {mode} in the guest: {e}") from e
        try:
            yield lambda: int.from_bytes(bytes.fromhex(
                g.call("map.lookup", map="rxcnt", key=RXCNT_KEY, mode=mode)["value"]), "little")
        finally:
            g.call("prog.detach", mode=mode)

    @contextlib.contextmanager
    def ip_link(self, program: str, ifname: str) -> Iterator[Callable[[], int]]:
        """``ip link set dev IFNAME xdpdrv obj PROGRAM.o``: no vxdp at all; its rxcnt found by the program's id."""
        _sh(self.hostns, "ip", "link", "set", "dev", ifname, "xdpdrv", "obj", os.path.abspath(self.path(program)),
            "sec", "xdp")
        try:
            (link,) = json.loads(_sh(self.hostns, "ip", "-j", "link", "show", "dev", ifname))
            with contextlib.ExitStack() as stack:
                prog = stack.enter_context(KernelProgram.from_fd(prog_get_fd_by_id(link["xdp"]["prog"]["id"])))
                maps = [stack.enter_context(KernelMap.from_fd(map_get_fd_by_id(i))) for i in prog.info().map_ids]
                rxcnt = next((m for m in maps if m.spec.name == "rxcnt"), None)
                if rxcnt is None:
                    raise SeedBenchError(f"{program} attached by ip link has no map rxcnt")
                yield _map_counter(rxcnt)
        finally:
            _sh(self.hostns, "ip", "link", "set", "dev", ifname, "xdpdrv", "off")


def _spread(values: list[float]) -> float | None:
    """(max - min) of the runs, in % of their median: how far one run may be from another."""
    median = statistics.median(values)
    return round((max(values) - min(values)) / median * 100, 1) if median else None


def _map_counter(m) -> Callable[[], int]:
    key = bytes.fromhex(RXCNT_KEY)
    return lambda: int.from_bytes(m.lookup(key) or bytes(8), "little")


@contextlib.contextmanager
def build_lab(p: Plan, progress: Progress) -> Iterator[SeedLab]:
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(NetLab(prefix="vxsd"))
        # IPv6 off: only the benchmark's frames on the links
        traffic, hostns, guest = lab.netns(ipv6=False), lab.netns(ipv6=False), lab.netns(ipv6=False)
        one = lab.veth(traffic, hostns, "vxt0", "vxp0", addr_a=f"{TRAFFIC_IP}/24")
        two = lab.veth(traffic, hostns, "vxt1", "vxb0", addr_a=f"{CASE2_TRAFFIC_IP}/24")
        lab.veth(hostns, hostns, "vxq0", "vxp1")
        lab.bridge(hostns, "br0", ("vxb0", "vxq0"))
        t1_mac = _sh(traffic, "cat", "/sys/class/net/vxt1/address").strip()
        for mac, dev in ((GUEST_MAC, "vxq0"), (t1_mac, "vxb0")):  # forwarding fixed, nothing flooded or learned
            _sh(hostns, "bridge", "fdb", "replace", mac, "dev", dev, "master", "static")
        for port in ("vxp0", "vxp1"):  # the Mpps rows count frames, not GRO merges
            _sh(hostns, "ethtool", "-K", port, "gro", "off")
        run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vxdp-seed-")))
        gen = stack.enter_context(KernelProgram.load(verdict_program(XdpAction.TX), name="seed_gen"))
        npass = stack.enter_context(KernelProgram.load(verdict_program(XdpAction.PASS), name="seed_pass"))
        t0_mac = _sh(traffic, "cat", "/sys/class/net/vxt0/address").strip()
        frames = {1: _frame(t0_mac, TRAFFIC_IP), 2: _frame(t1_mac, CASE2_TRAFFIC_IP)}
        yield SeedLab(traffic, hostns, guest, run_dir, p, progress, gen, npass, {1: one.a_index, 2: two.a_index},
                      frames)


# ---------------------------------------------------------------------------- the Mpps table
def _counted(lab: SeedLab, case: int, program: str, dropped: Callable[[], int]) -> contextlib.AbstractContextManager:
    """Where ``program``'s frames end: xdp1 drops what it counts; xdp2 sends them back to the traffic netns."""
    if program == "xdp1":
        return contextlib.nullcontext(dropped)
    return lab.bounced(case)


def mpps_rows(lab: SeedLab) -> list[dict[str, Any]]:
    p, rows = lab.plan, []

    def measure(case: int, program: str, column: str, view: contextlib.AbstractContextManager) -> None:
        with view as dropped, _counted(lab, case, program, dropped) as counter:
            rows.append(lab.point(case, program, column, counter))

    for case in p.cases:
        w = WIRING[case]
        with lab.napi(w.napi):
            with lab.napi((w.port,) if w.port_napi else ()), lab.daemons(case, "--engine", "jit") as (_, g):
                for program in p.programs:
                    measure(case, program, DRIVER_JIT, lab.guest_load(g, program, "native", engine="jit"))
                    measure(case, program, GUEST_KERNEL, _guest_kernel(lab, program))
                    measure(case, program, OFFLOAD_JIT, lab.guest_load(g, program, "offload"))
            with lab.daemons(case, "--engine", "kernel") as (_, g):
                for program in p.programs:
                    measure(case, program, OFFLOAD_KERNEL, lab.guest_load(g, program, "offload"))
            for program in p.programs:
                measure(case, program, LIMIT, lab.ip_link(program, w.port))
    order = {c: i for i, c in enumerate(COLUMNS)}
    return sorted(rows, key=lambda r: (r["case"], PROGRAMS.index(r["program"]), order[r["column"]]))


@contextlib.contextmanager
def _guest_kernel(lab: SeedLab, program: str) -> Iterator[Callable[[], int]]:
    with lab.kernel_xdp(program, lab.guest, "vxg0") as loaded:
        yield _map_counter(loaded.maps["rxcnt"])


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case and program: offload on each engine against the faster non-offload column and the limit."""
    out = []
    for case in CASES:
        for program in PROGRAMS:
            got = {r["column"]: r["mpps"] for r in rows if r["case"] == case and r["program"] == program}
            if not got:
                continue
            base = max((got[c] for c in (DRIVER_JIT, GUEST_KERNEL) if got.get(c)), default=None)
            row: dict[str, Any] = {"case": case, "program": program, "non_offload_best": base}
            for col, key in ((OFFLOAD_KERNEL, "kernel"), (OFFLOAD_JIT, "jit")):
                mine = got.get(col)
                row[f"offload_{key}_x"] = round(mine / base, 2) if mine and base else None
                row[f"offload_{key}_of_limit"] = round(mine / got[LIMIT], 3) if mine and got.get(LIMIT) else None
            rfc = RFC_MPPS[(case, program)]
            row["rfc_x"] = round(rfc[1] / rfc[0], 2)
            out.append(row)
    return out


# ---------------------------------------------------------------------------- the regression table
REGRESSION: tuple[tuple[str, str, Callable[[SeedLab, int], float]], ...] = (
    ("UDP_STREAM 18 B", "Mbps",
     lambda lab, s: tools.iperf3(lab.traffic, lab.guest, GUEST_IP, s, udp_len=18).bits_per_second / 1e6),
    ("UDP_STREAM 1472 B", "Mbps",
     lambda lab, s: tools.iperf3(lab.traffic, lab.guest, GUEST_IP, s, udp_len=1472).bits_per_second / 1e6),
    ("TCP_STREAM", "Gbps", lambda lab, s: tools.iperf3(lab.traffic, lab.guest, GUEST_IP, s).bits_per_second / 1e9),
    ("UDP_RR", "trans/s",
     lambda lab, s: tools.sockperf_ping_pong(lab.traffic, lab.guest, GUEST_IP, s, tcp=False).per_second),
    ("TCP_RR", "trans/s",
     lambda lab, s: tools.sockperf_ping_pong(lab.traffic, lab.guest, GUEST_IP, s, tcp=True).per_second),
)


def regression(lab: SeedLab) -> list[dict[str, Any]]:
    """Each test with offload support off and on, ``plan.runs`` times, the order swapped every run (drift)."""
    p = lab.plan
    got: dict[tuple[str, bool], list[float]] = {}
    for i in range(p.runs):
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            with lab.daemons(1, *(() if on else ("--no-offload",))):
                for test, _, run in REGRESSION:
                    lab.progress.step(f"regression {test}, offload {'on' if on else 'off'}: run {i + 1}/{p.runs}",
                                      _test_cost(p))
                    try:
                        got.setdefault((test, on), []).append(run(lab, p.regression_seconds))
                    except tools.ToolError as e:
                        raise SeedBenchError(f"regression {test}: {e}") from None
    rows = []
    for test, unit, _ in REGRESSION:
        off, on = statistics.median(got[(test, False)]), statistics.median(got[(test, True)])
        rows.append({"test": test, "unit": unit, "off": round(off, 3), "on": round(on, 3),
                     "delta_pct": round((on - off) / off * 100, 2) if off else None,
                     "off_spread_pct": _spread(got[(test, False)]), "on_spread_pct": _spread(got[(test, True)]),
                     "off_runs": [round(v, 3) for v in got[(test, False)]],
                     "on_runs": [round(v, 3) for v in got[(test, True)]]})
    return rows


# ---------------------------------------------------------------------------- the whole run
def _warm_cost(p: Plan) -> float:
    return p.warm_seconds + 1


def _run_cost(p: Plan) -> float:
    return p.seconds + 0.5


def _test_cost(p: Plan) -> float:
    return p.regression_seconds + 1.5


def estimate_seconds(p: Plan) -> float:
    """The sum of every step's cost, for the progress line (which scales it by what steps really took:
    daemon starts and loads come on top)."""
    mpps = len(p.cases) * len(p.programs) * len(COLUMNS) * (_warm_cost(p) + p.runs * _run_cost(p))
    return mpps + (p.runs * 2 * len(REGRESSION) * _test_cost(p) if p.regression else 0)


def run(p: Plan, progress: Progress | None = None) -> dict[str, Any]:
    progress = progress or Progress(estimate_seconds(p), name="seed")
    with build_lab(p, progress) as lab:
        rows = mpps_rows(lab)
        reg = regression(lab) if p.regression else []
        profiles = dict(lab.profiles)
    progress.done()
    return {
        "benchmark": "seed",
        "environment": environment() | {"placement": PLACEMENT, "engines": ["kernel", "jit"], "versions": versions()},
        "plan": {"runs": p.runs, "seconds": p.seconds, "warm_seconds": p.warm_seconds,
                 "regression_seconds": p.regression_seconds, "frame_bytes": FRAME_LEN, "quick": p.quick},
        "results": rows,
        "summary": summary(rows),
        "regression": reg,
        "profiles": profiles,
        "rfc": {"mpps": [{"case": c, "program": prog, "non_offload": a, "offload": b}
                         for (c, prog), (a, b) in RFC_MPPS.items()],
                "regression": "netperf UDP_STREAM 18 B and 1472 B, TCP_STREAM, UDP_RR, TCP_RR: within ±2%"},
    }
