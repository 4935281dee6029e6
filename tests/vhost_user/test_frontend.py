"""vhost_user.frontend: the request order (driven sans-IO with scripted replies), reply
checking, and the whole sequence against our backend over a real socketpair."""

from __future__ import annotations

import errno

import pytest
from vhost_user_helpers import OFFERED, GuestSide, Pair, open_fds

from vxdp.vhost_user import messages as m
from vxdp.vhost_user.errors import LocalProtocolError, RemoteProtocolError, RequestFailed
from vxdp.vhost_user.frontend import FrontendSession, run
from vxdp.vhost_user.messages import FrontendReq as R
from vxdp.vhost_user.messages import ProtocolFeature as PF

WANT = (1 << 32) | m.F_PROTOCOL_FEATURES


class Scripted:
    """Answers like a well-behaved backend, recording the requests (pure, no I/O)."""

    def __init__(self, features=OFFERED, protocol=int(PF.MQ | PF.REPLY_ACK), queue_num=1, ack=0):
        self.sent: list[m.Message] = []
        self.features, self.protocol, self.queue_num, self.ack = features, protocol, queue_num, ack

    def __call__(self, msg: m.Message):
        self.sent.append(msg)
        if not m.expects_reply(msg):
            return None
        value = {R.GET_FEATURES: self.features, R.GET_PROTOCOL_FEATURES: self.protocol,
                 R.GET_QUEUE_NUM: self.queue_num}
        if msg.request == R.GET_VRING_BASE:
            return m.reply(msg.request, m.VringState(msg.payload.index, 42))
        return m.reply(msg.request, m.U64(value.get(msg.request, self.ack)))


@pytest.fixture
def guest():
    g = GuestSide()
    yield g
    g.close()


def test_qemu_order(guest):
    fe = FrontendSession(WANT)
    be = Scripted()
    assert run(fe.negotiate(), be) == OFFERED
    run(fe.start(guest.regions, guest.vrings), be)
    assert run(fe.stop_vring(1), be) == 42
    names = [x.request for x in be.sent]
    per_vring = [R.SET_VRING_NUM, R.SET_VRING_BASE, R.SET_VRING_ADDR, R.SET_VRING_KICK, R.SET_VRING_CALL]
    assert names == ([R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.SET_PROTOCOL_FEATURES, R.GET_QUEUE_NUM,
                      R.SET_OWNER, R.SET_FEATURES, R.SET_MEM_TABLE] + per_vring * 2
                     + [R.SET_VRING_ENABLE] * 2 + [R.GET_VRING_BASE])
    mem = be.sent[6]
    assert mem.need_reply and mem.fds == (guest.memfd, guest.memfd)
    assert be.sent[2].payload == m.U64(int(PF.MQ | PF.REPLY_ACK))
    assert be.sent[5].payload == m.U64(WANT)
    addr = be.sent[9].payload
    v0 = guest.vrings[0]
    assert (addr.descriptor, addr.available, addr.used) == (v0.desc_uva, v0.avail_uva, v0.used_uva)


def test_without_protocol_features():
    fe = FrontendSession(1 << 32)
    be = Scripted(features=1 << 32)
    run(fe.negotiate(), be)
    assert [x.request for x in be.sent] == [R.GET_FEATURES, R.SET_OWNER]
    assert list(fe.enable_vring(0)) == []  # rings start enabled: nothing to send


def test_nonzero_ack_raises(guest):
    fe = FrontendSession(WANT)
    run(fe.negotiate(), Scripted())
    with pytest.raises(RequestFailed, match="SET_FEATURES: backend refused") as ei:
        run(fe.set_features(), Scripted(ack=errno.EINVAL))
    assert ei.value.errno == errno.EINVAL


def test_unexpected_replies():
    fe = FrontendSession(WANT)
    with pytest.raises(RemoteProtocolError, match="reply to GET_FEATURES is for GET_STATUS"):
        run(fe.negotiate(), lambda msg: m.reply(R.GET_STATUS, m.U64(0)))
    with pytest.raises(RemoteProtocolError, match="supports 1 queue pairs, we need 2"):
        run(FrontendSession(WANT, queue_pairs=2).negotiate(), Scripted())
    with pytest.raises(RemoteProtocolError, match="reply for vring 3"):
        run(fe.stop_vring(0), lambda msg: m.reply(R.GET_VRING_BASE, m.VringState(3, 0)))
    with pytest.raises(LocalProtocolError, match="before negotiate"):
        run(FrontendSession(WANT).set_features(), Scripted())


def test_against_our_backend(guest):
    before = open_fds()
    p = Pair(num_vrings=2)
    try:
        fe = FrontendSession(WANT, want_protocol=int(PF.MQ | PF.REPLY_ACK | PF.CONFIG), ack_all=True)
        run(fe.negotiate(), p.channel.exchange)
        assert fe.protocol == int(PF.MQ | PF.REPLY_ACK | PF.CONFIG) and fe.queue_num == 1
        run(fe.start(guest.regions, guest.vrings), p.channel.exchange)
        assert p.device.started == {0, 1}
        assert run(fe.get_config(4, 4), p.channel.exchange) == bytes([4, 5, 6, 7])
        assert [run(fe.stop_vring(i), p.channel.exchange) for i in (0, 1)] == [7, 7]
        assert p.device.started == set()
    finally:
        p.close()
    assert open_fds() == before


def test_backend_refusal_reaches_frontend(guest):
    p = Pair(num_vrings=1)
    try:
        fe = FrontendSession(WANT)
        run(fe.negotiate(), p.channel.exchange)
        run(fe.set_features(), p.channel.exchange)
        run(fe.set_mem_table(guest.regions), p.channel.exchange)
        # vring 1 does not exist on a 1-vring device: the SET_VRING_NUM has no ack, so the
        # backend closes; the frontend sees the connection go.
        with pytest.raises(ConnectionError):
            run(fe.start_vring(guest.vrings[1]), p.channel.exchange)
            run(fe.stop_vring(1), p.channel.exchange)
        assert p.closed_by_backend.wait(10)
    finally:
        p.close()


def test_ack_all_turns_refusal_into_request_failed(guest):
    p = Pair(num_vrings=1)
    try:
        fe = FrontendSession(WANT, ack_all=True)
        run(fe.negotiate(), p.channel.exchange)
        run(fe.set_features(), p.channel.exchange)
        with pytest.raises(RequestFailed, match="SET_VRING_NUM: backend refused") as ei:
            run(fe.start_vring(guest.vrings[1]), p.channel.exchange)
        assert ei.value.errno == errno.EINVAL
        run(fe.set_mem_table(guest.regions), p.channel.exchange)  # the session carries on
        run(fe.start_vring(guest.vrings[0]), p.channel.exchange)
        assert p.device.started == {0}
    finally:
        p.close()
