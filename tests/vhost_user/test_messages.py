"""vhost_user.messages: payload structs round-trip, syntax checks, dispatch checks."""

from __future__ import annotations

import errno
import struct

import pytest
from vhost_user_helpers import REGION, REQUESTS

from vxdp.vhost_user import messages as m
from vxdp.vhost_user.errors import LocalProtocolError, RemoteProtocolError
from vxdp.vhost_user.messages import FrontendReq as R


def split(wire: bytes) -> tuple[int, int, bytes]:
    req, flags, size = m.HEADER.unpack_from(wire)
    assert size == len(wire) - 12
    return req, flags, wire[12:]


def test_every_decoded_request_is_listed():
    assert {r for r, _, _ in REQUESTS} == set(m.REQUEST_DECODERS)


@pytest.mark.parametrize("req,payload,nfds", REQUESTS, ids=[r.name for r, _, _ in REQUESTS])
def test_request_roundtrip(req, payload, nfds):
    msg = m.Message(req, payload, m.VERSION | m.FLAG_NEED_REPLY)
    wire = msg.encode()
    assert wire[:4] == struct.pack("=I", req)  # native-endian header
    got = m.decode_request(*split(wire), nfds)
    assert got == msg


def test_header_layout_native_endian():
    wire = m.Message(R.SET_FEATURES, m.U64(0x1122334455667788)).encode()
    assert wire == struct.pack("=IIIQ", 2, 1, 8, 0x1122334455667788)


def test_mem_table_wire_size_is_8_plus_32_per_region():
    t = m.MemoryTable((REGION,))
    assert len(t.pack()) == 40 and t.size == 40


def test_vring_fd_bits():
    assert m.VringFd(3, no_fd=True).pack() == struct.pack("=Q", 0x103)
    v = m.VringFd.unpack(struct.pack("=Q", 0x205))
    assert not v.is_valid() and "reserved bits" in v.problem()


@pytest.mark.parametrize(
    "payload,needle",
    [
        (m.MemRegion(0, 0, 0, 0), "size 0"),
        (m.MemRegion(m.U64_MAX - 10, 0x100, 0, 0), "overflows"),
        (m.MemRegion(0, 0x100, m.U64_MAX, 0), "overflows"),
        (m.MemoryTable(()), "0 regions"),
        (m.MemoryTable((REGION,) * 9), "9 regions"),
        (m.VringAddr(0, 2, 0, 0, 0), "flags"),
        (m.Config(0, 4, 0, b"ab"), "size field"),
        (m.Config(250, 10, 0, bytes(10)), "beyond"),
        (m.Config(0, 1, 7, b"a"), "flags"),
    ],
)
def test_syntax_checks(payload, needle):
    assert not payload.is_valid()
    assert needle in payload.problem()


def test_valid_payloads_are_valid():
    for _, p, _ in REQUESTS:
        assert p.is_valid(), p


@pytest.mark.parametrize(
    "req,body,nfds,needle,code",
    [
        (99, b"", 0, "unknown request code", errno.EOPNOTSUPP),
        (R.SET_LOG_BASE, bytes(16), 0, "not supported", errno.EOPNOTSUPP),
        (R.SET_LOG_FD, b"", 1, "not supported", errno.EOPNOTSUPP),
        (R.GET_FEATURES, bytes(8), 0, "payload of 8 bytes, expected 0", errno.EINVAL),
        (R.SET_VRING_NUM, bytes(4), 0, "payload of 4 bytes", errno.EINVAL),
        (R.SET_MEM_TABLE, bytes(8 + 31), 1, "expected 8 + 32", errno.EINVAL),
        (R.GET_FEATURES, b"", 1, "carries 1 fds, expected 0", errno.EBADF),
        (R.SET_MEM_TABLE, m.MemoryTable((REGION,)).pack(), 0, "carries 0 fds, expected 1", errno.EBADF),
        (R.SET_VRING_KICK, m.VringFd(0, no_fd=True).pack(), 1, "carries 1 fds, expected 0", errno.EBADF),
        (R.SET_VRING_KICK, m.VringFd(0).pack(), 0, "carries 0 fds, expected 1", errno.EBADF),
        (R.SET_MEM_TABLE, struct.pack("=II", 0, 0), 0, "0 regions", errno.EINVAL),
        (R.SET_MEM_TABLE, m.MemoryTable((m.MemRegion(0, 0, 1, 0),)).pack(), 1, "size 0", errno.EINVAL),
    ],
)
def test_dispatch_errors_name_request(req, body, nfds, needle, code):
    with pytest.raises(RemoteProtocolError) as ei:
        m.decode_request(int(req), m.VERSION, body, nfds)
    assert needle in str(ei.value)
    assert m.req_name(req) in str(ei.value)
    assert ei.value.errno == code and not ei.value.fatal


def test_reply_flag_on_request_refused():
    with pytest.raises(RemoteProtocolError, match="reply flag set"):
        m.decode_request(int(R.GET_FEATURES), m.REPLY_FLAGS, b"", 0)


def test_reply_decoding():
    assert m.decode_reply(int(R.GET_VRING_BASE), 5, m.VringState(1, 9).pack(), 0).payload == m.VringState(1, 9)
    assert m.decode_reply(int(R.SET_MEM_TABLE), 5, m.U64(0).pack(), 0).payload == m.U64(0)
    assert m.decode_reply(int(R.GET_CONFIG), 5, b"", 0).payload.error
    with pytest.raises(RemoteProtocolError, match="reply flag missing"):
        m.decode_reply(int(R.GET_FEATURES), 1, bytes(8), 0)
    with pytest.raises(RemoteProtocolError, match="expected none"):
        m.decode_reply(int(R.GET_FEATURES), 5, bytes(8), 1)


def test_check_outgoing_refuses_misuse():
    with pytest.raises(LocalProtocolError, match="fds"):
        m.check_outgoing(m.Message(R.GET_FEATURES, fds=(5,)), as_reply=False)
    with pytest.raises(LocalProtocolError, match="reply flag"):
        m.check_outgoing(m.Message(R.GET_FEATURES), as_reply=True)
    with pytest.raises(LocalProtocolError, match="size 0"):
        m.check_outgoing(m.Message(R.SET_MEM_TABLE, m.MemoryTable((m.MemRegion(0, 0, 0, 0),)), fds=(3,)),
                         as_reply=False)
    m.check_outgoing(m.ack(R.SET_MEM_TABLE), as_reply=True)


@pytest.mark.parametrize("n,size", [(1, 8), (0, 40), (2, 40), (9, 8 + 32 * 8)])
def test_mem_table_count_must_match_size(n, size):
    body = struct.pack("=II", n, 0) + bytes(size - 8)
    with pytest.raises(RemoteProtocolError, match="SET_MEM_TABLE: nregions") as ei:
        m.decode_request(int(R.SET_MEM_TABLE), m.VERSION, body, n)
    assert not ei.value.fatal
