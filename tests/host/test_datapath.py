"""NetDevice + Datapath in-process on a real veth port, driven through `Loop.process_events`
(waiting apart from processing), with the driver's rings in a real memfd: the device as the
vhost-user session would set it up, the rx backlog when the guest has too few buffers, the
err eventfd and NEEDS_RESET on a hostile ring, reset freeing memory and fds."""

from __future__ import annotations

import os
import select

import pytest
from host_helpers import quiet_lab

from vxdp.eventloop import Loop
from vxdp.frames import FrameBatch
from vxdp.host.datapath import Datapath
from vxdp.host.net_device import CTRL, RX, TX, NetDevice
from vxdp.netdev.port import Port
from vxdp.testing.netns import NetLab
from vxdp.vhost_user import messages as m
from vxdp.vhost_user.backend import DeviceError, Vring
from vxdp.virtio.features import Feature
from vxdp.virtio.memory import GuestMemory
from vxdp.virtio.net import NetConfig
from vxdp.virtio.virtqueue import DriverQueue

pytestmark = pytest.mark.privileged
NUM = 64
BUF = 2048


@pytest.fixture
def rig():
    with NetLab(prefix="vxhd") as lab:
        pair = quiet_lab(lab)
        loop = Loop()
        port = Port("vxp", netns=pair.ns_a)
        peer = Port("vxq", netns=pair.ns_b)
        dev = NetDevice(name="dp0")
        dp = Datapath(dev, port, loop)
        mem = GuestMemory.allocate(4 << 20)
        fds = {k: os.eventfd(0, os.EFD_NONBLOCK) for k in ("k0", "c0", "e0", "k1", "c1", "e1")}
        try:
            yield loop, dev, dp, mem, fds, peer
        finally:
            dp.close()
            dev.reset()
            port.close()
            peer.close()
            loop.close()
            mem.close()
            for fd in fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass


def _setup(dev: NetDevice, mem: GuestMemory, fds: dict) -> tuple[DriverQueue, DriverQueue]:
    """What a BackendSession does for a frontend: features, memory (a dup of the memfd: the
    device owns what it is given), rings by user address, eventfds, start."""
    dev.set_features(Feature.mask(Feature.VERSION_1, Feature.PROTOCOL_FEATURES))
    r = mem.regions[0]
    dev.set_mem_table([m.MemRegion(r.guest_phys_addr, r.size, r.userspace_addr, 0)], [os.dup(r.fd)])
    rx = DriverQueue.create(mem, NUM, 0)
    tx = DriverQueue.create(mem, NUM, (rx.end_gpa + 4095) & ~4095)
    for i, q in ((RX, rx), (TX, tx)):
        uva = lambda g: mem.gpa_to_uva(g, 1)
        dev.set_vring_kick(i, os.dup(fds[f"k{i}"]))
        dev.set_vring_call(i, os.dup(fds[f"c{i}"]))
        dev.set_vring_err(i, os.dup(fds[f"e{i}"]))
        dev.start_vring(i, Vring(num=NUM, addr=m.VringAddr(i, 0, uva(q.desc_gpa), uva(q.used_gpa), uva(q.avail_gpa)),
                                 enabled=True))
    return rx, tx


def _spin(loop: Loop, rounds: int = 50) -> None:
    for _ in range(rounds):
        loop.process_events(loop.get_events(0.02))


def _frames(n: int, size: int = 100) -> list[bytes]:
    return [b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x02" + b"\x88\xb5" + i.to_bytes(2, "big") + bytes(size - 16)
            for i in range(n)]


def test_config_space_and_features():
    dev = NetDevice(mac=b"\x02\x11\x22\x33\x44\x55", mtu=9000, extra_features=1 << 58)
    assert NetConfig.decode(dev.get_config(0, 12)) == NetConfig(mac=b"\x02\x11\x22\x33\x44\x55", mtu=9000)
    assert dev.offered >> 58 & 1 and dev.offered >> 17 & 1 and dev.offered >> 29 & 1
    with pytest.raises(DeviceError):
        dev.set_features(1 << 0)  # CSUM was not offered
    with pytest.raises(DeviceError):
        dev.get_config(10, 100)


def test_rx_backlog_waits_for_guest_buffers(rig):
    loop, dev, dp, mem, fds, peer = rig
    rx, _tx = _setup(dev, mem, fds)
    area = 0x100000
    for k in range(4):  # only four rx buffers
        rx.add_buffers(mem, [(area + k * BUF, BUF, True)])
    frames = _frames(10)
    b = FrameBatch.allocate(16)
    b.fill(frames)
    assert peer.send_batch(b) == 10
    _spin(loop)
    assert dp.rx.frames == 4 and dp.stats()["rx_backlog"] == 6
    got = [rx.get_used(mem) for _ in range(4)]
    assert [ln for _, ln in got] == [12 + len(f) for f in frames[:4]]
    assert mem.read(area + 12, len(frames[0])) == frames[0]  # header first, then the frame
    assert os.eventfd_read(fds["c0"]) >= 1  # the driver was interrupted
    for k in range(8):  # the guest adds buffers and kicks rx: the backlog goes in
        rx.add_buffers(mem, [(area + (4 + k) * BUF, BUF, True)])
    os.eventfd_write(fds["k0"], 1)
    _spin(loop)
    assert dp.rx.frames == 10 and dp.stats()["rx_backlog"] == 0 and dp.rx.drops == 0
    tail = [rx.get_used(mem) for _ in range(6)]
    assert mem.read(area + (4 + 5) * BUF + 12, len(frames[9])) == frames[9] and all(tail)


def test_tx_to_port_and_broken_ring(rig):
    loop, dev, dp, mem, fds, peer = rig
    _rx, tx = _setup(dev, mem, fds)
    area = 0x100000
    frames = _frames(5, 200)
    for k, f in enumerate(frames):
        mem.write(area + k * BUF, bytes(12) + f)
        tx.add_buffers(mem, [(area + k * BUF, 12 + len(f), False)])
    os.eventfd_write(fds["k1"], 1)
    _spin(loop)
    assert dp.tx.frames == 5 and dp.tx.bytes == 5 * 200
    b = FrameBatch.allocate(16)
    select.select([peer.fileno()], [], [], 5)
    got = []
    for _ in range(50):
        peer.recv_batch(b)
        got += b.frames()
        if len(got) >= 5:
            break
        select.select([peer.fileno()], [], [], 0.1)
    assert got == frames
    # a descriptor outside memory: NEEDS_RESET on tx only, err eventfd written, kick fd unwatched
    mem.write(tx.desc_gpa, (8 << 20).to_bytes(8, "little") + (64).to_bytes(4, "little") + bytes(4))
    mem.write_u16(tx.avail_gpa + 4 + 2 * (tx.avail_idx % NUM), 0)
    mem.write_u16(tx.avail_gpa + 2, tx.avail_idx + 1)
    os.eventfd_write(fds["k1"], 1)
    _spin(loop, 5)
    assert "OUT_OF_MEMORY" in dev.vrings[TX].error and not dev.vrings[TX].running
    assert os.eventfd_read(fds["e1"]) == 1
    assert dev.vrings[RX].running and dev.vrings[CTRL].state is None
    assert dev.vrings[TX].kick not in loop.readers()
    # the session ends: reset frees memory and closes every fd the device was given
    kick = dev.vrings[TX].kick
    dev.stop_vring(RX)
    dev.stop_vring(TX)
    dev.reset()
    assert dev.mem is None and all(v.kick is None and v.state is None for v in dev.vrings)
    with pytest.raises(OSError):
        os.fstat(kick)


def test_rx_buffers_added_while_delivering_need_no_kick(rig):
    """The lost-kick race: the driver adds buffers after the device read the avail idx but before
    it asked for a kick (avail_event), so the driver checked the old avail_event and sent none.
    The datapath re-reads the avail idx after a delivery that left a backlog and serves it then,
    not at the next tick (which this test never runs)."""
    loop, dev, dp, mem, fds, peer = rig
    rx, _tx = _setup(dev, mem, fds)
    area = 0x100000
    for k in range(4):
        rx.add_buffers(mem, [(area + k * BUF, BUF, True)])
    fast = dev.vrings[RX].fast
    real = fast.deliver
    added = []

    def deliver_while_the_driver_adds(data, lens, n):
        res = real(data, lens, n)
        if not added:  # the driver's buffers land during this call, unannounced
            for k in range(8):
                rx.add_buffers(mem, [(area + (4 + k) * BUF, BUF, True)])
            added.append(True)
        return res

    fast.deliver = deliver_while_the_driver_adds
    frames = _frames(10)
    b = FrameBatch.allocate(16)
    b.fill(frames)
    assert peer.send_batch(b) == 10
    _spin(loop)
    assert dp.rx.frames == 10 and dp.stats()["rx_backlog"] == 0 and dp.rx.drops == 0
    assert dp.notify.rx_kicks == 0 and dp.notify.rx_rechecks == 1 and dp.notify.rx_calls >= 1
    got = [rx.get_used(mem) for _ in range(10)]
    assert all(got) and mem.read(area + 9 * BUF + 12, len(frames[9])) == frames[9]
