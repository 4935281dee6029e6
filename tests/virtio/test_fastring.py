import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ring_helpers import DATA, HOSTILE, MEM_SIZE, hostile_ring, put_desc

from vxdp.virtio.fastring import DeviceRing, DriverRing, bench_loopback
from vxdp.virtio.net import NetHeader
from vxdp.virtio.virtqueue import (
    AVAIL_F_NO_INTERRUPT,
    DriverQueue,
    QueueState,
    RingError,
    VirtqueueError,
)

SLOT = 2048


def batch(sizes, seed=0):
    rng = np.random.default_rng(seed)
    data = np.zeros((len(sizes), SLOT), np.uint8)
    lens = np.array(sizes, np.uint32)
    for i, n in enumerate(sizes):
        data[i, :n] = rng.integers(0, 256, n, dtype=np.uint8)
    return data, lens


def frames_of(data, lens, n):
    return [data[i, :lens[i]].tobytes() for i in range(n)]


def pair(mem, num=64, buf=2048, event_idx=False, mrg=False, base=0):
    """Driver tx/rx rings with fixed buffers and the device's fast rings over the same memory."""
    tx = DriverQueue.create(mem, num, base, event_idx=event_idx)
    rx = DriverQueue.create(mem, num, tx.end_gpa, event_idx=event_idx)
    area = (rx.end_gpa + 4095) & ~4095
    drx = DriverRing(rx, mem, area, buf, mrg=mrg)
    dtx = DriverRing(tx, mem, area + num * buf, buf)
    return dtx, drx, DeviceRing(tx.state(), mem), DeviceRing(rx.state(), mem, mrg=mrg)


@pytest.mark.parametrize("event_idx", [False, True])
def test_tx_batch_driver_to_device_intact(mem, event_idx):
    dtx, _, dev_tx, _ = pair(mem, event_idx=event_idx)
    sizes = [60, 64, 1514, 128, 1, 999] * 10
    data, lens = batch(sizes)
    consumed, posted, kick = dtx.post_tx(data, lens, len(sizes))
    assert (consumed, posted, kick) == (60, 60, True)
    out, out_lens = np.zeros((64, SLOT), np.uint8), np.zeros(64, np.uint32)
    r = dev_tx.collect(out, out_lens)
    assert (r.count, r.dropped, r.error, r.notify) == (60, 0, None, True)
    assert frames_of(out, out_lens, 60) == frames_of(data, lens, 60)
    assert dtx.reap_tx() == 60 and dtx.dq.nfree == 64
    assert dev_tx.state.last_avail_idx == 60 == dev_tx.state.used_idx


@pytest.mark.parametrize("event_idx", [False, True])
@pytest.mark.parametrize("mrg,buf", [(False, 2048), (True, 2048), (True, 128)])
def test_rx_batch_device_to_driver_intact(mem, event_idx, mrg, buf):
    _, drx, _, dev_rx = pair(mem, num=256, buf=buf, event_idx=event_idx, mrg=mrg)
    assert drx.refill() == (256, True)
    sizes = [60, 1514, 64, 300, 1000] * 8
    data, lens = batch(sizes, seed=1)
    r = dev_rx.deliver(data, lens, len(sizes))
    assert (r.consumed, r.dropped, r.error, r.notify) == (40, 0, None, True)
    out, out_lens = np.zeros((64, SLOT), np.uint8), np.zeros(64, np.uint32)
    count, dropped = drx.reap_rx(out, out_lens)
    assert (count, dropped) == (40, 0)
    assert frames_of(out, out_lens, 40) == frames_of(data, lens, 40)
    if buf == 128:  # a 1514-byte frame took ceil((1514 + 12) / 128) = 12 buffers
        assert dev_rx.state.used_idx == sum(-(-(n + 12) // 128) for n in sizes)
    assert drx.dq.nfree == dev_rx.state.used_idx  # every buffer the device used is free again


def test_mrg_header_counts_buffers(mem):
    _, drx, _, dev_rx = pair(mem, num=16, buf=100, mrg=True)
    drx.refill()
    data, lens = batch([250])
    assert dev_rx.deliver(data, lens, 1).consumed == 1
    used = dev_rx.state.used_gpa
    ids = [mem.read_u32(used + 4 + 8 * k) for k in range(3)]
    lns = [mem.read_u32(used + 8 + 8 * k) for k in range(3)]
    assert lns == [100, 100, 62] and mem.read_u16(used + 2) == 3
    first = drx.q[17] + ids[0] * 100  # buffer area offset in region 0 == gpa here
    assert NetHeader.decode(mem.read(first, 12)) == NetHeader(num_buffers=3)


def test_no_mrg_small_buffer_drops_frame_and_keeps_buffer(mem):
    _, drx, _, dev_rx = pair(mem, num=8, buf=100)
    drx.refill()
    data, lens = batch([200, 50])
    r = dev_rx.deliver(data, lens, 2)
    assert (r.consumed, r.dropped) == (2, 1)
    assert dev_rx.state.used_idx == 1  # only the 50-byte frame used a buffer
    out, out_lens = np.zeros((4, SLOT), np.uint8), np.zeros(4, np.uint32)
    assert drx.reap_rx(out, out_lens) == (1, 0)
    assert out[0, :50].tobytes() == data[1, :50].tobytes()


def test_mrg_waits_when_buffers_run_out_mid_frame(mem):
    _, drx, _, dev_rx = pair(mem, num=8, buf=100, mrg=True)
    drx.refill(2)
    data, lens = batch([60, 300])
    r = dev_rx.deliver(data, lens, 2)
    assert (r.consumed, r.dropped) == (1, 0)  # the 300-byte frame needs 4 buffers, 1 left
    assert dev_rx.state.last_avail_idx == 1 == dev_rx.state.used_idx
    drx.refill()
    r = dev_rx.deliver(data[1:], lens[1:], 1)
    assert r.consumed == 1
    out, out_lens = np.zeros((4, SLOT), np.uint8), np.zeros(4, np.uint32)
    assert drx.reap_rx(out, out_lens) == (2, 0)
    assert frames_of(out, out_lens, 2) == frames_of(data, lens, 2)


def test_rx_ring_empty_leaves_frames(mem):
    _, drx, _, dev_rx = pair(mem, num=8)
    drx.refill(3)
    data, lens = batch([64] * 5)
    r = dev_rx.deliver(data, lens, 5)
    assert (r.consumed, r.dropped) == (3, 0)


def test_device_loops_on_indirect_and_split_chains(mem):
    """Chains posted by the Python driver half (indirect, header split across descriptors)."""
    dq = DriverQueue.create(mem, 8, 0, indirect_max=4)
    dev = DeviceRing(dq.state(indirect=True), mem)
    data, lens = batch([100, 70])
    mem.write(DATA, bytes(12))
    mem.write(DATA + 0x100, data[0, :100].tobytes())
    mem.write(DATA + 0x200, bytes(12) + data[1, :70].tobytes())
    dq.add_buffers(mem, [(DATA, 5, False), (DATA + 5, 7, False), (DATA + 0x100, 100, False)], indirect=True)
    dq.add_buffers(mem, [(DATA + 0x200, 40, False), (DATA + 0x228, 42, False)])
    out, out_lens = np.zeros((4, SLOT), np.uint8), np.zeros(4, np.uint32)
    r = dev.collect(out, out_lens)
    assert (r.count, r.error) == (2, None)
    assert frames_of(out, out_lens, 2) == frames_of(data, lens, 2)

    rq = DriverQueue.create(mem, 8, 0x8000, indirect_max=4)
    dev_rx = DeviceRing(rq.state(indirect=True), mem)
    h = rq.add_buffers(mem, [(DATA + 0x1000, 5, True), (DATA + 0x1100, 7, True), (DATA + 0x1200, 200, True)],
                       indirect=True)
    assert dev_rx.deliver(data, lens, 1).consumed == 1
    assert rq.get_used(mem) == (h, 112)
    got = mem.read(DATA + 0x1000, 5) + mem.read(DATA + 0x1100, 7) + mem.read(DATA + 0x1200, 100)
    assert NetHeader.decode(got[:12]) == NetHeader(num_buffers=1)
    assert got[12:] == data[0, :100].tobytes()


def test_notification_decisions_in_compiled_loops(mem):
    dtx, _drx, dev_tx, _dev_rx = pair(mem, num=8, event_idx=True)
    data, lens = batch([64] * 4)
    assert dtx.post_tx(data, lens, 2)[2] is True  # avail_event 0: kick
    out, out_lens = np.zeros((8, SLOT), np.uint8), np.zeros(8, np.uint32)
    assert dev_tx.collect(out, out_lens).notify  # used_event 0: interrupt
    assert mem.read_u16(dev_tx.state.used_gpa + 4 + 8 * 8) == 2  # the device re-armed avail_event
    assert dtx.post_tx(data, lens, 1)[2] is True  # crosses avail_event 2
    # the driver has not reaped (used_event still 0): no second interrupt
    assert not dev_tx.collect(out, out_lens).notify
    assert dtx.reap_tx() == 3
    # without EVENT_IDX: the flags
    _dtx2, drx2, _dev_tx2, dev_rx2 = pair(mem, num=8, base=0x40000)
    drx2.refill()
    mem.write_u16(drx2.dq.avail_gpa, AVAIL_F_NO_INTERRUPT)
    r = dev_rx2.deliver(data, lens, 1)
    assert r.consumed == 1 and not r.notify
    dev_rx2.state.disable_notification(mem)
    assert drx2.reap_rx(out, out_lens) == (1, 0)
    assert drx2.refill() == (1, False)  # NO_NOTIFY: no kick


def test_driver_loops_refuse_a_hostile_device(mem):
    _, drx, _, dev_rx = pair(mem, num=8)
    drx.refill()
    mem.write(dev_rx.state.used_gpa + 4, struct.pack("<II", 7 + 100, 10))
    mem.write_u16(dev_rx.state.used_gpa + 2, 1)
    out, out_lens = np.zeros((8, SLOT), np.uint8), np.zeros(8, np.uint32)
    with pytest.raises(VirtqueueError) as ei:
        drx.reap_rx(out, out_lens)
    assert ei.value.code == RingError.USED_ID
    mem.write(dev_rx.state.used_gpa + 4, struct.pack("<II", 0, 5000))  # longer than the buffer
    with pytest.raises(VirtqueueError) as ei:
        drx.reap_rx(out, out_lens)
    assert ei.value.code == RingError.USED_LEN
    mem.write_u16(dev_rx.state.used_gpa + 2, 200)
    with pytest.raises(VirtqueueError) as ei:
        drx.reap_rx(out, out_lens)
    assert ei.value.code == RingError.USED_IDX


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("kernel", ["pop", "collect", "deliver"])
def test_hostile_ring_refused_by_compiled_loops(mem, name, kernel):
    dq, st, code = hostile_ring(mem, name)
    dev = DeviceRing(st, mem)
    out, out_lens = np.zeros((4, SLOT), np.uint8), np.zeros(4, np.uint32)
    if kernel == "pop":
        chains, err = dev.pop_chains(4)
        assert chains == []
    elif kernel == "collect":
        r = dev.collect(out, out_lens)
        err = r.error
        assert r.count == 0
    else:
        r = dev.deliver(out, np.full(4, 20, np.uint32), 4)
        err = r.error
        assert r.consumed == 0
    assert err == code
    assert st.broken and st.last_avail_idx == 0 and st.used_idx == 0
    assert mem.read_u16(dq.used_gpa + 2) == 0
    with pytest.raises(VirtqueueError, match="broken"):
        dev.collect(out, out_lens)


# -- differential fuzz: random descriptor tables and avail rings, Python walker vs numba --------
NUM = 8
DESC, AVAIL, TBL = 0x0, 0x100, 0x9FF80  # the indirect table sits at the end of region 0
ADDRS = [0x1000, 0x9FFF0, 0x9FF80, 0xA0000, 0xBFFF8, 0xC0000, MEM_SIZE - 16, MEM_SIZE, (1 << 62) - 8, 1 << 62,
         (1 << 64) - 16]
LENS = [0, 1, 12, 16, 32, 128, 0x10, 0x60000, 0xFFFFFFFF]

desc_st = st.tuples(st.one_of(st.sampled_from(ADDRS), st.integers(0, (1 << 64) - 1)),
                    st.one_of(st.sampled_from(LENS), st.integers(0, (1 << 32) - 1)),
                    st.one_of(st.integers(0, 7), st.integers(0, 0xFFFF)),
                    st.integers(0, NUM + 2))


def python_pop_all(mem, state):
    chains = []
    try:
        while (c := state.pop_chain(mem)) is not None:
            chains.append((c.head, [tuple(s) for s in c.segments]))
    except VirtqueueError as e:
        return chains, e.code
    return chains, None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(descs=st.lists(desc_st, min_size=NUM, max_size=NUM),
       table=st.lists(desc_st, min_size=8, max_size=8),
       ring=st.lists(st.integers(0, NUM + 1), min_size=NUM, max_size=NUM),
       avail_idx=st.integers(0, 0xFFFF), last=st.integers(0, 0xFFFF), near=st.booleans(),
       indirect=st.booleans())
def test_fuzz_walkers_agree(mem2, descs, table, ring, avail_idx, last, near, indirect):
    for i, d in enumerate(descs):
        put_desc(mem2, DESC, i, *d)
    for i, d in enumerate(table):
        put_desc(mem2, TBL, i, *d)
    for i, h in enumerate(ring):
        mem2.write_u16(AVAIL + 4 + 2 * i, h)
    if near:
        avail_idx = (last + avail_idx % (NUM + 2)) & 0xFFFF
    mem2.write_u16(AVAIL + 2, avail_idx)
    ref = QueueState(NUM, DESC, AVAIL, 0x1000, last_avail_idx=last, indirect=indirect)
    fast = QueueState(NUM, DESC, AVAIL, 0x1000, last_avail_idx=last, indirect=indirect)
    want_chains, want_err = python_pop_all(mem2, ref)
    got_chains, got_err = DeviceRing(fast, mem2).pop_chains(NUM + 1)
    assert got_err == want_err
    assert got_chains == want_chains
    assert fast.last_avail_idx == ref.last_avail_idx
    for _, segs in got_chains:  # every accepted segment lies inside guest memory
        for gpa, ln, _ in segs:
            mem2.translate(gpa, ln)


def test_bench_loopback_runs():
    assert bench_loopback(frames=20000, size=64, batch=64, num=256) > 0
