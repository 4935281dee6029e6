"""The device state blob (`vxdp.host.offload.state_format`): round trips, and every malformed blob is one
`OffloadProtocolError` naming the field, found before anything large is allocated. Pure: no kernel."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vxdp.bpf.isa import EXIT, Insn
from vxdp.bpf.obj import FuncInfo, LineInfo
from vxdp.host.offload.state_format import MAGIC, DeviceState, MapState, ProgState, decode_state, encode_state
from vxdp.offload.messages import ProgLoadRequest
from vxdp.offload.wire import Errno, OffloadProtocolError

PROG = ProgLoadRequest((Insn(0x18, 1, 1, 0, 3), Insn(0, 0, 0, 0, 0), Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)),
                       "GPL", "p", btf=b"\x9f\xeb\x01\x00" + bytes(20), func_info=(FuncInfo(0, 3),),
                       line_info=(LineInfo(0, 1, 2, 3, 4),))
STATE = DeviceState(
    maps=(MapState(3, "rxcnt", 2, 4, 8, 4, 0, False, 8, ((b"\0\0\0\0", b"\1" * 8), (b"\1\0\0\0", bytes(8)))),
          MapState(5, "jt", 3, 4, 4, 8, 0, True, 4, ((b"\0\0\0\0", struct.pack("<I", 7)),))),
    progs=(ProgState(7, PROG),), attached=7, next_handle=9)


def _crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def test_round_trip_keeps_every_field():
    blob = encode_state(STATE)
    assert blob.startswith(MAGIC) and decode_state(blob) == STATE
    assert decode_state(encode_state(DeviceState())) == DeviceState()


@given(st.lists(st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=3, max_size=3)),
                max_size=20, unique_by=lambda kv: kv[0]),
       st.text(max_size=40), st.booleans())
def test_round_trip_of_any_contents(entries, name, frozen):
    m = MapState(1, name, 1, 4, 3, 32, 0, frozen, 3, tuple(entries))
    assert decode_state(encode_state(DeviceState(maps=(m,), next_handle=2))) == DeviceState((m,), (), 0, 2)


@pytest.mark.parametrize("mutate, field", [
    (lambda b: b"NOTSTATE" + b[8:], "magic"),
    (lambda b: b[:8] + b"\x02\x00" + b[10:], "version"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "crc32"),
    (lambda b: b[:40], "crc32"),
    (lambda b: b"VXDP", "too short"),
    (lambda b: _crc(b[:-4] + b"\0"), "trailing"),
    (lambda b: _crc(b[:-5]), "run past the end"),
])
def test_damaged_blobs_are_refused_naming_the_field(mutate, field):
    with pytest.raises(OffloadProtocolError, match=field) as e:
        decode_state(mutate(encode_state(STATE)))
    assert e.value.code in (Errno.EINVAL, Errno.E2BIG)
    assert str(e.value).startswith("STATE_IMPORT: ")


@pytest.mark.parametrize("state, match", [
    (replace(STATE, attached=3), "attached: 3 is not one of the blob's programs"),
    (replace(STATE, progs=(ProgState(3, PROG),), attached=3), "3 appears twice"),
    (replace(STATE, maps=(replace(STATE.maps[0], handle=0),)), "0 is not a handle"),
    (replace(STATE, maps=(replace(STATE.maps[0], max_entries=1),)), "above the map's max_entries 1"),
])
def test_structure_is_checked(state, match):
    with pytest.raises(OffloadProtocolError, match=match):
        decode_state(encode_state(state))


def _one_map(key_size: int, value_len: int, n: int, data: bytes = b"") -> bytes:
    body = MAGIC + struct.pack("<HHIII", 1, 0, 2, 0, 1) + struct.pack("<6I", 1, 1, key_size, 4, 1 << 31, 0)
    body += struct.pack("<I", 1) + b"m" + b"\0" + struct.pack("<II", value_len, n) + data
    return _crc(body + struct.pack("<I", 0))


def test_huge_counts_are_refused_before_allocating():
    with pytest.raises(OffloadProtocolError, match="run past the end"):
        decode_state(_one_map(4, 4, 1 << 24))  # 16 M entries claimed, none present
    with pytest.raises(OffloadProtocolError, match="above the limit") as e:
        decode_state(_one_map(4, 4, (1 << 24) + 1))
    assert e.value.code == Errno.E2BIG
    with pytest.raises(OffloadProtocolError, match="entries of key 0"):
        decode_state(_one_map(0, 0, 1000))  # zero-sized entries would cost nothing to claim
    assert decode_state(_one_map(4, 4, 1, bytes(8))).maps[0].entries == ((bytes(4), bytes(4)),)
