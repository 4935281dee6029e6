"""The generic control-virtqueue framing: class/command header, ack, round trips and refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vxdp.virtio.ctrl_framing import (
    Ack,
    CtrlClass,
    CtrlError,
    CtrlReply,
    CtrlRequest,
    MqCmd,
    NotfCoalCmd,
    StatsCmd,
    class_name,
)


def test_class_numbers_are_the_specs():
    # virtio-v1.4-cs01 §5.1.6.5: these numbers are fixed by the spec, BPF is ours and far from them
    assert [(c.name, int(c)) for c in CtrlClass] == [
        ("RX", 0), ("MAC", 1), ("VLAN", 2), ("ANNOUNCE", 3), ("MQ", 4), ("GUEST_OFFLOADS", 5),
        ("NOTF_COAL", 6), ("HASH_TUNNEL", 7), ("STATS", 8), ("BPF", 0x40),
    ]
    assert (Ack.OK, Ack.ERR) == (0, 1)
    assert MqCmd.RSS_CONFIG == 1 and NotfCoalCmd.VQ_GET == 3 and StatsCmd.GET == 1


def test_request_layout_and_round_trip():
    req = CtrlRequest(CtrlClass.MQ, MqCmd.VQ_PAIRS_SET, b"\x02\x00")
    assert req.encode() == b"\x04\x00\x02\x00"
    assert CtrlRequest.decode(req.encode()) == req
    assert CtrlRequest.decode(b"\x40\x07") == CtrlRequest(0x40, 7, b"")


@pytest.mark.parametrize("data", [b"", b"\x00"])
def test_request_without_header_is_refused(data):
    with pytest.raises(CtrlError, match="no class/command header"):
        CtrlRequest.decode(data)


def test_request_fields_must_be_u8():
    with pytest.raises(CtrlError, match="command 256"):
        CtrlRequest(0, 256)


def test_reply_layout_and_round_trip():
    rep = CtrlReply(Ack.OK, b"result")
    assert rep.encode() == b"\x00result"
    assert CtrlReply.decode(rep.encode()) == rep and rep.ok
    assert CtrlReply.decode(b"\x01") == CtrlReply(Ack.ERR) and not CtrlReply(Ack.ERR).ok


def test_reply_is_cut_to_the_writable_area():
    assert CtrlReply(Ack.OK, b"abcdef").encode(3) == b"\x00ab"
    assert CtrlReply(Ack.ERR, b"x").encode(0) == b""


@pytest.mark.parametrize("data,match", [(b"", "wrote no ack"), (b"\x02", "neither")])
def test_bad_replies_are_refused(data, match):
    with pytest.raises(CtrlError, match=match):
        CtrlReply.decode(data)


def test_class_name():
    assert class_name(4) == "MQ" and class_name(0x2A) == "class 0x2a"


@given(st.binary(max_size=64))
def test_decode_random_bytes_only_raises_ctrl_error(data):
    for decode in (CtrlRequest.decode, CtrlReply.decode):
        try:
            out = decode(data)
        except CtrlError:
            continue
        assert out.encode() == data  # whatever decodes re-encodes to the same bytes
