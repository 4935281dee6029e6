"""vxdp.netdev.Port on real veth pairs: exact, byte-for-byte delivery both from our own sendmmsg and
from the kernel's live-frames generator; no echo of our own frames; drops counted when the ring fills."""

from __future__ import annotations

import select
import time

import pytest
from bpf.kernel.kernel_asm import MARK_ETHERTYPE, marked_frame, ret_insns

from vxdp.bpf.isa import XdpAction
from vxdp.bpf.kernel import KernelProgram, XdpMode, attach_xdp, send_live_frames_in
from vxdp.frames import FrameBatch
from vxdp.netdev import NetdevError, Port
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
