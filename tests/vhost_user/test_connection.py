"""vhost_user.connection: framing whole, byte by byte and with trailing bytes; fd
attribution; fatal and non-fatal errors; a hypothesis fuzz (no other exception, no fd leak)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vhost_user_helpers import REQUESTS, fd_is_open, open_fds

from vxdp.vhost_user import messages as m
from vxdp.vhost_user.connection import CLOSED, NEED_DATA, Connection, Role
from vxdp.vhost_user.errors import LocalProtocolError, RemoteProtocolError
from vxdp.vhost_user.messages import FrontendReq as R


def make_fds(n: int) -> list[int]:
    return [os.eventfd(0) for _ in range(n)]


def drain(conn: Connection) -> list:
    out = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
        if ev is CLOSED:
            break
    return out


@pytest.mark.parametrize("req,payload,nfds", REQUESTS, ids=[r.name for r, _, _ in REQUESTS])
@pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
def test_every_request_framed(req, payload, nfds, mode):
    fds = make_fds(nfds)
    msg = m.Message(req, payload, m.VERSION, tuple(fds))
    sender = Connection(Role.FRONTEND)
    data, out_fds = sender.send(msg)
    assert out_fds == fds
    conn = Connection(Role.BACKEND)
    try:
        if mode == "whole":
            conn.receive_data(data, fds)
            assert drain(conn) == [msg]
        elif mode == "bytewise":
            # fds arrive with the first byte, as the kernel delivers them
            for i in range(len(data)):
                conn.receive_data(data[i:i + 1], fds if i == 0 else [])
                ev = conn.next_event()
                if i < len(data) - 1:
                    assert ev is NEED_DATA
            assert ev == msg
        else:
            nxt = m.Message(R.GET_FEATURES).encode()
            if fds:  # the kernel never returns bytes past an fd-carrying chunk in one read
                conn.receive_data(data, fds)
                conn.receive_data(nxt[:5])
            else:
                conn.receive_data(data + nxt[:5])
            assert conn.next_event() == msg
            assert conn.next_event() is NEED_DATA
            conn.receive_data(nxt[5:])
            assert conn.next_event() == m.Message(R.GET_FEATURES)
    finally:
        for fd in fds:
            os.close(fd)


def test_replies_framed_for_frontend():
    conn = Connection(Role.FRONTEND)
    back = Connection(Role.BACKEND)
    msgs = [m.reply(R.GET_FEATURES, m.U64(1 << 32)), m.reply(R.GET_VRING_BASE, m.VringState(1, 77)),
            m.ack(R.SET_MEM_TABLE, 0), m.reply(R.GET_CONFIG, m.Config(0, 2, 0, b"ab"))]
    data = b"".join(back.send(x)[0] for x in msgs)
    for i in range(len(data)):
        conn.receive_data(data[i:i + 1])
    assert drain(conn) == msgs


def test_fds_go_to_message_holding_last_byte():
    """A read holding an fd-less message and then the start of an fd-carrying one gives the
    fds to the second (how an AF_UNIX stream recvmsg returns them)."""
    fds = make_fds(1)
    a = m.Message(R.SET_OWNER).encode()
    b = m.Message(R.SET_VRING_CALL, m.VringFd(0), fds=tuple(fds)).encode()
    conn = Connection(Role.BACKEND)
    conn.receive_data(a + b[:3], fds)
    assert conn.next_event() == m.Message(R.SET_OWNER)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b[3:])
    got = conn.next_event()
    assert got.fds == tuple(fds)
    os.close(fds[0])


def test_eof_clean_and_truncated():
    conn = Connection(Role.BACKEND)
    conn.receive_data(m.Message(R.SET_OWNER).encode())
    conn.receive_data(b"")
    assert drain(conn) == [m.Message(R.SET_OWNER), CLOSED]

    conn = Connection(Role.BACKEND)
    conn.receive_data(m.Message(R.SET_OWNER).encode()[:7])
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a header") as ei:
        conn.next_event()
    assert ei.value.fatal and conn.broken

    conn = Connection(Role.BACKEND)
    conn.receive_data(m.Message(R.SET_FEATURES, m.U64(1)).encode()[:15])
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="SET_FEATURES: stream ended inside a 8-byte payload"):
        conn.next_event()


def test_oversize_is_fatal_without_buffering_and_closes_fds():
    fds = make_fds(2)
    conn = Connection(Role.BACKEND)
    conn.receive_data(struct.pack("=III", int(R.SET_MEM_TABLE), 1, 1 << 30) + bytes(100), fds)
    with pytest.raises(RemoteProtocolError, match="payload size 1073741824 over the 4096-byte limit") as ei:
        conn.next_event()
    assert ei.value.fatal
    assert not any(fd_is_open(fd) for fd in fds)
    with pytest.raises(RemoteProtocolError):  # stays broken
        conn.next_event()
    conn.receive_data(bytes(1 << 16))  # and does not keep buffering
    assert len(conn._buf) == 0


def test_bad_version_is_fatal():
    conn = Connection(Role.BACKEND)
    conn.receive_data(struct.pack("=III", 1, 2, 0))
    with pytest.raises(RemoteProtocolError, match="header version 2") as ei:
        conn.next_event()
    assert ei.value.fatal


def test_bad_message_is_skipped_and_its_fds_closed():
    fds = make_fds(1)
    conn = Connection(Role.BACKEND)
    conn.receive_data(m.Message(R.GET_FEATURES).encode(), fds)  # GET_FEATURES carries no fds
    conn.receive_data(m.Message(R.SET_OWNER).encode())
    with pytest.raises(RemoteProtocolError, match="GET_FEATURES: carries 1 fds, expected 0") as ei:
        conn.next_event()
    assert not ei.value.fatal and not fd_is_open(fds[0])
    assert conn.next_event() == m.Message(R.SET_OWNER)  # stream still in sync


def test_unknown_request_and_flags_are_skipped():
    conn = Connection(Role.BACKEND)
    conn.receive_data(struct.pack("=III", 200, 1, 3) + b"abc")
    conn.receive_data(struct.pack("=III", 1, 1 | 0x40, 0))
    conn.receive_data(m.Message(R.SET_OWNER).encode())
    with pytest.raises(RemoteProtocolError, match="request 200: unknown request code"):
        conn.next_event()
    with pytest.raises(RemoteProtocolError, match="unknown header flags 0x40"):
        conn.next_event()
    assert conn.next_event() == m.Message(R.SET_OWNER)


def test_local_misuse():
    conn = Connection(Role.FRONTEND)
    with pytest.raises(LocalProtocolError):
        conn.send(m.ack(R.SET_OWNER))
    fds = make_fds(1)
    with pytest.raises(LocalProtocolError):
        Connection(Role.BACKEND).receive_data(b"", fds)
    assert not fd_is_open(fds[0])


def test_close_releases_pending_fds():
    fds = make_fds(3)
    conn = Connection(Role.BACKEND)
    conn.receive_data(b"\x05\x00", fds)
    assert conn.pending_fds == 3
    conn.close()
    assert not any(fd_is_open(fd) for fd in fds)


chunks = st.lists(st.tuples(st.binary(max_size=64), st.integers(0, 2)), max_size=12)
# A mix of valid messages and random bytes, so the fuzz gets past the header check often.
valid = st.sampled_from([m.Message(r, p).encode() for r, p, n in REQUESTS if n == 0])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(valid, st.binary(max_size=48)), max_size=8), cuts=st.lists(st.integers(1, 40), max_size=10),
       fdcounts=st.lists(st.integers(0, 2), max_size=10), eof=st.booleans())
def test_fuzz_receive_next_event(parts, cuts, fdcounts, eof):
    before = open_fds()
    data = b"".join(parts)
    conn = Connection(Role.BACKEND)
    got_fds: list[int] = []
    pos = 0
    i = 0
    while pos < len(data):
        n = cuts[i % len(cuts)] if cuts else len(data)
        fds = make_fds(fdcounts[i % len(fdcounts)]) if fdcounts else []
        conn.receive_data(data[pos:pos + n], fds)
        pos += n
        i += 1
        for _ in range(len(data) + 2):
            try:
                ev = conn.next_event()
            except RemoteProtocolError as exc:
                if exc.fatal:
                    break
                continue
            if ev is NEED_DATA or ev is CLOSED:
                break
            assert isinstance(ev, m.Message)
            got_fds.extend(ev.fds)
    if eof:
        conn.receive_data(b"")
        for _ in range(len(data) + 2):
            try:
                if conn.next_event() in (CLOSED, NEED_DATA):
                    break
            except RemoteProtocolError as exc:
                if exc.fatal:
                    break
    for fd in got_fds:  # fds handed out are the caller's to close
        os.close(fd)
    conn.close()
    assert open_fds() == before
