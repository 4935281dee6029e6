"""The three-namespace topology of the offload end-to-end tests, and the CLI as a user runs it.

traffic netns (``vxt0``, TRAFFIC_IP) ↔ veth ↔ host netns (``vxp0``, the backend's
port, where offloaded programs attach) ↔ ``vxdp host serve`` ↔ vhost-user ↔
``vxdp guest run`` ↔ tap ``vxg0`` (GUEST_IP) in the guest netns. IPv6 is off in
the traffic and guest namespaces so that only the tests' frames are on the wire
and counts are exact. Every daemon and every CLI call shares one ``VXDP_RUN_DIR``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testpaths import ROOT

sys.path.insert(0, str(ROOT / "tests" / "guest"))  # the daemons' subprocess wrappers live there
from guest_helpers import GuestProc, HostProc, ping, poll

from vxdp.testing.netns import NetLab

# every offload end-to-end test runs on the host kernel and on our fastest engine outside it
OFFLOAD_ENGINES = ("kernel", "jit")
TRAFFIC_IP = "198.18.21.1"
GUEST_IP = "198.18.21.2"
HOST_MAC = "52:54:00:0a:0b:0d"
DEVICE = "od0"
GUEST = "og0"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@dataclass
class OffloadTopo:
    lab: NetLab
    traffic: str  # netns with the far veth end ``vxt0`` and TRAFFIC_IP
    hostns: str  # netns holding the backend's port ``vxp0``
    guest: str  # the guest netns (the driver's tap ``vxg0``)
    sock: str
    run_dir: Path
    engine: str = "kernel"  # what the backend runs offloaded programs on (``host serve --engine``)

    def host(self, *extra: str) -> HostProc:
        engine = ("--engine", self.engine) if self.engine != "kernel" else ()
        return HostProc(self.sock, "vxp0", self.hostns, self.run_dir, mac=HOST_MAC, name=DEVICE,
                        extra=(*engine, *extra))

    def guest_proc(self, **kw) -> GuestProc:
        return GuestProc(self.sock, self.guest, "vxg0", self.run_dir, addr=f"{GUEST_IP}/24", name=GUEST, **kw)

    def vxdp(self, *args: str, timeout: float = 60.0) -> CliResult:
        """``vxdp ARGS`` with this topology's run dir; never raises on a non-zero exit."""
        p = subprocess.run([sys.executable, "-m", "vxdp.cli.main", *args], check=False, capture_output=True, text=True,
                           env=dict(os.environ, VXDP_RUN_DIR=str(self.run_dir)), timeout=timeout)
        return CliResult(p.returncode, p.stdout, p.stderr)

    def ok(self, *args: str):
        """``vxdp ARGS -j`` that must succeed; its JSON."""
        r = self.vxdp(*args, "-j")
        assert r.code == 0, f"vxdp {' '.join(args)}: exit {r.code}: {r.err or r.out}"
        return r.json()

    def sh(self, ns: str, *argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def link_stat(self, ns: str, ifname: str, stat: str) -> int:
        return int(self.sh(ns, "cat", f"/sys/class/net/{ifname}/statistics/{stat}"))

    def xdp_on_port(self) -> bool:
        """Whether a program runs on the backend's port ``vxp0``: on the kernel engine as iproute2 reports
        it (``ip -j link``); on an engine of the daemon the kernel's hook must run nothing (checked) and
        the daemon's record says (a daemon that is gone runs nothing)."""
        (link,) = json.loads(self.sh(self.hostns, "ip", "-j", "link", "show", "vxp0"))
        if self.engine == "kernel":
            return "xdp" in link
        assert "xdp" not in link, f"engine {self.engine}: the kernel runs XDP on vxp0: {link['xdp']}"
        return self.attached_in_daemon() is not None

    def attached_in_daemon(self) -> int | None:
        """The engine id of the program the backend runs on the port's frames, per ``host show``
        (``None``: none, or no backend)."""
        r = self.vxdp("host", "show", "--name", DEVICE, "-j")
        if r.code:
            return None
        (dev,) = r.json()
        return next((p["kernel_id"] for p in dev["offload"]["device"]["programs"] if p["attached"]), None)

    def mac(self, ns: str, ifname: str) -> str:
        return self.sh(ns, "cat", f"/sys/class/net/{ifname}/address").strip()


def offload_topology(tmp_path: Path, prefix: str = "vxo", engine: str = "kernel"):
    """A generator for a pytest fixture: yields an `OffloadTopo` whose backend runs offloaded programs
    on ``engine``, removes every namespace after."""
    with NetLab(prefix) as lab:
        # IPv6 off: only the tests' frames on the wire
        traffic, hostns, guest = lab.netns(ipv6=False), lab.netns(ipv6=False), lab.netns(ipv6=False)
        lab.veth(traffic, hostns, "vxt0", "vxp0", addr_a=f"{TRAFFIC_IP}/24")
        yield OffloadTopo(lab, traffic, hostns, guest, str(tmp_path / "vh.sock"), tmp_path, engine)


__all__ = [
    "DEVICE",
    "GUEST",
    "GUEST_IP",
    "HOST_MAC",
    "OFFLOAD_ENGINES",
    "TRAFFIC_IP",
    "CliResult",
    "GuestProc",
    "HostProc",
    "OffloadTopo",
    "offload_topology",
    "ping",
    "poll",
]
