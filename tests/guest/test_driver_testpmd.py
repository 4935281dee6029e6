"""vxdp guest run against a real vhost-user backend nobody here wrote: DPDK testpmd's net_vhost.

The driver runs as the CLI would (``python -m vxdp.cli.main guest run``) in a subprocess that
is always stopped; the guest netns is made by NetLab (IPv6 off, so that the only frames on the
tap are the test's own and counts are exact). Every wait is a bounded poll.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from guest_helpers import GuestProc, ping, ping_all, poll

from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.testing.netns import NetLab
from vxdp.testing.testpmd import Testpmd

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

GUEST_ADDR = "198.18.7.2/24"
PEER = "198.18.7.1"  # testpmd icmpecho answers ARP and ping for any address
PEER_MAC = "02:00:00:00:07:01"


def _prefix(tag: str) -> str:
    return f"vxg{os.getpid()}{tag}"


@pytest.fixture
def guest_ns():
    with NetLab("vxg") as lab:
        yield lab.netns(ipv6=False)


def _pmd(sock: str, mode: str, tag: str, *, client: bool = False, auto_start: bool = True) -> Testpmd:
    return Testpmd(f"net_vhost0,iface={sock},client={int(client)},queues=1", forward_mode=mode,
                   file_prefix=_prefix(tag), lcores="0@1,1@1", auto_start=auto_start)


def _udp_burst(ns: str, dst: str, n: int, size: int = 64) -> None:
    def send() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(n):
                s.sendto(i.to_bytes(4, "big") * (size // 4), (dst, 9))
        finally:
            s.close()
    run_in_netns(ns, send)


def test_ping_through_testpmd_icmpecho(guest_ns, tmp_path):
    sock = str(tmp_path / "vh.sock")
    with _pmd(sock, "icmpecho", "p") as pmd:
        pmd.wait_socket(sock)
        with GuestProc(sock, guest_ns, "vxg0", tmp_path, addr=GUEST_ADDR) as g:
            doc = g.wait_connected()
            assert {"VERSION_1", "PROTOCOL_FEATURES", "RING_EVENT_IDX", "NET_MRG_RXBUF"} <= set(doc["features"])
            assert [r["name"] for r in doc["rings"]][:2] == ["rx", "tx"]
            before, base = pmd.port_stats()[0], g.show()["counters"]
            ping_all(guest_ns, PEER, 20)
            # 1500-byte frames (1472 bytes of ICMP payload + 28 of headers = MTU 1500) pass intact
            ping_all(guest_ns, PEER, 5, size=1472)
            # Exact, once the traffic has stopped: what the driver put in its tx ring is what testpmd
            # took from it, what testpmd enqueued on the rx ring is what the driver took, and the
            # driver handed every received frame to the tap.
            def deltas() -> tuple[int, int, int, int]:
                st, c = pmd.port_stats()[0], g.show()["counters"]
                return (c["tx_frames"] - base["tx_frames"], st.rx_packets - before.rx_packets,
                        c["rx_frames"] - base["rx_frames"], st.tx_packets - before.tx_packets)
            d = poll(deltas, lambda v: v[0] == v[1] and v[2] == v[3], timeout=20, what="ring counters settled")
            assert d[0] >= 25 and d[2] >= 25, d  # 25 echoes each way at least (ARP on top)
            c = g.show()["counters"]
            assert c["rx_dropped"] == c["tx_dropped"] == 0
            cli = [sys.executable, "-m", "vxdp.cli.main", "guest", "show"]  # the only guest: no --name needed
            text = subprocess.run(cli, env=g.env, check=True, capture_output=True, text=True).stdout
            assert text.startswith("guest g0: connected (client)") and "vring 1 (tx): size 1024" in text
            js = json.loads(subprocess.run([*cli, "--name", "g0", "-j"], env=g.env, check=True,
                                           capture_output=True, text=True).stdout)
            assert js["connected"] and js["counters"]["rx_frames"] >= c["rx_frames"]
        assert g.stop() == 0
    # a netns that existed before the driver is left in place (only the tap went)
    assert guest_ns in subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "netns", "exec", guest_ns, "ip", "-o", "link"], check=False, capture_output=True, text=True)
    assert "vxg0" not in links.stdout


def test_frames_from_guest_counted_by_rxonly(guest_ns, tmp_path):
    sock = str(tmp_path / "vh.sock")
    with _pmd(sock, "rxonly", "r") as pmd:
        pmd.wait_socket(sock)
        with GuestProc(sock, guest_ns, "vxg0", tmp_path, addr=GUEST_ADDR) as g:
            g.wait_connected()
            subprocess.run(["ip", "netns", "exec", guest_ns, "ip", "neigh", "replace", PEER, "lladdr", PEER_MAC,
                            "dev", "vxg0", "nud", "permanent"], check=True)
            base_pmd = pmd.port_stats()[0].rx_packets
            base = g.show()["counters"]
            total = 0
            for _ in range(10):  # bursts the tap's queue (1000 frames) always holds
                _udp_burst(guest_ns, PEER, 200)
                total += 200
                poll(lambda: g.show()["counters"]["tx_frames"] - base["tx_frames"], lambda v, t=total: v >= t,
                     timeout=20, what="guest tx frames")
            got = poll(lambda: pmd.port_stats()[0].rx_packets - base_pmd, lambda v: v >= total,
                       timeout=20, what="testpmd rx packets")
            c = g.show()["counters"]
            assert got == total
            assert c["tx_frames"] - base["tx_frames"] == total
            assert c["tx_bytes"] - base["tx_bytes"] == total * (14 + 20 + 8 + 64)
            assert c["tx_dropped"] == 0


def test_frames_from_txonly_reach_the_tap(guest_ns, tmp_path):
    sock = str(tmp_path / "vh.sock")
    with _pmd(sock, "txonly", "t", auto_start=False) as pmd:
        pmd.wait_socket(sock)
        with GuestProc(sock, guest_ns, "vxg0", tmp_path, addr=GUEST_ADDR) as g:
            g.wait_connected()
            base_tap = g.show()["tap_stats"]["tx_frames"]
            pmd.command("start")
            poll(lambda: g.show()["counters"]["rx_frames"], lambda v: v >= 20000, timeout=30,
                 what="guest rx frames")
            pmd.command("stop")
            sent = pmd.port_stats()[0].tx_packets
            assert sent >= 20000
            doc = poll(g.show, lambda d: d["counters"]["rx_frames"] >= sent, timeout=20, what="guest caught up")
            c = doc["counters"]
            assert c["rx_frames"] == sent  # every frame testpmd enqueued, and no more
            assert c["rx_bytes"] == pmd.port_stats()[0].tx_bytes
            # each went into the tap, or is counted as dropped there (EAGAIN)
            assert doc["tap_stats"]["tx_frames"] - base_tap + c["rx_dropped"] == sent


def test_driver_killed_and_restarted(guest_ns, tmp_path):
    sock = str(tmp_path / "vh.sock")
    with _pmd(sock, "icmpecho", "k") as pmd:
        pmd.wait_socket(sock)
        with GuestProc(sock, guest_ns, "vxg0", tmp_path, addr=GUEST_ADDR) as g:
            g.wait_connected()
            ping_all(guest_ns, PEER, 3)
            g.stop(sig=9)
        with GuestProc(sock, guest_ns, "vxg0", tmp_path, addr=GUEST_ADDR) as g2:
            g2.wait_connected()
            ping_all(guest_ns, PEER, 10)
        assert pmd.alive()


def test_backend_restarted_guest_reconnects(guest_ns, tmp_path):
    sock = str(tmp_path / "vh.sock")
    with GuestProc(sock, guest_ns, "vxg0", tmp_path, addr=GUEST_ADDR) as g:  # starts first: retries
        with _pmd(sock, "icmpecho", "b1") as pmd:
            pmd.wait_socket(sock)
            g.wait_connected()
            ping_all(guest_ns, PEER, 5)
        poll(g.show, lambda d: not d["connected"], timeout=20, what="guest saw the backend go")
        assert ping(guest_ns, PEER, 1, timeout=0.5) == 0
        with _pmd(sock, "icmpecho", "b2") as pmd:
            pmd.wait_socket(sock)
            doc = g.wait_connected(connects=2)
            assert doc["counters"]["disconnects"] >= 1
            ping_all(guest_ns, PEER, 10)
        assert g.proc.poll() is None


def test_server_mode(guest_ns, tmp_path):
    sock = str(tmp_path / "vh.sock")
    with GuestProc(sock, guest_ns, "vxg0", tmp_path, addr=GUEST_ADDR, server=True) as g:
        poll(lambda: os.path.exists(sock), bool, timeout=20, what="guest listening")
        with _pmd(sock, "icmpecho", "s", client=True) as pmd:
            doc = g.wait_connected()
            assert doc["mode"] == "server"
            ping_all(guest_ns, PEER, 10)
            assert pmd.port_stats()[0].tx_packets >= 10
    assert not os.path.exists(sock)  # our listening socket is removed on exit


def test_sigterm_cleans_up(tmp_path):
    """A netns we create is removed on exit; the tap and control socket go in any case."""
    ns = f"vxg-{os.getpid()}-own"
    sock = str(tmp_path / "vh.sock")
    with _pmd(sock, "icmpecho", "c") as pmd:
        pmd.wait_socket(sock)
        g = GuestProc(sock, ns, "vxg0", tmp_path, addr=GUEST_ADDR)
        try:
            g.wait_connected()
            assert ns in subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
            assert g.control.exists()
            assert g.stop() == 0
            assert not g.control.exists()
            assert ns not in subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
        finally:
            g.stop(sig=9)
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
