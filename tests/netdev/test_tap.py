"""vxdp.netdev.Tap in a fresh netns: frames written reach the netns stack (a UDP socket there gets
them exactly), and what the stack sends out of the tap is read back byte for byte."""

from __future__ import annotations

import socket
import time

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.frames import FrameBatch
from vxdp.netdev.errors import NetdevError
from vxdp.netdev.tap import Tap
from vxdp.testing.netns import NetLab

pytestmark = pytest.mark.privileged


@pytest.fixture
def ns() -> str:
    """A fresh namespace (lo up), removed with everything in it whatever the test did."""
    with NetLab(prefix="vxnd") as lab:
        yield lab.netns()

TAP_IP, PEER_IP = "198.18.5.1", "198.18.5.2"
PEER_MAC = "02:00:00:00:05:02"
DEADLINE_S = 30.0
VNET_HDR_LEN = 10  # struct virtio_net_hdr, the tap's default vnet header size


def udp_socket_in(ns: str, ip: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind((ip, port))
        return s
    s = run_in_netns(ns, make)
    s.setblocking(False)
    return s


def recv_all(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(2048))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("vnet_hdr", [False, True])
def test_frames_written_reach_the_netns_stack(ns, vnet_hdr):
    total, port = 1000, 4789
    hdr = bytes(VNET_HDR_LEN) if vnet_hdr else b""  # flags 0, GSO_NONE: a plain frame
    with Tap("vxtap0", netns=ns, addr=f"{TAP_IP}/24", vnet_hdr=vnet_hdr) as tap:
        sock = udp_socket_in(ns, TAP_IP, port)
        try:
            payloads = [i.to_bytes(4, "big") + bytes(i % 1400) for i in range(total)]
            frames = [hdr + bytes(Ether(dst=tap.mac, src=PEER_MAC) / IP(src=PEER_IP, dst=TAP_IP)
                            / UDP(sport=1000 + i % 7, dport=port) / p) for i, p in enumerate(payloads)]
            batch = FrameBatch.allocate(64)
            got: list[bytes] = []
            for start in range(0, total, 64):
                batch.fill(frames[start:start + 64])
                assert tap.write_batch(batch) == batch.count
                got += recv_all(sock)
            end = time.monotonic() + DEADLINE_S
            while len(got) < total and time.monotonic() < end:
                got += recv_all(sock)
            assert got == payloads
            assert tap.stats().tx_frames == total and tap.stats().tx_rejected == 0
        finally:
            sock.close()


def test_frames_the_stack_sends_are_read_byte_exact(ns):
    total, port = 500, 4790
    with Tap("vxtap1", netns=ns, addr=f"{TAP_IP}/24") as tap:
        with IPRoute(netns=ns, flags=0) as ip:
            ip.neigh("add", dst=PEER_IP, lladdr=PEER_MAC, ifindex=tap.ifindex, state=0x80)  # NUD_PERMANENT
        sock = udp_socket_in(ns, TAP_IP, port)
        try:
            batch = FrameBatch.allocate(64)
            got: list[bytes] = []
            payloads = [i.to_bytes(4, "big") + bytes((i * 7) % 1400) for i in range(total)]
            for start in range(0, total, 64):
                for p in payloads[start:start + 64]:
                    sock.sendto(p, (PEER_IP, 9999))
                end = time.monotonic() + DEADLINE_S
                want = min(total, start + 64)
                while len(got) < want and time.monotonic() < end:
                    tap.read_batch(batch)
                    got += [f for f in batch.frames() if f[12:14] == b"\x08\x00"]
            assert len(got) == total
            for f, p in zip(got, payloads):
                expect = Ether(dst=PEER_MAC, src=tap.mac) / IP(src=TAP_IP, dst=PEER_IP, id=Ether(f)[IP].id,
                                                               flags=Ether(f)[IP].flags, ttl=64) \
                    / UDP(sport=port, dport=9999) / p
                assert f == bytes(expect)  # headers, both checksums and payload, byte for byte
        finally:
            sock.close()


def test_the_tap_vanishes_on_close(ns):
    tap = Tap("vxtap2", netns=ns, mtu=1400)
    with IPRoute(netns=ns, flags=0) as ip:
        link = ip.get_links(tap.ifindex)[0]
        assert link.get_attr("IFLA_MTU") == 1400 and link.get_attr("IFLA_IFNAME") == "vxtap2"
        tap.close()
        assert ip.link_lookup(ifname="vxtap2") == []
    with pytest.raises(NetdevError, match="closed"):
        tap.read_batch(FrameBatch.allocate(4))


def test_bad_arguments_are_named():
    with pytest.raises(NetdevError, match="CIDR"):
        Tap("vxtap3", addr="198.18.5.1")
    with pytest.raises(NetdevError, match="interface name"):
        Tap("x" * 20)
    with pytest.raises(NetdevError, match="MTU"):
        Tap("vxtap3", mtu=10)
