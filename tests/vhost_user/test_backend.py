"""vhost_user.backend: the session paired with a frontend over a real AF_UNIX socketpair,
with real memfds and eventfds: QEMU 7.2's sequence, a testpmd-like one, and hostile input."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vhost_user_helpers import OFFERED, GuestSide, Pair, RecordingDevice, open_fds

from vxdp.vhost_user import messages as m
from vxdp.vhost_user.backend import BackendSession, DeviceError
from vxdp.vhost_user.connection import Connection, Role
from vxdp.vhost_user.messages import FrontendReq as R
from vxdp.vhost_user.messages import ProtocolFeature as PF
from vxdp.vhost_user.transport import send_message

NEED = m.VERSION | m.FLAG_NEED_REPLY


@pytest.fixture
def guest():
    g = GuestSide()
    yield g
    g.close()


@pytest.fixture
def pair():
    before = open_fds()
    p = Pair(num_vrings=3)
    yield p
    p.close()
    assert open_fds() == before, "fd leak"


def ex(p: Pair, req, payload=m.EMPTY, fds=(), flags=m.VERSION):
    return p.channel.exchange(m.Message(req, payload, flags, tuple(fds)))


def raw(p: Pair, req: int, body: bytes = b"", flags: int = m.VERSION, fds=(), size=None):
    send_message(p.fsock, struct.pack("=III", req, flags, len(body) if size is None else size) + body, list(fds))


def handshake(p: Pair, protocol=PF.REPLY_ACK):
    assert ex(p, R.GET_FEATURES).payload == m.U64(OFFERED)
    ex(p, R.SET_PROTOCOL_FEATURES, m.U64(int(protocol)))
    ex(p, R.SET_OWNER)


def test_qemu_72_sequence(pair, guest):
    p = pair
    rep = ex(p, R.GET_FEATURES)
    assert rep.flags == 0x5 and rep.payload.value == OFFERED
    pf = ex(p, R.GET_PROTOCOL_FEATURES).payload.value
    assert pf == int(PF.MQ | PF.REPLY_ACK | PF.CONFIG)
    ex(p, R.SET_PROTOCOL_FEATURES, m.U64(int(PF.REPLY_ACK)))
    ex(p, R.SET_OWNER)
    ex(p, R.GET_FEATURES)
    for v in guest.vrings[:2]:
        ex(p, R.SET_VRING_CALL, m.VringFd(v.index), [v.call_fd])
        ex(p, R.SET_VRING_ERR, m.VringFd(v.index), [v.call_fd])
    ex(p, R.SET_VRING_ENABLE, m.VringState(0, 1))
    ex(p, R.SET_VRING_ENABLE, m.VringState(1, 1))
    ex(p, R.SET_FEATURES, m.U64((1 << 32) | m.F_PROTOCOL_FEATURES))
    table = m.MemoryTable(tuple(r.wire() for r in guest.regions))
    ack = ex(p, R.SET_MEM_TABLE, table, [r.fd for r in guest.regions], flags=NEED)
    assert ack.flags == 0x5 and ack.payload == m.U64(0)
    for v in guest.vrings[:2]:
        ex(p, R.SET_VRING_NUM, m.VringState(v.index, v.num))
        ex(p, R.SET_VRING_BASE, m.VringState(v.index, 3))
        ex(p, R.SET_VRING_ADDR, m.VringAddr(v.index, 0, v.desc_uva, v.used_uva, v.avail_uva))
        ex(p, R.SET_VRING_KICK, m.VringFd(v.index), [v.kick_fd])
        ex(p, R.SET_VRING_CALL, m.VringFd(v.index), [v.call_fd])
    # the fds the device got are the frontend's files: the memfd and working eventfds
    dev = p.device
    with pytest.raises(ConnectionError):  # MQ not negotiated: a GET we cannot answer closes
        ex(p, R.GET_QUEUE_NUM)
    assert p.closed_by_backend.wait(10)
    names = dev.names()
    assert names.index("set_mem_table") < names.index("start_vring")
    # the device is handed the session's record of each ring: size and base as set, enabled before it started
    v0, v1 = guest.vrings[:2]
    assert ("start_vring", 0, v0.num, 3) in dev.calls and ("start_vring", 1, v1.num, 3) in dev.calls
    assert dev.rings[0].enabled and dev.rings[1].enabled


def test_qemu_stop_and_eventfds(pair, guest):
    p = pair
    handshake(p)
    ex(p, R.SET_FEATURES, m.U64(1 << 32))
    ex(p, R.SET_MEM_TABLE, m.MemoryTable(tuple(r.wire() for r in guest.regions)),
       [r.fd for r in guest.regions], flags=NEED)
    v = guest.vrings[0]
    for req, pl, fds in [(R.SET_VRING_NUM, m.VringState(0, v.num), []),
                         (R.SET_VRING_BASE, m.VringState(0, 10), []),
                         (R.SET_VRING_ADDR, m.VringAddr(0, 0, v.desc_uva, v.used_uva, v.avail_uva), []),
                         (R.SET_VRING_KICK, m.VringFd(0), [v.kick_fd]),
                         (R.SET_VRING_CALL, m.VringFd(0), [v.call_fd])]:
        assert ex(p, req, pl, fds, flags=NEED).payload == m.U64(0)
    dev = p.device
    assert dev.started == {0}
    assert dev.mem_inodes == [os.fstat(guest.memfd).st_ino] * 2
    os.eventfd_write(v.kick_fd, 1)  # the guest kicks; the device's fd sees it
    assert os.eventfd_read(dev.fds[("kick", 0)]) == 1
    os.eventfd_write(dev.fds[("call", 0)], 1)  # the device calls; the guest sees it
    assert os.eventfd_read(v.call_fd) == 1
    rep = ex(p, R.GET_VRING_BASE, m.VringState(0, 0))
    assert rep.payload == m.VringState(0, 17) and dev.started == set()
    # restart needs a new kick
    ex(p, R.SET_VRING_BASE, m.VringState(0, 17))
    assert dev.started == set()
    ex(p, R.SET_VRING_KICK, m.VringFd(0), [v.kick_fd], flags=NEED)
    assert dev.started == {0}


def test_testpmd_like_order(guest):
    """DPDK virtio_user: SET_OWNER first, MQ/STATUS/CONFIG, ring setup before the memory table."""
    p = Pair(num_vrings=2, protocol_features=PF.MQ | PF.REPLY_ACK | PF.CONFIG | PF.STATUS)
    try:
        _testpmd_like(p, guest)
    finally:
        p.close()


def _testpmd_like(p, guest):
    ex(p, R.SET_OWNER)
    ex(p, R.GET_FEATURES)
    ex(p, R.GET_PROTOCOL_FEATURES)
    ex(p, R.SET_PROTOCOL_FEATURES, m.U64(int(PF.MQ | PF.REPLY_ACK | PF.STATUS | PF.CONFIG)))
    assert ex(p, R.GET_QUEUE_NUM).payload == m.U64(1)
    ex(p, R.SET_STATUS, m.U64(0x3), flags=NEED)
    assert ex(p, R.GET_STATUS).payload == m.U64(0x3)
    assert ex(p, R.GET_CONFIG, m.Config(0, 6, 0, bytes(6))).payload.payload == bytes(range(6))
    ex(p, R.SET_FEATURES, m.U64(1 << 32 | m.F_PROTOCOL_FEATURES), flags=NEED)
    for v in guest.vrings[:2]:
        ex(p, R.SET_VRING_CALL, m.VringFd(v.index), [v.call_fd])
        ex(p, R.SET_VRING_NUM, m.VringState(v.index, v.num))
        ex(p, R.SET_VRING_BASE, m.VringState(v.index, 0))
        ex(p, R.SET_VRING_ADDR, m.VringAddr(v.index, 0, v.desc_uva, v.used_uva, v.avail_uva))
        ex(p, R.SET_VRING_KICK, m.VringFd(v.index), [v.kick_fd])
    assert p.device.started == set()  # no memory yet
    ex(p, R.SET_MEM_TABLE, m.MemoryTable(tuple(r.wire() for r in guest.regions)),
       [r.fd for r in guest.regions], flags=NEED)
    assert p.device.started == {0, 1}
    assert not any(p.device.rings[i].enabled for i in (0, 1))
    for i in (0, 1):
        ex(p, R.SET_VRING_ENABLE, m.VringState(i, 1), flags=NEED)
    assert all(p.device.rings[i].enabled for i in (0, 1))  # a running ring's record, updated in place
    ex(p, R.SET_STATUS, m.U64(0xF), flags=NEED)
    assert ("set_status", 0xF) in p.device.calls
    assert [ex(p, R.GET_VRING_BASE, m.VringState(i, 0)).payload.num for i in (0, 1)] == [7, 7]


# ------------------------------------------------------------------ hostile input: error acks

def refused(p: Pair, req, payload=m.EMPTY, fds=(), code=errno.EINVAL):
    """Send with need_reply, expect an error ack with ``code``, then prove the session lives."""
    raw(p, int(req), payload.pack(), NEED, fds)
    rep = p.channel.recv()
    assert rep.request == req and rep.payload == m.U64(code), rep
    assert ex(p, R.GET_FEATURES).payload == m.U64(OFFERED)


def test_unknown_request_code_closes_session(pair):
    handshake(pair)
    raw(pair, 77, b"xyz", NEED)
    # unknown code: we cannot answer under an unknown request number -> closed
    assert pair.closed_by_backend.wait(10)


def test_unsupported_known_request_gets_error_ack_and_fd_closed(pair):
    handshake(pair)
    fd = os.eventfd(0)
    before = open_fds()
    refused(pair, R.SET_LOG_FD, fds=[fd], code=errno.EOPNOTSUPP)
    assert open_fds() == before  # the duplicate the backend received was closed
    os.close(fd)


def test_vring_index_out_of_range(pair):
    handshake(pair)
    refused(pair, R.SET_VRING_NUM, m.VringState(3, 256))
    refused(pair, R.SET_VRING_ENABLE, m.VringState(200, 1))


@pytest.mark.parametrize("num", [0, 100, 65536, 3])
def test_ring_size_not_power_of_two(pair, num):
    handshake(pair)
    refused(pair, R.SET_VRING_NUM, m.VringState(0, num))


def test_mem_table_overlap_and_zero_size(pair, guest):
    handshake(pair)
    r0 = guest.regions[0].wire()
    overlap = m.MemRegion(0x1000, 0x2000, r0.userspace_addr + 0x100000, 0)
    before = open_fds()
    refused(pair, R.SET_MEM_TABLE, m.MemoryTable((r0, overlap)), [guest.memfd] * 2)
    zero = m.MemRegion(0x200000, 0, 0x9000000, 0)
    refused(pair, R.SET_MEM_TABLE, m.MemoryTable((r0, zero)), [guest.memfd] * 2)
    assert open_fds() == before
    assert "set_mem_table" not in pair.device.names()


def test_wrong_fd_counts(pair, guest):
    handshake(pair)
    table = m.MemoryTable(tuple(r.wire() for r in guest.regions))
    refused(pair, R.SET_MEM_TABLE, table, [], code=errno.EBADF)
    fd = os.eventfd(0)
    before = open_fds()
    refused(pair, R.SET_VRING_KICK, m.VringFd(0, no_fd=True), [fd], code=errno.EBADF)
    assert open_fds() == before
    os.close(fd)


def test_fds_on_get_features_closes_session_and_fd(pair):
    fd = os.eventfd(0)
    before = open_fds()
    raw(pair, int(R.GET_FEATURES), fds=[fd])
    assert pair.closed_by_backend.wait(10)
    assert pair.fsock.recv(16) == b""  # no reply, the backend hung up
    assert open_fds() <= before
    os.close(fd)


def test_state_violations(pair, guest):
    raw(pair, int(R.SET_PROTOCOL_FEATURES), m.U64(int(PF.REPLY_ACK)).pack())
    refused(pair, R.SET_VRING_NUM, m.VringState(0, 256), code=errno.EPROTO)  # before SET_OWNER
    ex(pair, R.SET_OWNER)
    refused(pair, R.SET_OWNER, code=errno.EBUSY)
    refused(pair, R.SET_FEATURES, m.U64(1 << 40))  # not offered
    refused(pair, R.SET_PROTOCOL_FEATURES, m.U64(int(PF.LOG_SHMFD)))
    refused(pair, R.SET_STATUS, m.U64(1), code=errno.EOPNOTSUPP)  # STATUS not negotiated
    # a started ring refuses SET_VRING_NUM
    ex(pair, R.SET_MEM_TABLE, m.MemoryTable(tuple(r.wire() for r in guest.regions)),
       [r.fd for r in guest.regions], flags=NEED)
    v = guest.vrings[0]
    ex(pair, R.SET_VRING_NUM, m.VringState(0, v.num))
    ex(pair, R.SET_VRING_ADDR, m.VringAddr(0, 0, v.desc_uva, v.used_uva, v.avail_uva))
    ex(pair, R.SET_VRING_KICK, m.VringFd(0), [v.kick_fd], flags=NEED)
    assert pair.device.started == {0}
    refused(pair, R.SET_VRING_NUM, m.VringState(0, 128), code=errno.EBUSY)


def test_ring_outside_memory_refused_at_start(pair, guest):
    handshake(pair)
    ex(pair, R.SET_MEM_TABLE, m.MemoryTable(tuple(r.wire() for r in guest.regions)),
       [r.fd for r in guest.regions], flags=NEED)
    ex(pair, R.SET_VRING_NUM, m.VringState(0, 256))
    ex(pair, R.SET_VRING_ADDR, m.VringAddr(0, 0, 0x1000, 0x3000, 0x2000))
    v = guest.vrings[0]
    refused(pair, R.SET_VRING_KICK, m.VringFd(0), [v.kick_fd], code=errno.EFAULT)
    assert pair.device.started == set()


def test_device_error_becomes_ack(guest):
    class Failing(RecordingDevice):
        def set_mem_table(self, regions, fds):
            super().set_mem_table(regions, fds)
            raise DeviceError("mmap failed", errno.ENOMEM)

    p = Pair(device=Failing())
    try:
        handshake(p)
        refused(p, R.SET_MEM_TABLE, m.MemoryTable(tuple(r.wire() for r in guest.regions)),
                [r.fd for r in guest.regions], code=errno.ENOMEM)
    finally:
        p.close()


def test_get_config_error_is_size_zero(pair):
    ex(pair, R.SET_PROTOCOL_FEATURES, m.U64(int(PF.CONFIG)))
    rep = ex(pair, R.GET_CONFIG, m.Config(250, 6, 0, bytes(6)))
    assert rep.payload.error  # our config is 32 bytes: the device gave fewer -> size-0 answer
    assert ex(pair, R.GET_CONFIG, m.Config(2, 2, 0, bytes(2))).payload.payload == b"\x02\x03"


# ------------------------------------------------------------------ hostile input: closing

@pytest.mark.parametrize("wire", [
    b"\x01\x00\x00",  # truncated header
    struct.pack("=III", 5, 1, 5000) + bytes(64),  # size over the limit
    struct.pack("=III", 1, 3, 0),  # header version 3
    struct.pack("=III", 8, 1, 8) + bytes(4),  # truncated payload
])
def test_framing_errors_close_session_and_reset_device(pair, wire):
    handshake(pair)
    pair.fsock.sendall(wire)
    pair.fsock.shutdown(1)  # (for the truncated cases)
    assert pair.closed_by_backend.wait(10)
    assert pair.device.names()[-1] == "reset"


def test_error_without_reply_wanted_closes(pair):
    handshake(pair)
    raw(pair, int(R.SET_VRING_NUM), m.VringState(9, 256).pack())
    assert pair.closed_by_backend.wait(10)
    # and a new session on the same device works (the process stays usable)
    p2 = Pair(device=pair.device)
    try:
        handshake(p2)
        assert ex(p2, R.SET_VRING_NUM, m.VringState(0, 256), flags=NEED).payload == m.U64(0)
    finally:
        p2.close()


# ------------------------------------------------------------------ other requests, fuzz

def test_reset_owner_stops_rings_and_backend_req_fd_is_dropped(pair, guest):
    handshake(pair)
    ex(pair, R.SET_MEM_TABLE, m.MemoryTable(tuple(r.wire() for r in guest.regions)),
       [r.fd for r in guest.regions], flags=NEED)
    v = guest.vrings[0]
    ex(pair, R.SET_VRING_NUM, m.VringState(0, v.num))
    ex(pair, R.SET_VRING_ADDR, m.VringAddr(0, 0, v.desc_uva, v.used_uva, v.avail_uva))
    ex(pair, R.SET_VRING_KICK, m.VringFd(0, no_fd=True), flags=NEED)  # polling mode
    assert pair.device.started == {0} and ("set_vring_kick", 0, False) in pair.device.calls
    sock = socket.socketpair()
    before = open_fds()
    assert ex(pair, R.SET_BACKEND_REQ_FD, fds=[sock[0].fileno()], flags=NEED).payload == m.U64(0)
    assert open_fds() == before  # accepted and closed
    sock[0].close()
    sock[1].close()
    assert ex(pair, R.RESET_OWNER, flags=NEED).payload == m.U64(0)
    assert pair.device.started == set()
    refused(pair, R.ADD_MEM_REG, m.SingleMemRegion(guest.regions[0].wire()),
            [guest.memfd], code=errno.EOPNOTSUPP)


_SIZES = {R.SET_MEM_TABLE: [8, 40, 72], R.GET_CONFIG: [12, 14, 18], R.SET_CONFIG: [12, 14]}


@st.composite
def wire_messages(draw):
    req = draw(st.sampled_from(sorted(m.REQUEST_DECODERS) + [R.SET_LOG_BASE, 55]))
    sizes = _SIZES.get(req, [0, 8, 40])
    body = draw(st.binary(min_size=0, max_size=80)) if draw(st.booleans()) else None
    if body is None:
        n = draw(st.sampled_from(sizes))
        small = st.integers(0, 3).map(lambda x: x.to_bytes(4, "little"))
        words = draw(st.lists(st.one_of(small, st.binary(min_size=4, max_size=4)), min_size=n // 4, max_size=n // 4))
        body = b"".join(words)
    flags = draw(st.sampled_from([m.VERSION, NEED, NEED, NEED]))
    return int(req), flags, body, draw(st.integers(0, 2))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(wire_messages(), max_size=25))
def test_fuzz_backend_session(msgs):
    """Random well-framed requests: the session answers, acks or closes; never anything else,
    and every fd it was given is closed once the session is torn down."""
    before = open_fds()
    dev = RecordingDevice()
    session = BackendSession(dev, features=OFFERED, num_vrings=2)
    conn = Connection(Role.BACKEND)
    # Start owned with REPLY_ACK so most refusals are acked and the fuzz reaches deep states.
    prefix = [(int(R.SET_PROTOCOL_FEATURES), m.VERSION, m.U64(int(PF.MQ | PF.REPLY_ACK | PF.CONFIG)).pack(), 0),
              (int(R.SET_OWNER), m.VERSION, b"", 0)]
    for req, flags, body, nfds in prefix + msgs:
        conn.receive_data(struct.pack("=III", req, flags, len(body)) + body, [os.eventfd(0) for _ in range(nfds)])
        out, closed = session.process(conn)
        for b in out:
            assert struct.unpack_from("=I", b, 4)[0] == 0x5
        if closed:
            session.disconnect()
            conn = Connection(Role.BACKEND)
    conn.close()
    session.disconnect()
    assert open_fds() == before
