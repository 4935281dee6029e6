"""GuestRings (the guest's memory layout) and CtrlClient against the device half of the ctrl
vring on the same memory, played by a thread (no backend process needed)."""

from __future__ import annotations

import os
import threading

import pytest

from vxdp.guest.ctrl_client import CtrlClient, CtrlClientError, CtrlTimeout
from vxdp.guest.driver import GuestDriver, GuestDriverError
from vxdp.guest.rings import CTRL, RX, TX, GuestRings, GuestSetupError
from vxdp.virtio.ctrl_framing import Ack, CtrlReply, CtrlRequest


@pytest.fixture
def rings():
    r = GuestRings(mem_bytes=16 << 20, queue_size=256, buf_size=2048, event_idx=True, mrg=True, ctrl=True)
    yield r
    r.close()


def test_layout_inside_one_region(rings):
    region = rings.region()
    assert region.guest_phys_addr == 0 and region.fd == rings.mem.fd
    assert region.userspace_addr == rings.mem.regions[0].array.__array_interface__["data"][0]
    specs = rings.vring_specs()
    assert [v.index for v in specs] == [RX, TX, CTRL]
    for v in specs:
        for uva in (v.desc_uva, v.avail_uva, v.used_uva):
            assert region.userspace_addr <= uva < region.userspace_addr + region.memory_size
        assert v.kick_fd is not None and v.call_fd is not None and v.kick_fd != v.call_fd
    # the rx ring is full from the start: the device finds buffers at its first look
    assert rings.queues[RX].avail_idx == 256 and rings.mem.read_u16(rings.queues[RX].avail_gpa + 2) == 256
    assert rings.queues[TX].nfree == 256


def test_memory_too_small_and_bad_queue_size():
    with pytest.raises(GuestSetupError, match="cannot hold"):
        GuestRings(mem_bytes=1 << 20, queue_size=1024, buf_size=2048, event_idx=False, mrg=False)
    with pytest.raises(GuestDriverError, match="power of two"):
        GuestDriver("/nonexistent", queue_size=300)


def _device(rings, answer, done):
    """Pop one chain from the ctrl vring as a device does; write ``answer(request)``; signal."""
    st = rings.queues[CTRL].state()
    for _ in range(500):
        chain = st.pop_chain(rings.mem)
        if chain is not None:
            req = CtrlRequest.decode(chain.read_all(rings.mem))
            written = chain.write_all(rings.mem, answer(req).encode(chain.writable_len))
            st.push_used(rings.mem, chain.head, written)
            os.eventfd_write(rings.fds[CTRL].call, 1)
            done.set()
            return
        threading.Event().wait(0.01)


def test_ctrl_command_round_trip(rings):
    client = CtrlClient(rings)
    seen = []
    done = threading.Event()

    def answer(req):
        seen.append(req)
        return CtrlReply(Ack.OK, b"result:" + req.data)

    t = threading.Thread(target=_device, args=(rings, answer, done), daemon=True)
    t.start()
    reply = client.command(CtrlRequest(0x40, 7, b"hello"), 65, timeout=10)
    t.join(10)
    assert seen == [CtrlRequest(0x40, 7, b"hello")]  # the frame the device decoded is the one sent
    assert reply == CtrlReply(Ack.OK, b"result:hello")
    assert rings.queues[CTRL].nfree == rings.queues[CTRL].num  # chain returned


def test_ctrl_reply_cut_to_capacity_and_err(rings):
    client = CtrlClient(rings)
    done = threading.Event()
    t = threading.Thread(target=_device, args=(rings, lambda r: CtrlReply(Ack.ERR, b"x" * 100), done), daemon=True)
    t.start()
    reply = client.command(CtrlRequest(0, 0, b"\x01"), 5, timeout=10)  # the ack and 4 result bytes
    t.join(10)
    assert reply == CtrlReply(Ack.ERR, b"xxxx")


def test_ctrl_timeout_makes_queue_unusable(rings):
    client = CtrlClient(rings)
    with pytest.raises(CtrlTimeout, match="not answered"):
        client.command(CtrlRequest(0, 0, b"\x01"), timeout=0.2)
    with pytest.raises(CtrlClientError, match="unusable"):
        client.command(CtrlRequest(0, 0, b"\x01"), timeout=0.2)


def test_ctrl_needs_the_queue_and_room():
    r = GuestRings(mem_bytes=16 << 20, queue_size=64, buf_size=2048, event_idx=False, mrg=False, ctrl=False)
    try:
        with pytest.raises(CtrlClientError, match="CTRL_VQ"):
            CtrlClient(r)
    finally:
        r.close()
    r = GuestRings(mem_bytes=16 << 20, queue_size=64, buf_size=2048, event_idx=False, mrg=False, ctrl=True)
    try:
        with pytest.raises(CtrlClientError, match="does not fit"):
            CtrlClient(r).command(CtrlRequest(0x40, 0, bytes(r.ctrl_size)))
        with pytest.raises(CtrlClientError, match="does not fit"):  # no room for the ack
            CtrlClient(r).command(CtrlRequest(0x40, 0), 0)
    finally:
        r.close()
