import pytest
from ring_helpers import DATA, HOSTILE, MEM_SIZE, hostile_ring

from vxdp.virtio.virtqueue import (
    AVAIL_F_NO_INTERRUPT,
    USED_F_NO_NOTIFY,
    DriverQueue,
    QueueState,
    RingError,
    VirtqueueError,
    need_event,
    ring_layout,
    ring_sizes,
    walk_chain,
)


@pytest.mark.parametrize("num", [0, 3, 6, 100, 65536])
def test_queue_size_not_power_of_two_refused(mem, num):
    with pytest.raises(VirtqueueError, match="power of two"):
        QueueState(num, 0, 0x100, 0x1000)
    with pytest.raises(VirtqueueError, match="power of two"):
        DriverQueue.create(mem, num, 0)


def test_misaligned_or_outside_rings_refused(mem):
    with pytest.raises(VirtqueueError, match="aligned"):
        QueueState(8, 8, 0x100, 0x1000).validate(mem)
    with pytest.raises(VirtqueueError, match="used ring"):
        QueueState(8, 0, 0x100, MEM_SIZE - 16).validate(mem)


def test_ring_sizes_are_the_spec_areas_and_the_layout_ends_after_the_used_ring(mem):
    """One definition of the areas' sizes (virtio 1.x 2.7: flags, idx, ring, event): every end a
    ring reports is computed from it, so a ring whose last used byte (avail_event) is outside
    memory is refused."""
    assert ring_sizes(256) == (16 * 256, 2 + 2 + 2 * 256 + 2, 2 + 2 + 8 * 256 + 2)
    desc, avail, used, end = ring_layout(8, 0)
    assert (desc, avail) == (0, 128) and end == used + ring_sizes(8)[2]
    assert DriverQueue.create(mem, 8, 0).end_gpa == end
    assert ring_sizes(8)[2] == 70
    QueueState(8, 0, 0x100, MEM_SIZE - 72).validate(mem)  # ends 2 bytes before the end of memory
    with pytest.raises(VirtqueueError, match="used ring"):
        QueueState(8, 0, 0x100, MEM_SIZE - 68).validate(mem)  # its avail_event would be past it


def test_tx_chain_driver_to_device(mem):
    dq = DriverQueue.create(mem, 8, 0)
    st = dq.state()
    mem.write(DATA, b"header......")
    mem.write(DATA + 0x100, b"payload")
    head = dq.add_buffers(mem, [(DATA, 12, False), (DATA + 0x100, 7, False)])
    assert dq.nfree == 6
    chain = st.pop_chain(mem)
    assert chain.head == head and chain.readable_len == 19 and chain.writable_len == 0
    assert chain.read_all(mem) == b"header......payload"
    assert st.pop_chain(mem) is None
    st.push_used(mem, chain.head, 0)
    assert dq.get_used(mem) == (head, 0)
    assert dq.nfree == 8 and dq.get_used(mem) is None


def test_rx_chain_device_to_driver(mem):
    dq = DriverQueue.create(mem, 4, 0)
    st = dq.state()
    head = dq.add_buffers(mem, [(DATA, 8, True), (DATA + 64, 64, True)])
    chain = st.pop_chain(mem)
    written = chain.write_all(mem, b"0123456789abcdef")
    assert written == 16
    st.push_used(mem, chain.head, written)
    assert dq.get_used(mem) == (head, 16)
    assert mem.read(DATA, 8) + mem.read(DATA + 64, 8) == b"0123456789abcdef"


def test_indirect_chain(mem):
    dq = DriverQueue.create(mem, 8, 0, indirect_max=4)
    st = dq.state(indirect=True)
    mem.write(DATA, b"abc")
    head = dq.add_buffers(mem, [(DATA, 3, False), (DATA + 16, 32, True)], indirect=True)
    assert dq.nfree == 7  # one descriptor in the ring for the whole chain
    chain = st.pop_chain(mem)
    assert chain.head == head
    assert chain.segments == [(DATA, 3, False), (DATA + 16, 32, True)]
    st.push_used(mem, head, 32)
    assert dq.get_used(mem) == (head, 32) and dq.nfree == 8


def test_many_chains_wrap_the_ring(mem):
    dq = DriverQueue.create(mem, 4, 0)
    st = dq.state()
    for _ in range(50):  # wrap the ring many times
        heads = [dq.add_buffers(mem, [(DATA + 64 * k, 8, True)]) for k in range(4)]
        with pytest.raises(VirtqueueError, match="ring full"):
            dq.add_buffers(mem, [(DATA, 8, True)])
        for h in heads:
            c = st.pop_chain(mem)
            assert c.head == h
            st.push_used(mem, h, 8)
        assert [dq.get_used(mem)[0] for _ in range(4)] == heads


def test_indices_wrap_at_16_bits(mem):
    dq = DriverQueue.create(mem, 4, 0)
    dq.avail_idx = dq.kicked_avail = dq.last_used_idx = 0xFFFE
    st = dq.state()
    st.last_avail_idx = st.used_idx = 0xFFFE
    for _ in range(3):
        h = dq.add_buffers(mem, [(DATA, 8, True)])
        c = st.pop_chain(mem)
        st.push_used(mem, c.head, 1)
        assert dq.get_used(mem) == (h, 1)
    assert st.last_avail_idx == 1 and dq.avail_idx == 1


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_ring_refused_by_python_walker(mem, name):
    dq, st, code = hostile_ring(mem, name)
    with pytest.raises(VirtqueueError) as ei:
        st.pop_chain(mem)
    assert ei.value.code == code
    assert st.broken and st.last_avail_idx == 0
    with pytest.raises(VirtqueueError, match="broken"):
        st.pop_chain(mem)
    assert mem.read_u16(dq.used_gpa + 2) == 0  # nothing published


def test_length_overflow_refused():
    from ring_helpers import make_avail, put_desc

    from vxdp.virtio.memory import GuestMemory
    from vxdp.virtio.virtqueue import DESC_F_NEXT
    big = GuestMemory.allocate(1 << 30)  # sparse memfd: 5 x 1 GiB readable segments overflow u32
    try:
        dq = DriverQueue.create(big, 8, 0)
        for i in range(5):
            put_desc(big, dq.desc_gpa, i, 0, 1 << 30, DESC_F_NEXT if i < 4 else 0, i + 1)
        make_avail(big, dq, [0])
        with pytest.raises(VirtqueueError) as ei:
            walk_chain(big, 8, dq.desc_gpa, 0, False)
        assert ei.value.code == RingError.LEN_OVERFLOW
    finally:
        big.close()


def test_need_event_formula():
    assert need_event(0, 1, 0)
    assert not need_event(5, 3, 0)
    assert need_event(5, 6, 0) and not need_event(5, 6, 6)
    assert need_event(0xFFFF, 1, 0xFFFE)  # across the wrap


def test_notification_suppression_without_event_idx(mem):
    dq = DriverQueue.create(mem, 8, 0)
    st = dq.state()
    dq.add_buffers(mem, [(DATA, 8, True)])
    assert dq.kick_needed(mem)
    st.disable_notification(mem)
    assert mem.read_u16(dq.used_gpa) == USED_F_NO_NOTIFY
    dq.add_buffers(mem, [(DATA, 8, True)])
    assert not dq.kick_needed(mem)
    assert st.enable_notification(mem)  # chains are pending: don't sleep
    assert mem.read_u16(dq.used_gpa) == 0
    c = st.pop_chain(mem)
    st.push_used(mem, c.head, 0)
    assert st.needs_notification(mem)
    dq.disable_interrupts(mem)
    assert mem.read_u16(dq.avail_gpa) == AVAIL_F_NO_INTERRUPT
    c = st.pop_chain(mem)
    st.push_used(mem, c.head, 0)
    assert not st.needs_notification(mem)
    assert dq.enable_interrupts(mem)  # used entries arrived meanwhile


def test_event_idx_both_directions(mem):
    dq = DriverQueue.create(mem, 8, 0, event_idx=True)
    st = dq.state()
    assert st.event_idx
    # device: avail_event = 0 -> first chain kicks; the second does not until the device re-arms
    dq.add_buffers(mem, [(DATA, 8, True)])
    assert dq.kick_needed(mem)
    dq.add_buffers(mem, [(DATA, 8, True)])
    assert not dq.kick_needed(mem)
    st.pop_chain(mem), st.pop_chain(mem)
    assert not st.enable_notification(mem)  # writes avail_event = 2, nothing pending
    dq.add_buffers(mem, [(DATA, 8, True)])
    assert dq.kick_needed(mem)
    # driver: used_event = 0 -> interrupt for the first used entry only, until the driver reaps
    st.push_used(mem, 0, 0)
    assert st.needs_notification(mem)
    st.push_used(mem, 1, 0)
    assert not st.needs_notification(mem)
    dq.get_used(mem), dq.get_used(mem)  # writes used_event = 2
    c = st.pop_chain(mem)
    st.push_used(mem, c.head, 0)
    assert st.needs_notification(mem)


def test_driver_refuses_a_hostile_device(mem):
    dq = DriverQueue.create(mem, 8, 0)
    st = dq.state()
    h = dq.add_buffers(mem, [(DATA, 8, True)])
    st.pop_chain(mem)
    st.push_used(mem, 5, 0)  # an id never posted
    with pytest.raises(VirtqueueError) as ei:
        dq.get_used(mem)
    assert ei.value.code == RingError.USED_ID
    dq2 = DriverQueue.create(mem, 8, 0x8000)
    st2 = dq2.state()
    h = dq2.add_buffers(mem, [(DATA, 8, True)])
    st2.pop_chain(mem)
    st2.push_used(mem, h, 9)  # more than the buffer holds
    with pytest.raises(VirtqueueError) as ei:
        dq2.get_used(mem)
    assert ei.value.code == RingError.USED_LEN
    mem.write_u16(dq2.used_gpa + 2, 100)
    with pytest.raises(VirtqueueError) as ei:
        dq2.get_used(mem)
    assert ei.value.code == RingError.USED_IDX


def test_add_buffers_refuses_bad_order(mem):
    dq = DriverQueue.create(mem, 8, 0)
    with pytest.raises(VirtqueueError, match="before writable"):
        dq.add_buffers(mem, [(DATA, 8, True), (DATA, 8, False)])
