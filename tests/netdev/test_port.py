"""vxdp.netdev.Port on real veth pairs: exact, byte-for-byte delivery both from our own sendmmsg and
from the kernel's live-frames generator; no echo of our own frames; drops counted when the ring fills;
checksums a local sender left to tx offload (CHECKSUM_PARTIAL) completed, other frames untouched."""

from __future__ import annotations

import errno
import select
import socket
import subprocess
import time

import pytest
from bpf.kernel.kernel_asm import MARK_ETHERTYPE, marked_frame, ret_insns
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from vxdp.bpf.isa import XdpAction
from vxdp.bpf.kernel.live_frames import send_live_frames_in
from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.kernel.xdp import XdpMode, attach_xdp
from vxdp.frames import FrameBatch
from vxdp.netdev.errors import NetdevError
from vxdp.netdev.port import Port
from vxdp.testing.netns import NetLab, VethPair

pytestmark = pytest.mark.privileged


@pytest.fixture
def pair() -> VethPair:
    """A veth pair between two fresh namespaces, removed whatever the test did."""
    with NetLab(prefix="vxnd") as lab:
        yield lab.veth(lab.netns(), lab.netns(), "vxa", "vxb", addr_a="198.18.0.1/30", addr_b="198.18.0.2/30")

MARK = MARK_ETHERTYPE.to_bytes(2, "big")
DEADLINE_S = 30.0  # generous: only a broken port ever waits this long


def numbered_frame(seq: int, size: int) -> bytes:
    """A marked broadcast frame of ``size`` bytes carrying ``seq`` and a seq-derived byte pattern."""
    body = seq.to_bytes(4, "big") + bytes((seq + i) & 0xFF for i in range(size - 18))
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + MARK + body


def marked(batch: FrameBatch) -> list[bytes]:
    """Our test frames in the batch (a fresh veth also carries the kernel's IPv6 chatter)."""
    return [f for f in batch.frames() if f[12:14] == MARK]


def drain(port: Port, want: int, batch: FrameBatch) -> list[bytes]:
    """Receive until ``want`` marked frames arrived or the deadline passed; a bounded loop."""
    got: list[bytes] = []
    end = time.monotonic() + DEADLINE_S
    while len(got) < want and time.monotonic() < end:
        port.recv_batch(batch)
        got += marked(batch)
    return got


@pytest.mark.parametrize("total", [1000, 10000])
def test_send_batch_arrives_exactly_at_the_peer_port(pair, total):
    sizes = [60 + (i * 37) % (1514 - 60 + 1) for i in range(total)]
    sizes[:2] = [60, 1514]
    frames = [numbered_frame(i, s) for i, s in enumerate(sizes)]
    with Port(pair.a, netns=pair.ns_a) as tx, Port(pair.b, netns=pair.ns_b) as rx:
        out, inb = FrameBatch.allocate(256), FrameBatch.allocate(256)
        got: list[bytes] = []
        for start in range(0, total, 256):
            chunk = frames[start:start + 256]
            out.fill(chunk)
            assert tx.send_batch(out) == len(chunk)
            got += _recv_some(rx, inb)
        got += drain(rx, total - len(got), inb)
        assert len(got) == total
        assert got == frames  # byte for byte, in order
        tx.recv_batch(inb)
        assert marked(inb) == []  # PACKET_IGNORE_OUTGOING: our own transmissions never come back
        st = rx.stats()
        assert st.drops == 0 and st.packets >= total
        assert tx.stats().tx_rejected == 0


def _recv_some(port: Port, batch: FrameBatch) -> list[bytes]:
    got: list[bytes] = []
    while port.recv_batch(batch):
        got += marked(batch)
    return got


@pytest.mark.parametrize("total", [1000, 10000])
def test_live_frames_are_received_and_counted_exactly(pair, total):
    frame = marked_frame(64)
    with KernelProgram.load(ret_insns(XdpAction.PASS), name="napi_pass") as npass, \
            KernelProgram.load(ret_insns(XdpAction.TX), name="gen_tx") as gen, \
            Port(pair.b, netns=pair.ns_b) as rx:
        attach_xdp(pair.b, npass.fd, XdpMode.NATIVE, netns=pair.ns_b)  # NAPI on the receiving veth
        send_live_frames_in(pair.ns_a, gen, frame, ifindex=pair.a_index, count=total)
        got = drain(rx, total, FrameBatch.allocate(256))
        assert len(got) == total
        assert set(got) == {frame}
        assert rx.stats().drops == 0


def test_a_full_ring_counts_drops(pair):
    total = 5000
    with KernelProgram.load(ret_insns(XdpAction.PASS), name="napi_pass") as npass, \
            KernelProgram.load(ret_insns(XdpAction.TX), name="gen_tx") as gen, \
            Port(pair.b, netns=pair.ns_b, ring_frames=8, block_size=4096) as rx:  # 4 blocks of 4 KiB
        attach_xdp(pair.b, npass.fd, XdpMode.NATIVE, netns=pair.ns_b)
        send_live_frames_in(pair.ns_a, gen, marked_frame(64), ifindex=pair.a_index, count=total)
        st = rx.stats()
        got = _recv_some(rx, FrameBatch.allocate(256))
        assert st.drops > 0
        assert 0 < len(got) < total
        assert len(got) + st.drops >= total


def test_oversize_frames_are_skipped_and_rejected_frames_counted(pair):
    good = [numbered_frame(1, 100), numbered_frame(2, 300), numbered_frame(3, 100)]
    too_long = numbered_frame(9, 3000)  # longer than the veth's MTU: the kernel refuses it
    with Port(pair.a, netns=pair.ns_a) as tx, Port(pair.b, netns=pair.ns_b) as rx:
        out = FrameBatch.allocate(8, 4096)
        out.fill([good[0], too_long, good[1], good[2]])
        assert tx.send_batch(out) == 4
        assert tx.stats().tx_rejected == 1
        small = FrameBatch.allocate(16, 256)  # slots too small for the 300-byte frame
        got = drain(rx, 2, small)
        assert got == [good[0], good[2]]
        assert rx.stats().oversize >= 1


def test_errors_name_the_device():
    with pytest.raises(NetdevError, match="nosuchdev0"):
        Port("nosuchdev0")
    with pytest.raises(NetdevError, match="block_size"):
        Port("lo", block_size=1000)


def test_a_closed_port_refuses_use():
    p = Port("lo")
    p.close()
    p.close()  # idempotent
    with pytest.raises(NetdevError, match="closed"):
        p.recv_batch(FrameBatch.allocate(4))


def test_fileno_polls_readable_when_a_frame_waits(pair):
    with Port(pair.a, netns=pair.ns_a) as tx, Port(pair.b, netns=pair.ns_b, retire_ms=1) as rx:
        poller = select.poll()
        poller.register(rx.fileno(), select.POLLIN)
        inb = FrameBatch.allocate(64)
        _recv_some(rx, inb)  # whatever the kernel sent on the fresh link
        out = FrameBatch.allocate(1)
        out.fill([numbered_frame(7, 60)])
        assert tx.send_batch(out) == 1
        got: list[bytes] = []
        end = time.monotonic() + DEADLINE_S
        while not got and time.monotonic() < end:
            events = poller.poll(int(DEADLINE_S * 1000))  # the retire timer hands over the lone frame's block
            assert events and events[0][1] & select.POLLIN  # a frame is waiting, so poll must say so
            got += _recv_some(rx, inb)
        assert got == [numbered_frame(7, 60)]


# -- checksums left to tx offload (CHECKSUM_PARTIAL) --------------------------------------------------
FAR_NET, FAR_IP, FAR_MAC = "198.18.1.0/24", "198.18.1.1", "02:00:00:00:00:fe"  # nobody has FAR_IP
UDP_SIZES = [0, 1, 17, 256, 1001, 1472]  # odd and even lengths, up to a full 1500-byte datagram


def _route_to_far(pair: VethPair) -> None:
    """In ns_a: FAR_NET via ``a`` with a static neighbour for FAR_IP, so sockets send without ARP."""
    ip = ["ip", "-n", pair.ns_a]
    subprocess.run([*ip, "route", "add", FAR_NET, "dev", pair.a], check=True)
    subprocess.run([*ip, "neigh", "replace", FAR_IP, "lladdr", FAR_MAC, "dev", pair.a, "nud", "permanent"],
                   check=True)


def _send_udp_and_syn() -> list[socket.socket]:
    """Real sockets (in the calling netns): one UDP datagram per size, one TCP SYN; the sockets stay open."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for size in UDP_SIZES:
        assert udp.sendto(bytes((size + i) & 0xFF for i in range(size)), (FAR_IP, 9)) == size
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setblocking(False)
    assert tcp.connect_ex((FAR_IP, 80)) == errno.EINPROGRESS  # the SYN has left; nothing will answer
    return [udp, tcp]


def _far_frames(port: Port, want_udp: int, batch: FrameBatch, want_tcp: int = 1) -> tuple[list[bytes], list[bytes]]:
    """UDP and TCP frames to FAR_IP received until ``want_udp`` UDP and ``want_tcp`` TCP arrived (bounded)."""
    udp: list[bytes] = []
    tcp: list[bytes] = []
    end = time.monotonic() + DEADLINE_S
    while (len(udp) < want_udp or len(tcp) < want_tcp) and time.monotonic() < end:
        port.recv_batch(batch)
        for f in batch.frames():
            pkt = Ether(f)
            if IP in pkt and pkt[IP].dst == FAR_IP:
                (udp if UDP in pkt else tcp if TCP in pkt else []).append(f)
    return udp, tcp


def rechecked(frame: bytes) -> bytes:
    """The frame with its TCP/UDP checksum computed afresh by scapy: the independent reference."""
    pkt = Ether(frame)
    del (pkt.getlayer(TCP) or pkt.getlayer(UDP)).chksum
    return bytes(pkt)


def test_partial_checksums_from_a_local_sender_are_completed(pair):
    _route_to_far(pair)  # tx checksum offload stays on at pair.a: the veth default
    with Port(pair.b, netns=pair.ns_b) as rx:
        socks = run_in_netns(pair.ns_a, _send_udp_and_syn)
        try:
            udp, tcp = _far_frames(rx, len(UDP_SIZES), FrameBatch.allocate(64))
        finally:
            for s in socks:
                s.close()
        assert sorted(len(Ether(f)[UDP].payload) for f in udp) == UDP_SIZES
        assert tcp and Ether(tcp[0])[TCP].flags == "S"
        for f in udp + tcp:
            assert rechecked(f) == f  # a valid checksum (the wire had only the pseudo-header sum)
        st = rx.stats()
        assert st.csum_completed >= len(udp) + len(tcp)  # SYN retransmits may add to it
        assert st.csum_left == 0


def test_frames_with_finished_checksums_are_untouched(pair):
    _route_to_far(pair)
    subprocess.run(["ip", "netns", "exec", pair.ns_a, "ethtool", "-K", pair.a, "tx", "off"], check=True,
                   capture_output=True)  # the stack now checksums in software
    wrong = Ether(src="02:00:00:00:00:01", dst=FAR_MAC) / IP(src="198.18.0.1", dst=FAR_IP) / \
        UDP(sport=7, dport=9, chksum=0xBAD) / b"a checksum nobody may fix"
    with Port(pair.a, netns=pair.ns_a) as tx, Port(pair.b, netns=pair.ns_b) as rx:
        socks = run_in_netns(pair.ns_a, _send_udp_and_syn)
        try:
            udp, tcp = _far_frames(rx, len(UDP_SIZES), FrameBatch.allocate(64))
        finally:
            for s in socks:
                s.close()
        assert len(udp) == len(UDP_SIZES) and tcp
        assert all(rechecked(f) == f for f in udp + tcp)
        out = FrameBatch.allocate(1)
        out.fill([bytes(wrong)])
        assert tx.send_batch(out) == 1  # a packet socket's frame is not CHECKSUM_PARTIAL: left as sent
        got, _ = _far_frames(rx, 1, FrameBatch.allocate(64), want_tcp=0)
        assert bytes(wrong) in got
        assert rx.stats().csum_completed == 0
