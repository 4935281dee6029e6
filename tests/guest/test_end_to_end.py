"""End to end through both halves of vxdp: traffic netns ↔ veth ↔ ``vxdp host serve`` (backend)
↔ vhost-user ↔ ``vxdp guest run`` (driver) ↔ tap ↔ guest netns. Real programs (iperf3, TCP
sockets, ICMP) in the namespaces; both daemons as the CLI runs them, always stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from guest_helpers import GuestProc, HostProc, ping, poll, tcp_transfer

from vxdp.guest.driver import QUEUE_SIZE
from vxdp.testing.netns import NetLab

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

TRAFFIC_IP = "198.18.9.1"
GUEST_IP = "198.18.9.2"
HOST_MAC = "52:54:00:0a:0b:0c"


@dataclass
class Topo:
    traffic: str  # netns with the far veth end and TRAFFIC_IP
    hostns: str  # netns holding the backend's port (the near veth end)
    guest: str  # the guest netns (the driver's tap)
    sock: str
    run_dir: Path

    def host(self, **kw) -> HostProc:
        return HostProc(self.sock, "vxp0", self.hostns, self.run_dir, mac=HOST_MAC, **kw)

    def guest_proc(self, **kw) -> GuestProc:
        return GuestProc(self.sock, self.guest, "vxg0", self.run_dir, addr=f"{GUEST_IP}/24", **kw)


@pytest.fixture
def topo(tmp_path):
    with NetLab("vxe") as lab:
        # IPv6 off: only the tests' frames on the wire
        traffic, hostns, guest = lab.netns(ipv6=False), lab.netns(), lab.netns(ipv6=False)
        lab.veth(traffic, hostns, "vxt0", "vxp0", addr_a=f"{TRAFFIC_IP}/24")
        # vxt0 keeps the veth defaults, tx checksum offload and TSO/GSO on: its TCP/UDP frames reach
        # the backend's port CHECKSUM_PARTIAL, its TCP streams as 64 KiB super-frames, and the port
        # completes the checksums and cuts the super-frames (software GSO) for the guest.
        yield Topo(traffic, hostns, guest, str(tmp_path / "vh.sock"), tmp_path)


def _tap_mac(ns: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/vxg0/address"], check=True,
                         capture_output=True, text=True).stdout
    return out.strip()


def test_ping_both_ways_mtu_and_ctrl(topo):
    with topo.host() as host, topo.guest_proc() as g:
        doc = g.wait_connected()
        # the MAC came from the backend's config space (GET_CONFIG), and the tap carries it
        assert doc["mac"] == HOST_MAC and _tap_mac(topo.guest) == HOST_MAC
        assert doc["ctrl_vq"] and "NET_CTRL_VQ" in doc["features"]
        # no --queue-size: the driver's one default
        assert {r["name"]: r["num"] for r in doc["rings"] if r["name"] != "ctrl"} == {"rx": QUEUE_SIZE, "tx": QUEUE_SIZE}
        assert ping(topo.guest, TRAFFIC_IP, 20) == 20
        assert ping(topo.traffic, GUEST_IP, 20) == 20
        assert ping(topo.guest, TRAFFIC_IP, 5, size=1472) == 5  # 1500-byte IP packets, checked payload
        assert ping(topo.traffic, GUEST_IP, 5, size=1472) == 5
        # the control virtqueue is handed to our backend, which answers (QEMU would keep it)
        assert g.call("guest.promisc", on=True, wait=5.0) == {"ack": "OK"}
        assert g.call("guest.ctrl", cls=0, cmd=0, data="00", wait=5.0)["ack"] == "OK"
        assert host.proc.poll() is None


@pytest.mark.parametrize("direction", ["guest_to_traffic", "traffic_to_guest"])
def test_tcp_transfer_checked(topo, direction):
    data = os.urandom(16 << 20)
    want = (hashlib.sha256(data).hexdigest(), len(data))
    with topo.host() as host, topo.guest_proc() as g:
        g.wait_connected()
        if direction == "guest_to_traffic":
            got = tcp_transfer(topo.guest, topo.traffic, TRAFFIC_IP, data)
            port = host.show()["port"]  # the port merged the guest's segments for the traffic side's stack
            assert port["tx_gro_frames"] > 0 and port["tx_rejected"] == 0
        else:
            got = tcp_transfer(topo.traffic, topo.guest, GUEST_IP, data)
            port = host.show()["port"]
            assert port["gso_frames"] > 0 and port["gso_refused"] == 0 and port["oversize"] == 0
            tap = g.show()["tap_stats"]  # the driver merged the segments again for the guest's stack
            assert tap["gro_frames"] > 0 and tap["tx_rejected"] == 0
        assert got == want


def _iperf3(topo: Topo, *extra: str) -> dict:
    server = subprocess.Popen(["ip", "netns", "exec", topo.traffic, "iperf3", "-s", "-1", "-J", "-B", TRAFFIC_IP],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: subprocess.run(["ip", "netns", "exec", topo.traffic, "ss", "-ltn"], check=False,
                                    capture_output=True, text=True).stdout,
             lambda out: ":5201" in out, timeout=10, what="iperf3 server listening")
        client = subprocess.run(["ip", "netns", "exec", topo.guest, "iperf3", "-c", TRAFFIC_IP, "-J", *extra],
                                check=False, capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stdout[-2000:] + client.stderr[-2000:]
        doc = json.loads(client.stdout)
        assert "error" not in doc, doc["error"]
        return doc  # the client's report carries the server's counts too
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)


def test_iperf3_tcp(topo):
    with topo.host(), topo.guest_proc() as g:
        g.wait_connected()
        doc = _iperf3(topo, "-t", "2")
        end = doc["end"]
        # iperf3's own byte counts are per time window (sent and received differ by what was in
        # flight); integrity is test_tcp_transfer_checked's job. Here: a real TCP flow of size.
        assert end["sum_received"]["bytes"] > 16 << 20
        assert end["sum_received"]["bytes"] <= end["sum_sent"]["bytes"]


def _snmp(ns: str) -> dict[str, int]:
    """The ``Ip:``/``Udp:`` counters of /proc/net/snmp in ``ns``, as ``"Udp.InCsumErrors"``..."""
    lines = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    out: dict[str, int] = {}
    for head, values in zip(lines[::2], lines[1::2]):
        proto, names = head.split(":", 1)
        out.update({f"{proto}.{n}": int(v) for n, v in zip(names.split(), values.split(":", 1)[1].split())})
    return out


# UDP loss allowed through the userspace path, in percent. Where loss may come from at 10 Mbit/s
# (~900 datagrams/s): the guest stack's queue to the tap (1000 frames) when the driver is starved,
# and the iperf3 server's socket buffer when iperf3 is; the rings and the port do not drop (they
# push back: datapath.py), and that is checked exactly below. Observed here: 0 lost in 6 runs
# (one beside two CPU-bound hogs). The bound is what a starved daemon may cost, not a tolerance
# for a datapath that drops.
UDP_LOSS_PERCENT = 5.0


def test_iperf3_udp(topo):
    with topo.host() as host, topo.guest_proc() as g:
        g.wait_connected()
        snmp0 = _snmp(topo.traffic)
        doc = _iperf3(topo, "-u", "-b", "10M", "-l", "1400", "-t", "2", "--get-server-output")
        s = doc["end"]["sum"]
        server = doc["server_output_json"]["end"]  # the receiver's own view (the client's says 0)
        assert s["packets"] > 1000
        # Exact: nothing reordered on a single FIFO path, nothing corrupted (a bad byte would fail
        # the UDP or IP checksum at the receiver), and every frame a ring took came out of it.
        assert server["streams"][0]["udp"]["out_of_order"] == 0, server
        snmp = _snmp(topo.traffic)
        for name in ("Udp.InCsumErrors", "Ip.InHdrErrors"):
            assert snmp[name] == snmp0[name], name

        def rings() -> tuple[int, int, int, int]:
            h, c = host.show()["counters"], g.show()["counters"]
            return c["tx_frames"], h["tx"]["frames"] + h["tx"]["drops"], h["rx"]["frames"], c["rx_frames"]
        r = poll(rings, lambda v: v[0] == v[1] and v[2] == v[3], timeout=20, what="ring counters settled")
        assert r[0] > s["packets"], r  # the datagrams went through the guest's tx ring
        hc = host.show()["counters"]
        assert hc["tx"]["drops"] == hc["tx"]["errors"] == hc["rx"]["errors"] == 0, hc
        # Bounded: loss, which only load explains.
        assert s["lost_percent"] <= UDP_LOSS_PERCENT, s


def test_guest_killed_and_restarted(topo):
    with topo.host() as host:
        with topo.guest_proc() as g:
            g.wait_connected()
            assert ping(topo.guest, TRAFFIC_IP, 3) == 3
            g.stop(sig=9)
        with topo.guest_proc() as g2:
            g2.wait_connected()
            assert ping(topo.guest, TRAFFIC_IP, 10) == 10
            assert ping(topo.traffic, GUEST_IP, 10) == 10
        assert host.proc.poll() is None  # served the second guest without a restart


def test_backend_restarted_guest_reconnects(topo):
    with topo.guest_proc() as g:
        with topo.host():
            g.wait_connected()
            assert ping(topo.guest, TRAFFIC_IP, 5) == 5
        poll(g.show, lambda d: not d["connected"], timeout=20, what="guest saw the backend go")
        with topo.host():
            doc = g.wait_connected(connects=2)
            assert doc["counters"]["disconnects"] >= 1
            assert ping(topo.guest, TRAFFIC_IP, 10) == 10
            assert ping(topo.traffic, GUEST_IP, 10) == 10
        assert g.proc.poll() is None


def test_guest_server_mode_backend_client(topo):
    with topo.guest_proc(server=True) as g:
        poll(lambda: os.path.exists(topo.sock), bool, timeout=20, what="guest listening")
        with topo.host(client=True):
            doc = g.wait_connected()
            assert doc["mode"] == "server"
            assert ping(topo.guest, TRAFFIC_IP, 10) == 10
