"""The BPF control class codec: every message round-trips, every malformed byte string is an
`OffloadProtocolError` naming command and field (never another exception), caps hold.

The codec speaks in ctrl frames (`CtrlRequest`, `CtrlReply`); the tests pin bytes, so they go
through the framing once each way as the two ends do (`_wire`, `_parse`, `_reply_wire`,
`_parse_reply`). Bytes the framing itself refuses (under two request bytes, no ack, an ack that
is neither OK nor ERR) are a `CtrlError` there and never reach the codec.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vxdp.bpf import isa
from vxdp.bpf.mapspec import MapType, UpdateFlag
from vxdp.bpf.obj import FuncInfo, LineInfo
from vxdp.offload.codec import (
    Reply,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    error_reply,
)
from vxdp.offload.messages import (
    REPLIES,
    REQUESTS,
    CapsReply,
    CapsRequest,
    MapCreateReply,
    MapCreateRequest,
    MapDeleteRequest,
    MapFreeRequest,
    MapFreezeRequest,
    MapGetNextKeyReply,
    MapGetNextKeyRequest,
    MapLookupBatchReply,
    MapLookupBatchRequest,
    MapLookupReply,
    MapLookupRequest,
    MapUpdateBatchReply,
    MapUpdateBatchRequest,
    MapUpdateRequest,
    ObjInfo,
    ObjListReply,
    ObjListRequest,
    ProgAttachRequest,
    ProgDetachRequest,
    ProgFreeRequest,
    ProgLoadReply,
    ProgLoadRequest,
    ProgQueryReply,
    ProgQueryRequest,
    StateExportReply,
    StateExportRequest,
    StateImportRequest,
)
from vxdp.offload.wire import (
    CTRL_CLASS_BPF,
    MIN_REPLY,
    AttachFlag,
    Command,
    Errno,
    ObjFlag,
    ObjKind,
    ObjOrigin,
    OffloadEncodeError,
    OffloadProtocolError,
)
from vxdp.virtio.ctrl_framing import Ack, CtrlError, CtrlReply, CtrlRequest
from vxdp.virtio.features import Experimental

MAP = 7  # a guest map handle


def _xdp1_like() -> list[isa.Insn]:
    """A program referencing map handle 7 both as a map (MAP_FD) and a value address (MAP_VALUE)."""
    m0, m1 = isa.lddw(1, MAP, isa.PseudoSrc.MAP_FD)
    v0, v1 = isa.lddw(2, 0, isa.PseudoSrc.MAP_VALUE)
    v0, v1 = v0.replace(imm=MAP), v1.replace(imm=16)  # handle in slot 0, value offset in slot 1
    return [m0, m1, v0, v1, isa.Insn(isa.CALL, imm=1), isa.Insn(0xB7, dst=0, imm=2),
            isa.Insn(isa.EXIT), isa.Insn(0x05, off=-3)]


REQUEST_SAMPLES = [
    CapsRequest(),
    MapCreateRequest(MapType.PERCPU_ARRAY, 4, 8, 256, 0, "rxcnt"),
    MapCreateRequest(MapType.HASH, 64, 4096, 1, 1, "n" * 15),
    MapFreeRequest(MAP),
    MapLookupRequest(MAP, b"\x11\x00\x00\x00"),
    MapUpdateRequest(MAP, b"\x01\x00\x00\x00", b"\xff" * 16, UpdateFlag.NOEXIST),
    MapDeleteRequest(MAP, b"k" * 64),
    MapGetNextKeyRequest(MAP),
    MapGetNextKeyRequest(MAP, b"\x00\x00\x00\x01"),
    MapLookupBatchRequest(MAP, 128),
    MapLookupBatchRequest(MAP, 128, b"token"),
    MapUpdateBatchRequest(MAP, 4, 8, [b"a" * 4, b"b" * 4], [b"1" * 8, b"2" * 8], UpdateFlag.ANY),
    MapUpdateBatchRequest(MAP, 4, 8, [], []),
    ProgLoadRequest(insns=_xdp1_like(), license="GPL", name="xdp_prog1", log_level=1, log_size=4096,
                    btf=b"\x9f\xeb\x01\x00" + bytes(20),
                    func_info=[FuncInfo(0, 3), FuncInfo(6, 9)],
                    line_info=[LineInfo(0, 1, 20, 33, 5), LineInfo(4, 1, 40, 34, 1023)]),
    ProgLoadRequest(insns=[isa.Insn(0xB7, imm=1), isa.Insn(isa.EXIT)], license="Dual BSD/GPL"),
    ProgFreeRequest(3),
    ProgAttachRequest(3),
    ProgAttachRequest(4, 0, AttachFlag.REPLACE),
    ProgDetachRequest(),
    ProgQueryRequest(),
    StateExportRequest(),
    StateExportRequest(b"\x01\x02"),
    StateImportRequest(b"chunk" * 100, 1),
    MapFreezeRequest(MAP),
    ObjListRequest(),
    ObjListRequest(64, b"\x05\x00\x00\x00"),
]

REPLY_SAMPLES = [
    (Command.CAPS, CapsReply("kernel", 1 << MapType.ARRAY | 1 << MapType.HASH, (1, 2, 3, 12, 44),
                             max_maps=16, max_progs=8, max_map_memory=1 << 26, max_insns=4096,
                             max_key_size=512, max_value_size=65536, max_entries=1 << 20, max_batch=1024,
                             max_request=1 << 20, cmd_rate=1000, ncpus=2, flags=1)),
    (Command.MAP_CREATE, MapCreateReply(MAP)),
    (Command.MAP_LOOKUP, MapLookupReply(bytes(range(16)))),
    (Command.MAP_GET_NEXT_KEY, MapGetNextKeyReply(b"\x02\x00\x00\x00")),
    (Command.MAP_LOOKUP_BATCH, MapLookupBatchReply(4, 8, [b"a" * 4, b"b" * 4], [b"1" * 8, b"2" * 8], b"t")),
    (Command.MAP_LOOKUP_BATCH, MapLookupBatchReply(4, 8, [], [])),
    (Command.MAP_UPDATE_BATCH, MapUpdateBatchReply(2)),
    (Command.PROG_LOAD, ProgLoadReply(3, bytes.fromhex("0123456789abcdef"))),
    (Command.PROG_QUERY, ProgQueryReply(3, b"\xaa" * 8, (0, 1000, 20, 3, 0))),
    (Command.STATE_EXPORT, StateExportReply(b"", b"state" * 10)),
    (Command.OBJ_LIST, ObjListReply((
        ObjInfo(MAP, ObjKind.MAP, "rxcnt", ObjOrigin.IMPORT, ObjFlag.FROZEN, MapType.PERCPU_ARRAY, 4, 8, 256, 0),
        ObjInfo(8, ObjKind.PROG, "xdp_prog1", ObjOrigin.OPERATOR, ObjFlag.ATTACHED, 6, insns=22,
                tag=bytes.fromhex("0123456789abcdef"))), b"\x09\x00\x00\x00")),
    (Command.OBJ_LIST, ObjListReply(())),
]

EMPTY_REPLY_COMMANDS = [c for c in Command if c not in REPLIES]

ALL_REPLIES = (
    [(cmd, Reply(payload=p)) for cmd, p in REPLY_SAMPLES]
    + [(cmd, Reply()) for cmd in EMPTY_REPLY_COMMANDS]
    + [(Command.PROG_LOAD, Reply(payload=ProgLoadReply(1, bytes(8)), text="processed 8 insns"))]
    + [(Command.PROG_LOAD, Reply.error(Errno.EACCES, "R1 type=ctx expected=fp\nprocessed 3 insns"))]
    + [(Command.PROG_LOAD, Reply.error(Errno.EPERM, "policy: helper bpf_fib_lookup (69) is not allowed "
                                                    "(rule helpers.allow)"))]
    + [(Command.MAP_LOOKUP, Reply.error(Errno.ENOENT))]
    + [(Command.MAP_UPDATE_BATCH, Reply.error(Errno.E2BIG, "map full", MapUpdateBatchReply(1)))]
    + [(Command.MAP_LOOKUP_BATCH, Reply(Errno.ENOBUFS, payload_omitted=True, needed=9000))]
    + [(Command.PROG_ATTACH, Reply(Errno.EBUSY, text="\u00e9t\u00e9", text_truncated=True))]
    + [(Command.CAPS, Reply.error(77))]  # a code the protocol does not name still travels
)


def _wire(req) -> bytes:
    """A request's bytes as a driver puts them in a chain: its frame, encoded once."""
    return encode_request(req).encode()


def _parse(data: bytes):
    """What a device makes of a chain's readable bytes: the frame, then the message."""
    return decode_request(CtrlRequest.decode(data))


def _reply_wire(cmd: int, reply: Reply, capacity: int | None = None) -> bytes:
    """The bytes a device writes into a ``capacity``-byte area."""
    return encode_reply(cmd, reply, capacity).encode(capacity)


def _parse_reply(cmd: int, data: bytes) -> Reply:
    return decode_reply(cmd, CtrlReply.decode(data))


def _ids(items):
    return [f"{i}-{type(x).__name__}" for i, x in enumerate(items)]


def test_numbers_chosen_in_the_spec():
    assert Experimental.NET_BPF_OFFLOAD == 58 and CTRL_CLASS_BPF == 0x40 and MIN_REPLY == 64


def test_samples_cover_every_request_and_reply():
    assert {type(r) for r in REQUEST_SAMPLES} == set(REQUESTS.values())
    assert {type(p) for _, p in REPLY_SAMPLES} == set(REPLIES.values())


@pytest.mark.parametrize("req", REQUEST_SAMPLES, ids=_ids(REQUEST_SAMPLES))
def test_request_round_trip(req):
    ctrl = encode_request(req)
    assert (ctrl.cls, ctrl.command) == (CTRL_CLASS_BPF, req.COMMAND)
    assert decode_request(ctrl) == req
    assert _wire(req)[:2] == bytes((CTRL_CLASS_BPF, req.COMMAND)) and _parse(_wire(req)) == req


@pytest.mark.parametrize("req", REQUEST_SAMPLES, ids=_ids(REQUEST_SAMPLES))
def test_request_truncated_at_every_length(req):
    data = _wire(req)
    for n in range(len(data)):
        with pytest.raises(CtrlError if n < 2 else OffloadProtocolError):  # under 2: the framing's
            _parse(data[:n])


@pytest.mark.parametrize("req", REQUEST_SAMPLES, ids=_ids(REQUEST_SAMPLES))
def test_request_with_trailing_bytes_is_refused(req):
    with pytest.raises(OffloadProtocolError, match=rf"{req.COMMAND.name}: request end: 1 trailing"):
        _parse(_wire(req) + b"\0")


@pytest.mark.parametrize("cmd,reply", ALL_REPLIES, ids=[f"{c.name}-{i}" for i, (c, _) in enumerate(ALL_REPLIES)])
def test_reply_round_trip_truncation_and_trailing(cmd, reply):
    ctrl = encode_reply(cmd, reply)
    assert ctrl.ack == (Ack.OK if reply.ok else Ack.ERR)  # VIRTIO_NET_OK iff code 0
    assert decode_reply(cmd, ctrl) == reply
    data = ctrl.encode()
    assert _parse_reply(cmd, data) == reply
    with pytest.raises(CtrlError):  # no ack at all: the framing's refusal
        _parse_reply(cmd, b"")
    for n in range(1, len(data)):
        if n == 1 and data[0] == 1:
            # documented tolerance: a bare VIRTIO_NET_ERR ack (what a stock device writes) is EIO
            assert _parse_reply(cmd, data[:1]).code == Errno.EIO
            continue
        with pytest.raises(OffloadProtocolError):
            _parse_reply(cmd, data[:n])
    with pytest.raises(OffloadProtocolError, match="trailing"):
        _parse_reply(cmd, data + b"\0")


# --- the wire layout, pinned byte for byte (docs/offload-protocol.md §3, §5) -----------------


def test_map_freeze_layout():
    """MAP_FREEZE (protocol 1.1) is command 0x09: the map handle, nothing else; it answers no payload."""
    assert Command.MAP_FREEZE == 0x09
    assert _wire(MapFreezeRequest(0x01020304)) == bytes([0x40, 0x09, 4, 3, 2, 1])
    assert _parse_reply(Command.MAP_FREEZE, _reply_wire(Command.MAP_FREEZE, Reply())).ok


def test_map_create_layout():
    data = _wire(MapCreateRequest(MapType.HASH, 4, 8, 1024, 1, "flows"))
    assert data == bytes((0x40, 0x01)) + struct.pack("<5I", 1, 4, 8, 1024, 1) + b"flows".ljust(16, b"\0")


def test_map_update_layout():
    data = _wire(MapUpdateRequest(9, b"KEY!", b"VALUE", UpdateFlag.EXIST))
    assert data == b"\x40\x04" + struct.pack("<IQI", 9, 2, 4) + b"KEY!" + struct.pack("<I", 5) + b"VALUE"


def test_prog_load_carries_guest_handles_where_the_kernel_takes_fds():
    data = _wire(REQUEST_SAMPLES[13])
    insns_at = data.index(struct.pack("<I", 8)) + 4  # insn_cnt 8, then the raw instructions
    raw = isa.decode(data[insns_at : insns_at + 64])
    assert (raw[0].src, raw[0].imm) == (isa.PseudoSrc.MAP_FD, MAP)
    assert (raw[2].src, raw[2].imm, raw[3].imm) == (isa.PseudoSrc.MAP_VALUE, MAP, 16)


def test_reply_layout():
    data = _reply_wire(Command.MAP_CREATE, Reply(payload=MapCreateReply(5), text="ok"))
    assert data == b"\x00" + struct.pack("<iIII", 0, 0, 4, 2) + struct.pack("<I", 5) + b"ok"
    err = _reply_wire(Command.MAP_LOOKUP, Reply.error(Errno.ENOENT))
    assert err == b"\x01" + struct.pack("<iIII", 2, 0, 0, 0)


# --- malformed requests: named errors, caps checked before reading -----------------------------


def _body(cmd: Command, body: bytes) -> bytes:
    return bytes((CTRL_CLASS_BPF, cmd)) + body


def test_insn_count_claiming_a_billion_is_refused_before_reading():
    good = _wire(ProgLoadRequest(insns=[isa.Insn(isa.EXIT)]))
    at = good.index(struct.pack("<I", 1) + isa.Insn(isa.EXIT).encode())
    bad = good[:at] + struct.pack("<I", 1_000_000_000) + good[at + 4 :]
    with pytest.raises(OffloadProtocolError, match="PROG_LOAD: request insn_cnt: 1000000000 is above") as e:
        _parse(bad)
    assert e.value.code == Errno.E2BIG and e.value.field == "request insn_cnt"


@pytest.mark.parametrize("cmd,body,match", [
    (Command.MAP_LOOKUP, struct.pack("<IQI", 1, 0, 0xFFFFFFFF), "key length: 4294967295 is above the limit of 4096"),
    (Command.MAP_UPDATE, struct.pack("<IQI", 1, 0, 4) + b"kkkk" + struct.pack("<I", 1 << 21),
     "value length: 2097152 is above"),
    (Command.MAP_UPDATE_BATCH, struct.pack("<IQIII", 1, 0, 10**6, 4, 4), "count: 1000000 is above the limit of 65536"),
    (Command.MAP_UPDATE_BATCH, struct.pack("<IQIII", 1, 0, 65536, 4096, 1 << 20), "keys: 65536 x 4096 bytes run"),
    (Command.STATE_IMPORT, struct.pack("<II", 0, 1 << 30), "chunk length"),
])
def test_lengths_above_caps(cmd, body, match):
    with pytest.raises(OffloadProtocolError, match=match):
        _parse(_body(cmd, body))


def test_whole_request_above_cap():
    with pytest.raises(OffloadProtocolError, match="above") as e:
        _parse(_body(Command.STATE_IMPORT, bytes(17 << 20)))
    assert e.value.code == Errno.E2BIG


@pytest.mark.parametrize("data", [b"", b"\x40"])
def test_requests_without_a_header_are_the_framings_refusal(data):
    with pytest.raises(CtrlError, match="no class/command header"):
        _parse(data)


@pytest.mark.parametrize("data,match", [
    (b"\x06\x00", "class: 0x6 is not the BPF class"),
    (b"\x40\x7f", "unknown command 0x7f"),
    (_body(Command.MAP_CREATE, bytes(20) + b"x" * 16), "MAP_CREATE: request name: is not NUL-terminated"),
    (_body(Command.MAP_CREATE, bytes(20) + b"ab\0c" + bytes(12)), "name: must be ASCII followed by NUL"),
    (_body(Command.PROG_LOAD, bytes(40) + struct.pack("<I", 3) + b"G\0L"), "license: is not NUL-free ASCII"),
])
def test_malformed_requests_name_the_field(data, match):
    with pytest.raises(OffloadProtocolError, match=match):
        _parse(data)


def _with_records(func_rec_size: int, func_records: bytes) -> bytes:
    base = _wire(ProgLoadRequest(insns=[isa.Insn(isa.EXIT)]))
    tail = struct.pack("<II", 8, 0) + struct.pack("<II", 16, 0)  # empty func_info, line_info
    assert base.endswith(tail)
    return base[: -len(tail)] + struct.pack("<II", func_rec_size, 1) + func_records + struct.pack("<II", 16, 0)


def test_larger_records_with_zero_tail_are_accepted():
    req = _parse(_with_records(12, struct.pack("<III", 0, 5, 0)))
    assert req.func_info == (FuncInfo(0, 5),)


@pytest.mark.parametrize("size,records,match", [
    (12, struct.pack("<III", 0, 5, 1), r"func_info\[0\]: bytes past the first 8 are not zero"),
    (4, struct.pack("<I", 0), "func_info_rec_size: 4 is outside 8..256"),
    (1000, b"", "func_info_rec_size: 1000 is outside"),
])
def test_bad_records_are_refused(size, records, match):
    with pytest.raises(OffloadProtocolError, match=match):
        _parse(_with_records(size, records))


# --- replies: sizing, truncation, contradictions ------------------------------------------------


def test_payload_that_does_not_fit_becomes_enobufs_with_the_needed_size():
    big = Reply(payload=MapLookupReply(bytes(1000)))
    data = _reply_wire(Command.MAP_LOOKUP, big, capacity=MIN_REPLY)
    assert len(data) <= MIN_REPLY
    rep = _parse_reply(Command.MAP_LOOKUP, data)
    assert (rep.code, rep.payload_omitted, rep.needed, rep.payload) == (Errno.ENOBUFS, True, 1004, None)
    assert _parse_reply(Command.MAP_LOOKUP, _reply_wire(Command.MAP_LOOKUP, big, 1 + 16 + 1004)) == big


def test_text_is_cut_to_the_area_at_a_character_boundary():
    log = "\u00e9" * 100  # 2 bytes per character
    data = _reply_wire(Command.PROG_LOAD, Reply.error(Errno.EACCES, log), capacity=MIN_REPLY)
    rep = _parse_reply(Command.PROG_LOAD, data)
    assert len(data) <= MIN_REPLY and rep.text_truncated and rep.code == Errno.EACCES
    assert rep.text == "\u00e9" * 23  # 64 - 17 = 47 bytes of room: 23 whole characters


def test_area_too_small_for_a_header_gets_only_the_error_ack():
    assert encode_reply(Command.CAPS, Reply(payload=REPLY_SAMPLES[0][1]), capacity=16) == CtrlReply(Ack.ERR)
    data = _reply_wire(Command.CAPS, Reply(payload=REPLY_SAMPLES[0][1]), capacity=16)
    assert data == b"\x01"
    assert _parse_reply(Command.CAPS, data).code == Errno.EIO
    assert _reply_wire(Command.CAPS, Reply.error(Errno.EINVAL), capacity=0) == b""


@pytest.mark.parametrize("data,match", [
    (b"\x00", "ack is VIRTIO_NET_OK but no header"),
    (b"\x00" + struct.pack("<iIII", 22, 0, 0, 0), "code 22 contradicts ack OK"),
    (b"\x01" + struct.pack("<iIII", 0, 0, 0, 0), "code 0 contradicts ack ERR"),
    (b"\x01" + struct.pack("<iIII", -1, 0, 0, 0), "negative"),
    (b"\x01" + struct.pack("<iIII", 2, 4, 0, 0), "unknown bits 0x4"),
    (b"\x01" + struct.pack("<iIII", 2, 2, 0, 0), "PAYLOAD_OMITTED with code 2"),
    (b"\x01" + struct.pack("<iIII", 2, 0, 4, 0) + b"abcd", "4 bytes where MAP_LOOKUP answers none"),
    (b"\x01" + struct.pack("<iIII", 2, 0, 0, 0xFFFFFFFF), "text_len: 4294967295 is above"),
    # found by test_fuzz_mutated_replies: a byte of the text flipped to 0x80 decoded as U+FFFD, so
    # the reply re-encoded to other bytes; the text is UTF-8 (§3) and anything else is refused
    (b"\x01" + struct.pack("<iIII", 13, 0, 0, 3) + b"R\x80x", r"MAP_LOOKUP: reply text: is not UTF-8 \(byte 1 of 3\)"),
])
def test_malformed_replies(data, match):
    with pytest.raises(OffloadProtocolError, match=match):
        _parse_reply(Command.MAP_LOOKUP, data)


def test_reply_payload_with_trailing_bytes_is_refused():
    data = b"\x00" + struct.pack("<iIII", 0, 0, 5, 0) + struct.pack("<I", 3) + b"\0"
    with pytest.raises(OffloadProtocolError, match="MAP_CREATE: reply payload end: 1 trailing"):
        _parse_reply(Command.MAP_CREATE, data)


# --- what our own caller cannot encode ---------------------------------------------------------


@pytest.mark.parametrize("build,match", [
    (lambda: _wire(MapCreateRequest(1, 4, 4, 1, name="x" * 16)), "name"),
    (lambda: _wire(MapCreateRequest(1, -1, 4, 1)), "key_size"),
    (lambda: _wire(MapLookupRequest(1, bytes(5000))), "key length: 5000 is above"),
    (lambda: _wire(MapUpdateBatchRequest(1, 4, 4, [b"abcd"], [])), "1 keys but 0 values"),
    (lambda: _wire(MapUpdateBatchRequest(1, 4, 4, [b"abc"], [b"abcd"])), r"keys\[0\]"),
    (lambda: _wire(ProgLoadRequest(insns=[], license="caf\u00e9")), "license"),
    (lambda: _wire(MapCreateReply(1)), "not a BPF class request"),
    (lambda: _reply_wire(Command.MAP_CREATE, Reply()), "needs a MapCreateReply"),
    (lambda: _reply_wire(Command.MAP_CREATE, Reply(payload=MapLookupReply(b""))), "not a MAP_CREATE reply"),
    (lambda: _reply_wire(Command.MAP_CREATE, Reply.error(1, payload=MapCreateReply(1))), "carries no payload"),
    (lambda: _reply_wire(Command.PROG_LOAD, Reply(payload=ProgLoadReply(1, b"short"))), "tag"),
    (lambda: Reply.error(0), "non-zero code"),
])
def test_unencodable_messages_raise_encode_error(build, match):
    with pytest.raises(OffloadEncodeError, match=match):
        build()


# --- fuzzing: untrusted bytes decode to what re-encodes to them, or are refused by name ----------
#
# Each target checks a property, not just "no other exception": what decodes re-encodes to the very
# bytes it came from (the wire form is canonical; a decoder that accepted two spellings of one
# message, or dropped a byte, fails here), and what does not decode is an `OffloadProtocolError`
# whose message names the command and the field it stopped at.

_commands = st.sampled_from(sorted(int(c) for c in Command) + [0x7F, 0xFF])


def _refused_by_name(e: OffloadProtocolError, command: int | None) -> None:
    """A clean refusal: a field named in the message, after the command (or "BPF ctrl")."""
    assert e.field and e.detail, e
    where = "BPF ctrl" if e.command is None else (Command(e.command).name if e.command in set(Command)
                                                   else f"command {e.command:#04x}")
    assert str(e) == f"{where}: {e.field}: {e.detail}", e
    assert e.code in (Errno.EINVAL, Errno.E2BIG), e
    if command is not None and e.command is not None:
        assert e.command == command, e


def _request_property(data: bytes) -> None:
    command = data[1] if len(data) >= 2 and data[0] == CTRL_CLASS_BPF else None
    try:
        req = _parse(data)
    except CtrlError:
        assert len(data) < 2  # the only bytes the framing refuses
        return
    except OffloadProtocolError as e:
        _refused_by_name(e, command)
        return
    out = _wire(req)
    assert _parse(out) == req and _wire(_parse(out)) == out
    # canonical: the decoded request is these bytes exactly, but for the one field with two spellings:
    # PROG_LOAD's func_info/line_info records may be larger than the kernel's (zero past it, spec §5)
    if out != data:
        assert command == Command.PROG_LOAD and len(out) <= len(data), (out, data)  # records cut to the kernel's


def _reply_property(cmd: int, data: bytes) -> None:
    try:
        rep = _parse_reply(cmd, data)
    except CtrlError:
        assert not data or data[0] not in (Ack.OK, Ack.ERR)  # the only bytes the framing refuses
        return
    except OffloadProtocolError as e:
        _refused_by_name(e, cmd)
        return
    if len(data) == 1:  # the documented bare VIRTIO_NET_ERR ack: EIO, and it re-encodes to itself
        assert rep.code == Errno.EIO and _reply_wire(cmd, rep, capacity=1) == data
        return
    out = _reply_wire(cmd, rep)
    assert _parse_reply(cmd, out) == rep and _reply_wire(cmd, _parse_reply(cmd, out)) == out
    # canonical, as for requests, but for OBJ_LIST's rec_size: a later version's longer records are
    # read to the fields this one knows (spec §5), and re-encoded at this version's size
    if out != data:
        assert cmd == Command.OBJ_LIST and len(out) <= len(data), (out, data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_decode_request_random_bytes(data):
    _request_property(data)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(_commands, st.binary(max_size=300))
def test_fuzz_decode_request_bodies(cmd, body):
    _request_property(bytes((CTRL_CLASS_BPF, cmd)) + body)


@settings(max_examples=400)
@given(st.sampled_from(REQUEST_SAMPLES), st.data())
def test_fuzz_mutated_requests(req, data):
    raw = bytearray(_wire(req))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _request_property(bytes(raw))


@settings(max_examples=400)
@given(st.sampled_from(ALL_REPLIES), st.data())
def test_fuzz_mutated_replies(item, data):
    cmd, reply = item
    raw = bytearray(_reply_wire(cmd, reply))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _reply_property(cmd, bytes(raw))


@settings(max_examples=400)
@given(st.sampled_from([*Command, 0x7F]), st.binary(max_size=120))
def test_fuzz_decode_reply(cmd, data):
    _reply_property(cmd, data)


@given(st.integers(0, 2**32 - 1), st.binary(max_size=64), st.binary(max_size=256), st.sampled_from(list(UpdateFlag)))
def test_random_map_updates_round_trip(handle, key, value, flags):
    req = MapUpdateRequest(handle, key, value, flags)
    assert _parse(_wire(req)) == req


_insn = st.builds(isa.Insn, st.integers(0, 255), st.integers(0, 15), st.integers(0, 15),
                  st.integers(-(2**15), 2**15 - 1), st.integers(-(2**31), 2**31 - 1))


@given(st.lists(_insn, max_size=40), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=15),
       st.lists(st.builds(FuncInfo, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=4))
def test_random_programs_round_trip(insns, name, func_info):
    req = ProgLoadRequest(insns=insns, name=name, func_info=func_info)
    assert _parse(_wire(req)) == req


# --- the device's answer to what it could not decode ----------------------------------------


@pytest.mark.parametrize("data,code,text", [
    (_wire(MapFreeRequest(1))[:-1], Errno.EINVAL, "MAP_FREE: request map: needs 4 bytes"),
    (b"\x40\x7f", Errno.EINVAL, "unknown command 0x7f"),
    (_body(Command.MAP_LOOKUP, struct.pack("<IQI", 1, 0, 1 << 20)), Errno.E2BIG, "key length"),
])
def test_error_reply_carries_code_and_field(data, code, text):
    with pytest.raises(OffloadProtocolError) as e:
        _parse(data)
    reply = error_reply(e.value, MIN_REPLY * 4)
    assert reply.ack == Ack.ERR and len(reply.encode()) <= MIN_REPLY * 4
    rep = decode_reply(data[1], reply)
    assert rep.code == code and text in rep.text and rep.payload is None


def test_unknown_command_cannot_get_a_success_reply():
    with pytest.raises(OffloadEncodeError, match="can only get a payload-less error"):
        _reply_wire(0x7F, Reply())


# --- OBJ_LIST (protocol 1.2): the device's record of its objects ---------------------------------


def test_obj_list_layout():
    """Command 0x30; the request is max_count and a token blob; each reply record is 56 bytes in 1.2."""
    assert Command.OBJ_LIST == 0x30
    assert _wire(ObjListRequest(3, b"\x07\x00\x00\x00")) == bytes([0x40, 0x30]) + struct.pack(
        "<II", 3, 4) + b"\x07\x00\x00\x00"
    rec = ObjInfo(5, ObjKind.PROG, "p", ObjOrigin.IMPORT, ObjFlag.ATTACHED, 6, insns=9, tag=b"T" * 8)
    data = _reply_wire(Command.OBJ_LIST, Reply(payload=ObjListReply((rec,))))
    payload = data[1 + 16:]
    want = (struct.pack("<I", 0) + struct.pack("<II", 1, 56) + struct.pack("<IBBH", 5, 2, 2, 1)
            + b"p".ljust(16, b"\0") + struct.pack("<6I", 6, 0, 0, 0, 0, 9) + b"T" * 8)
    assert payload == want and len(want) - 12 == 56


def test_obj_list_longer_records_of_a_later_version_are_read_to_their_known_fields():
    rec = ObjInfo(5, ObjKind.MAP, "m", type=1, key_size=4, value_size=8, max_entries=1)
    raw = _reply_wire(Command.OBJ_LIST, Reply(payload=ObjListReply((rec, rec))))
    body = raw[1 + 16 + 12:]
    longer = body[:56] + b"future!!" + body[56:] + b"future!!"
    hdr = struct.pack("<iIII", 0, 0, 12 + len(longer), 0)
    reply = _parse_reply(Command.OBJ_LIST, b"\x00" + hdr + struct.pack("<III", 0, 2, 64) + longer)
    assert reply.payload.objects == (rec, rec)


@pytest.mark.parametrize("rec_size,kind,match", [
    (55, 1, "reply payload rec_size: 55 is outside 56..256"),
    (257, 1, "reply payload rec_size: 257 is outside 56..256"),
    (56, 3, r"reply payload objects\[0\] kind: 3 is not MAP \(1\) or PROG \(2\)"),
])
def test_obj_list_bad_records_are_refused_by_field(rec_size, kind, match):
    rec = struct.pack("<IBBH", 1, kind, 0, 0) + bytes(16) + bytes(24) + bytes(8)
    payload = struct.pack("<III", 0, 1, rec_size) + rec.ljust(rec_size, b"\0")
    data = b"\x00" + struct.pack("<iIII", 0, 0, len(payload), 0) + payload
    with pytest.raises(OffloadProtocolError, match=match):
        _parse_reply(Command.OBJ_LIST, data)


def test_obj_list_refuses_to_encode_an_unknown_kind():
    with pytest.raises(OffloadEncodeError, match=r"objects\[0\].kind"):
        _reply_wire(Command.OBJ_LIST, Reply(payload=ObjListReply((ObjInfo(1, 0),))))


_u32 = st.integers(0, 2**32 - 1)
_obj = st.builds(ObjInfo, _u32, st.sampled_from(list(ObjKind)),
                 st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=15),
                 st.integers(0, 255), st.integers(0, 2**16 - 1), _u32, _u32, _u32, _u32, _u32, _u32,
                 st.binary(min_size=8, max_size=8))


@given(st.lists(_obj, max_size=12), st.binary(max_size=16))
def test_fuzz_obj_list_reply_round_trips(objects, token):
    """Property: any list of records with any token decodes to exactly what was encoded, and a
    reply cut anywhere is a named refusal, never a shorter list."""
    reply = Reply(payload=ObjListReply(tuple(objects), token))
    data = _reply_wire(Command.OBJ_LIST, reply)
    assert _parse_reply(Command.OBJ_LIST, data) == reply
    cut = len(data) - 1
    with pytest.raises(OffloadProtocolError, match="OBJ_LIST: reply"):
        _parse_reply(Command.OBJ_LIST, data[:cut])


@given(st.lists(_obj, min_size=1, max_size=4), st.data())
def test_fuzz_obj_list_mutated_replies_decode_or_refuse_by_field(objects, data):
    """Property: a mutated OBJ_LIST reply either decodes to records that encode back to the same
    bytes (the mutation hit a free field), or is refused naming the OBJ_LIST reply field."""
    raw = bytearray(_reply_wire(Command.OBJ_LIST, Reply(payload=ObjListReply(tuple(objects)))))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(1, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        got = _parse_reply(Command.OBJ_LIST, bytes(raw))
    except OffloadProtocolError as e:
        assert str(e).startswith("OBJ_LIST: reply"), e
        return
    if got.ok and got.payload is not None and not got.text:
        assert _reply_wire(Command.OBJ_LIST, got) == bytes(raw)
