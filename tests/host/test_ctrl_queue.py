"""The ctrl vq handler over a driver-side ring in real guest memory (memfd): every chain is
answered, by class, and malformed or unknown requests get VIRTIO_NET_ERR, never a crash."""

from __future__ import annotations

import struct
from concurrent.futures import Future

import pytest

from vxdp.host.ctrl_queue import CtrlTable, Deferred, serve_ctrl
from vxdp.virtio.ctrl_framing import Ack, CtrlClass, CtrlReply, CtrlRequest, MacCmd, RxCmd
from vxdp.virtio.memory import GuestMemory
from vxdp.virtio.virtqueue import DESC_F_NEXT, DriverQueue, VirtqueueError

BUF = 0x10000


@pytest.fixture
def ring():
    mem = GuestMemory.allocate(1 << 20)
    dq = DriverQueue.create(mem, 64, 0)
    yield mem, dq, dq.state()
    mem.close()


def _ask(mem, dq, state, table, raw: bytes, reply_room: int = 1) -> tuple[bytes, int]:
    """Post one request chain (readable request, writable reply), serve it, return what came back."""
    mem.write(BUF, raw)
    mem.write(BUF + 0x1000, b"\xee" * reply_room)
    segs = [(BUF, len(raw), False)] if raw else []
    if reply_room:
        segs.append((BUF + 0x1000, reply_room, True))
    dq.add_buffers(mem, segs)
    n, _notify = serve_ctrl(state, mem, table)
    assert n == 1
    _head, ln = dq.get_used(mem)
    return mem.read(BUF + 0x1000, ln), ln


@pytest.mark.parametrize("req, ack", [
    (CtrlRequest(CtrlClass.RX, RxCmd.PROMISC, b"\x01"), Ack.OK),
    (CtrlRequest(CtrlClass.RX, RxCmd.ALLMULTI, b"\x00"), Ack.OK),
    (CtrlRequest(CtrlClass.RX, RxCmd.PROMISC, b""), Ack.ERR),  # missing on/off byte
    (CtrlRequest(CtrlClass.MAC, MacCmd.ADDR_SET, bytes(6)), Ack.OK),
    (CtrlRequest(CtrlClass.MAC, MacCmd.ADDR_SET, bytes(5)), Ack.ERR),
    (CtrlRequest(CtrlClass.MAC, MacCmd.TABLE_SET, struct.pack("<II", 0, 0)), Ack.OK),
    (CtrlRequest(CtrlClass.ANNOUNCE, 0), Ack.OK),
    (CtrlRequest(CtrlClass.BPF, 1, b"x" * 20), Ack.ERR),  # offload not plugged in
    (CtrlRequest(CtrlClass.VLAN, 0, b"\x01\x00"), Ack.ERR),  # not supported
    (CtrlRequest(0x33, 7), Ack.ERR),  # unknown class
], ids=lambda x: repr(x)[:40])
def test_classes(ring, req, ack):
    mem, dq, state = ring
    out, ln = _ask(mem, dq, state, CtrlTable(), req.encode())
    assert ln == 1 and out == bytes([ack])


def test_bpf_class_plugged_in(ring):
    mem, dq, state = ring
    table = CtrlTable()
    seen = []

    def handler(req: CtrlRequest, capacity: int) -> CtrlReply:
        seen.append((req, capacity))
        return CtrlReply(Ack.OK, b"result!")

    table.register(CtrlClass.BPF, handler)
    out, ln = _ask(mem, dq, state, table, CtrlRequest(CtrlClass.BPF, 3, b"abc").encode(), reply_room=16)
    assert out == b"\x00result!" and seen == [(CtrlRequest(CtrlClass.BPF, 3, b"abc"), 16)]
    # a reply larger than the writable room is cut to it
    out, ln = _ask(mem, dq, state, table, CtrlRequest(CtrlClass.BPF, 3).encode(), reply_room=4)
    assert out == b"\x00res" and ln == 4


def test_malformed_requests_get_err(ring):
    mem, dq, state = ring
    table = CtrlTable()
    assert _ask(mem, dq, state, table, b"\x00")[0] == b"\x01"  # one byte: no command
    assert _ask(mem, dq, state, table, b"", reply_room=1)[0] == b"\x01"  # nothing readable
    assert _ask(mem, dq, state, table, b"\x00\x00\x01", reply_room=0) == (b"", 0)  # no room for the ack
    table.register(CtrlClass.RX, lambda req, capacity: 1 / 0)  # a handler bug
    assert _ask(mem, dq, state, table, b"\x00\x00\x01")[0] == b"\x01"
    assert table.stats.malformed == 3 and table.stats.requests == 4


def test_hostile_chain_raises_and_breaks_the_queue(ring):
    mem, dq, state = ring
    mem.write(dq.desc_gpa, struct.pack("<QIHH", BUF, 2, DESC_F_NEXT, 0))  # descriptor 0 -> itself
    mem.write_u16(dq.avail_gpa + 4, 0)
    mem.write_u16(dq.avail_gpa + 2, 1)
    with pytest.raises(VirtqueueError):
        serve_ctrl(state, mem, CtrlTable())
    assert state.broken


def test_event_idx_driver_is_asked_to_kick_for_every_command():
    """With EVENT_IDX the device must publish avail_event after serving, or the driver's next
    command sees no need to kick and waits for the daemon's tick."""
    mem = GuestMemory.allocate(1 << 20)
    try:
        dq = DriverQueue.create(mem, 64, 0, event_idx=True)
        state, table = dq.state(), CtrlTable()
        for i in range(5):
            mem.write(BUF, CtrlRequest(CtrlClass.RX, RxCmd.PROMISC, b"\x01").encode())
            dq.add_buffers(mem, [(BUF, 3, False), (BUF + 0x1000, 1, True)])
            assert dq.kick_needed(mem), f"command {i}: the driver would not kick"
            assert serve_ctrl(state, mem, table)[0] == 1
            assert dq.get_used(mem) is not None
    finally:
        mem.close()


def test_a_deferred_reply_holds_the_ring_in_order_until_it_completes(ring):
    """A PROG_LOAD verified off the loop: its chain, and every chain after it, wait for the
    result; then they complete in the order the driver posted them, and the worker woke the loop."""
    mem, dq, state = ring
    table = CtrlTable()
    woken: list[int] = []
    table.wake = lambda: woken.append(1)
    fut: Future = Future()
    seen: list[int] = []

    def handler(req: CtrlRequest, capacity: int) -> CtrlReply | Deferred:
        seen.append(req.command)
        return Deferred(fut) if req.command == 1 else CtrlReply(Ack.OK, bytes([req.command]))

    table.register(CtrlClass.BPF, handler)
    heads = []
    for cmd, off in ((1, 0), (2, 0x2000)):
        mem.write(BUF + off, CtrlRequest(CtrlClass.BPF, cmd).encode())
        heads.append(dq.add_buffers(mem, [(BUF + off, 2, False), (BUF + off + 0x1000, 8, True)]))
    assert serve_ctrl(state, mem, table) == (0, False)
    assert serve_ctrl(state, mem, table) == (0, False)  # a kick meanwhile: still waiting
    assert seen == [1] and dq.get_used(mem) is None and woken == []
    fut.set_result(CtrlReply(Ack.OK, b"load"))
    assert woken == [1]
    n, _notify = serve_ctrl(state, mem, table)
    assert n == 2 and seen == [1, 2] and table.pending is None
    (h1, l1), (h2, l2) = dq.get_used(mem), dq.get_used(mem)
    assert [h1, h2] == heads  # in order
    assert mem.read(BUF + 0x1000, l1) == b"\x00load" and mem.read(BUF + 0x3000, l2) == b"\x00\x02"
    assert table.stats.ok == 2
