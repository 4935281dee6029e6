"""`BpfCommandHandler` at the byte level: the spec's order of checks, its reply framing, the rules the
handler adds to the service (attach/detach/query, FREE kinds), and hostile bytes.

A real `OffloadService`, on the kernel engine (privileged: ports are the loopback, no attach, or a
veth end in a netns, `NetLab`, 198.18.0.0/15, where programs are attached) and, for every rule that
needs no kernel, on the interpreter with a recorded port (unprivileged; `offload_engines.ENGINES`).
Requests are built with the codec (`encode_request`) as the `CtrlRequest` the ctrl vq hands over, or
framed by hand (`_ask`) for hostile bodies; the `CtrlReply` is checked against the writable area and
turned into the bytes the ctrl vq writes (`CtrlReply.encode`, cut to the area) where a test pins bytes.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from offload_engines import ENGINES, offload_service

from vxdp.bpf.isa import EXIT, Insn
from vxdp.bpf.mapspec import MapType, possible_cpus
from vxdp.host.ctrl_queue import Deferred
from vxdp.host.offload.errors import linux_errno
from vxdp.host.offload.handler import BpfCommandHandler
from vxdp.host.offload.policy import Policy, Quota
from vxdp.host.offload.port import RecordedPort
from vxdp.host.offload.service import OffloadService
from vxdp.offload.codec import Reply, decode_reply, encode_request
from vxdp.offload.layout import Message
from vxdp.offload.messages import (
    CapsRequest,
    MapCreateRequest,
    MapDeleteRequest,
    MapFreeRequest,
    MapFreezeRequest,
    MapGetNextKeyRequest,
    MapLookupBatchRequest,
    MapLookupRequest,
    MapUpdateBatchRequest,
    MapUpdateRequest,
    ObjListRequest,
    ProgAttachRequest,
    ProgDetachRequest,
    ProgFreeRequest,
    ProgLoadRequest,
    ProgQueryRequest,
    StateExportRequest,
    StateImportRequest,
)
from vxdp.offload.wire import (
    CTRL_CLASS_BPF,
    MIN_REPLY,
    AttachFlag,
    CapsFlag,
    Command,
    Errno,
    ObjFlag,
    ObjKind,
    ObjOrigin,
    ReplyFlag,
)
from vxdp.testing.netns import NetLab
from vxdp.virtio.ctrl_framing import Ack, CtrlReply, CtrlRequest
from vxdp.virtio.features import Experimental

OFFLOADED = Experimental.NET_BPF_OFFLOAD.bit  # the acked features of a frontend that negotiated offload

_seq = itertools.count()
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
RET2 = (Insn(0xB7, 0, 0, 0, 2), Insn(EXIT))  # r0 = XDP_PASS; exit


def _dev() -> str:
    return f"h{os.getpid() % 1000}{next(_seq)}"


def _fits(reply: CtrlReply, cap: int) -> CtrlReply:
    """The reply, checked to fit the area (a bare ack may be cut to nothing in an area of 0)."""
    assert len(reply.encode()) <= max(cap, 1), (len(reply.encode()), cap)
    return reply


def _ask(h: BpfCommandHandler, cmd: int, body: bytes, cap: int) -> CtrlReply:
    """One BPF command framed by hand (any body, decodable or not), answered on this thread."""
    return _fits(h.handle(CtrlRequest(CTRL_CLASS_BPF, cmd, body), cap), cap)


class Wire:
    """One device's handler driven with codec-built requests; returns the decoded reply."""

    def __init__(self, service: OffloadService, dev: str):
        self.handler = BpfCommandHandler(service, dev)
        self.acked = OFFLOADED  # the features the device's frontend acked (for devices made with it)

    def reply(self, req: Message, cap: int = 4096) -> CtrlReply:
        return _fits(self.handler.handle(encode_request(req), cap), cap)

    def raw(self, req: Message, cap: int = 4096) -> bytes:
        return self.reply(req, cap).encode(cap)

    def __call__(self, req: Message, cap: int = 4096) -> Reply:
        return decode_reply(req.COMMAND, self.reply(req, cap))

    def ok(self, req: Message, cap: int = 4096) -> Message | None:
        r = self(req, cap)
        assert r.ok, r.text
        return r.payload


@pytest.fixture
def lo(service):
    dev = _dev()
    w = Wire(service, dev)
    service.add_device(dev, "lo", acked_features=lambda: w.acked)
    return w


@pytest.fixture
def veth(service):
    """A device whose port runs programs: a veth end in a netns on the kernel, a recorded port elsewhere."""
    if service.port_factory is RecordedPort:
        dev = _dev()
        service.add_device(dev, "vhb", acked_features=lambda: OFFLOADED)
        yield Wire(service, dev)
        return
    with NetLab("vxh") as lab:
        pair = lab.veth(lab.netns(), lab.netns(), "vha", "vhb", addr_a="198.18.0.9/30", addr_b="198.18.0.10/30")
        dev = _dev()
        service.add_device(dev, pair.b, netns=pair.ns_b, acked_features=lambda: OFFLOADED)
        try:
            yield Wire(service, dev)
        finally:
            service.remove_device(dev)


def _kernel_objects(w: Wire) -> tuple[set[int], set[int]]:
    return w.handler.service.kernel_ids(w.handler.device)


# -- the order of checks: feature, area size, decoding ---------------------------------------------

@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_not_negotiated_refuses_every_command_without_acting(service):
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED - 1)  # every bit but offload's
    h = BpfCommandHandler(service, dev)
    create = encode_request(MapCreateRequest(MapType.ARRAY, 4, 8, 1, name="m")).data
    for cmd in range(256):
        body = create if cmd == Command.MAP_CREATE else b"\xff"
        r = decode_reply(cmd, _ask(h, cmd, body, 128))
        assert r.code == Errno.EOPNOTSUPP and "VIRTIO_NET_F_BPF_OFFLOAD was not negotiated" in r.text
        assert r.text.endswith("(rule feature)")
    assert _ask(h, 0, b"", 16) == CtrlReply(Ack.ERR)  # no room for a header: ack ERR alone
    assert service.kernel_ids(dev) == (set(), set()) and service.show()[0]["maps"] == []


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_an_area_below_min_reply_executes_nothing(lo):
    req = MapCreateRequest(MapType.ARRAY, 4, 8, 1, name="m")
    r = lo(req, MIN_REPLY - 1)
    assert r.code == Errno.ENOBUFS and r.text == "writable area of 63 bytes is below 64"
    assert lo.raw(req, 16) == b"\x01" and lo.raw(req, 0) == b""
    assert _kernel_objects(lo) == (set(), set())
    assert lo.ok(req, MIN_REPLY).map == 1


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_malformed_requests_are_einval_naming_the_field(lo):
    h = lo.handler
    body = encode_request(MapUpdateRequest(1, bytes(4), bytes(8))).data
    for n in range(len(body)):  # truncated at every length
        r = decode_reply(Command.MAP_UPDATE, _ask(h, Command.MAP_UPDATE, body[:n], 256))
        assert r.code == Errno.EINVAL and r.text.startswith("MAP_UPDATE: request ") and "truncated" in r.text
    r = decode_reply(Command.MAP_UPDATE, _ask(h, Command.MAP_UPDATE, body + b"\0", 256))
    assert r.code == Errno.EINVAL and "1 trailing bytes" in r.text
    r = decode_reply(0x7E, _ask(h, 0x7E, b"", 256))
    assert r.code == Errno.EINVAL and "unknown command 0x7e" in r.text
    big_key = U32.pack(1) + U64.pack(0) + U32.pack(5000)  # key length above the codec's 4096
    r = decode_reply(Command.MAP_LOOKUP, _ask(h, Command.MAP_LOOKUP, big_key, 256))
    assert r.code == Errno.E2BIG and "key length: 5000 is above the limit of 4096" in r.text
    assert _kernel_objects(lo) == (set(), set())


@pytest.mark.parametrize("service", ENGINES, indirect=True)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.sampled_from([*map(int, Command), 0x09, 0xFF]), body=st.binary(max_size=96),
       cap=st.integers(0, 512))
def test_hostile_bytes_always_get_a_valid_reply(lo, cmd, body, cap):
    out = _ask(lo.handler, cmd, body, cap)
    if cap:
        r = decode_reply(cmd, out)  # never raises: the device wrote a well-formed reply
        if cap >= 17:  # room for the header: the code is the device's, never the driver-side EIO
            assert r.code != Errno.EIO
        else:
            assert out == CtrlReply(Ack.ERR)


# -- commands ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_caps_describe_the_policy(lo, service):
    caps = lo.ok(CapsRequest())
    p = Policy()
    assert caps.engine == service.devices[lo.handler.device].engine.name and caps.ncpus == possible_cpus() and caps.attach_points == 1
    assert caps.flags & CapsFlag.STATE  # state export/import work
    assert {t for t in range(64) if caps.allows_map_type(t)} == {int(t) for t in p.map_types}
    assert set(caps.helpers) == {int(h) for h in p.helpers} and list(caps.helpers) == sorted(caps.helpers)
    assert (caps.max_maps, caps.max_progs, caps.max_insns) == (p.quota.max_maps, p.quota.max_progs,
                                                               p.quota.max_insns)


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_maps_lookups_iteration_and_batches(lo):
    m = lo.ok(MapCreateRequest(MapType.HASH, 4, 8, 16, name="h")).map
    assert lo(MapLookupRequest(m, U32.pack(1))).code == Errno.ENOENT
    assert lo(MapLookupRequest(m, U32.pack(1), flags=1)).code == Errno.EINVAL
    assert lo.ok(MapUpdateBatchRequest(m, 4, 8, [U32.pack(i) for i in range(5)],
                                       [U64.pack(i * 3) for i in range(5)])).applied == 5
    r = lo(MapUpdateBatchRequest(m, 4, 4, [U32.pack(9)], [U32.pack(9)]))
    assert r.code == Errno.EINVAL and r.payload.applied == 0 and "value_size 4 is not the map's 8" in r.text
    assert lo(MapUpdateRequest(m, U32.pack(1), U64.pack(0), flags=1)).code == Errno.EEXIST  # NOEXIST
    keys, k = [], b""
    for _ in range(10):
        r = lo(MapGetNextKeyRequest(m, k))
        if r.code == Errno.ENOENT:
            break
        k = r.payload.key
        keys.append(U32.unpack(k)[0])
    assert sorted(keys) == [0, 1, 2, 3, 4]
    b = lo.ok(MapLookupBatchRequest(m, 5))  # (a hash bucket fuller than max_count would be ENOSPC)
    assert (b.key_size, b.value_size) == (4, 8)
    assert {U32.unpack(k)[0]: U64.unpack(v)[0] for k, v in zip(b.keys, b.values)} == {i: i * 3 for i in range(5)}
    a = lo.ok(MapCreateRequest(MapType.ARRAY, 4, 8, 5, name="a")).map
    lo.ok(MapUpdateRequest(a, U32.pack(3), U64.pack(33)))
    got, token, rounds = {}, b"", 0
    for rounds in range(1, 10):  # continuation tokens, two entries a command
        b = lo.ok(MapLookupBatchRequest(a, 2, token))
        assert len(b.keys) <= 2
        got.update({U32.unpack(k)[0]: U64.unpack(v)[0] for k, v in zip(b.keys, b.values)})
        token = b.token
        if not token:
            break
    assert got == {0: 0, 1: 0, 2: 0, 3: 33, 4: 0} and rounds >= 3
    pc = lo.ok(MapCreateRequest(MapType.PERCPU_ARRAY, 4, 4, 2, name="pc")).map
    assert len(lo.ok(MapLookupRequest(pc, U32.pack(0))).value) == 8 * possible_cpus()
    r = lo(MapUpdateRequest(pc, U32.pack(0), bytes(4)))
    assert r.code == Errno.EINVAL and "value" in r.text
    b = lo.ok(MapLookupBatchRequest(pc, 8))
    assert b.value_size == 8 * possible_cpus() and len(b.keys) == 2


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_map_freeze_makes_the_map_read_only_to_the_guest(lo, service):
    m = lo.ok(MapCreateRequest(MapType.HASH, 4, 8, 4, name="cfg")).map
    lo.ok(MapUpdateRequest(m, U32.pack(1), U64.pack(7)))
    assert lo.ok(MapFreezeRequest(m)) is None
    for req in (MapUpdateRequest(m, U32.pack(1), U64.pack(8)), MapUpdateRequest(m, U32.pack(2), U64.pack(8)),
                MapDeleteRequest(m, U32.pack(1)), MapUpdateBatchRequest(m, 4, 8, [U32.pack(3)], [U64.pack(3)])):
        r = lo(req)
        assert r.code == Errno.EPERM, (req, r)
    assert U64.unpack(lo.ok(MapLookupRequest(m, U32.pack(1))).value)[0] == 7  # reads go on
    r = lo(MapFreezeRequest(m))
    assert r.code == Errno.EPERM and "already frozen" in r.text
    assert {x["name"]: x["frozen"] for x in service.show()[0]["maps"]} == {"cfg": True}
    p = lo.ok(ProgLoadRequest(RET2, name="p")).prog
    assert lo(MapFreezeRequest(p)).code == Errno.EBADF  # a program handle
    other = _dev()
    service.add_device(other, "lo", acked_features=lambda: OFFLOADED)
    theirs = [Wire(service, other).ok(MapCreateRequest(MapType.ARRAY, 4, 8, 1, name="x")).map for _ in range(3)][-1]
    assert theirs not in (m, p)  # (handles are per device: 1 and 2 are ours too)
    assert lo(MapFreezeRequest(theirs)).code == Errno.EBADF  # another device's handle
    assert Wire(service, other)(MapUpdateRequest(theirs, U32.pack(0), U64.pack(1))).ok  # left unfrozen


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_free_checks_the_kind_of_handle(lo):
    m = lo.ok(MapCreateRequest(MapType.ARRAY, 4, 8, 1, name="m")).map
    p = lo.ok(ProgLoadRequest(RET2, name="p")).prog
    r = lo(MapFreeRequest(p))
    assert r.code == Errno.EBADF and f"handle {p} is not a map" in r.text
    r = lo(ProgFreeRequest(m))
    assert r.code == Errno.EBADF and f"handle {m} is not a program" in r.text
    assert len(_kernel_objects(lo)[0]) == 1
    lo.ok(ProgFreeRequest(p))
    lo.ok(MapFreeRequest(m))
    assert lo(MapFreeRequest(m)).code == Errno.EBADF
    assert _kernel_objects(lo) == (set(), set())


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_prog_load_fields_the_service_does_not_take(lo):
    r = lo(ProgLoadRequest(RET2, name="p", prog_flags=1))
    assert r.code == Errno.EINVAL and "prog_flags" in r.text
    assert lo(ProgLoadRequest(RET2, name="p", expected_attach_type=2)).code == Errno.EINVAL
    ok = lo.ok(ProgLoadRequest(RET2, name="p", expected_attach_type=37))  # BPF_XDP
    assert len(ok.tag) == 8 and ok.tag.hex() == lo.handler.service.show()[0]["programs"][0]["tag"]


@pytest.mark.privileged
def test_verifier_log_is_cut_to_log_size_and_to_the_area(lo):
    r = lo(ProgLoadRequest((Insn(EXIT),), name="bad", log_size=12))
    assert r.code == Errno.EACCES and r.text_truncated
    first, _, log = r.text.partition("\n")
    assert "kernel verifier refused program 'bad'" in first and first.endswith("(rule verifier)")
    assert len(log) == 12
    full = lo(ProgLoadRequest((Insn(EXIT),), name="bad"))
    assert not full.text_truncated and "R0 !read_ok" in full.text.partition("\n")[2]
    assert full.text.endswith(log)  # the cut keeps the tail, where the verifier's reason is
    raw = lo.raw(ProgLoadRequest((Insn(EXIT),), name="bad"), 80)  # the area cuts it too
    assert len(raw) == 80 and struct.unpack_from("<I", raw, 5)[0] & ReplyFlag.TEXT_TRUNCATED


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_attach_replace_detach_query_on_a_port(veth):
    p1 = veth.ok(ProgLoadRequest(RET2, name="p1")).prog
    p2 = veth.ok(ProgLoadRequest(RET2, name="p2")).prog
    assert veth(ProgQueryRequest()).code == Errno.ENOENT
    assert veth(ProgDetachRequest()).code == Errno.ENOENT
    assert veth(ProgAttachRequest(p1, attach_point=1)).code == Errno.EINVAL
    assert veth(ProgAttachRequest(p1, flags=4)).code == Errno.EINVAL
    veth.ok(ProgAttachRequest(p1))
    r = veth(ProgAttachRequest(p2))
    assert r.code == Errno.EBUSY and f"already runs program {p1}" in r.text
    veth.ok(ProgAttachRequest(p2, flags=AttachFlag.REPLACE))
    q = veth.ok(ProgQueryRequest())
    assert q.prog == p2 and q.actions == (0, 0, 0, 0, 0)
    assert veth(ProgFreeRequest(p2)).code == Errno.EBUSY
    veth.ok(ProgFreeRequest(p1))
    veth.ok(ProgDetachRequest())
    assert veth(ProgQueryRequest()).code == Errno.ENOENT
    veth.ok(ProgFreeRequest(p2))
    assert _kernel_objects(veth) == (set(), set())


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_state_export_fills_the_smallest_area_and_import_checks_its_flags(lo):
    m = lo.ok(MapCreateRequest(MapType.HASH, 8, 8, 16, name="st")).map
    for i in range(16):
        lo.ok(MapUpdateRequest(m, U64.pack(i), U64.pack(i * i)))
    chunks, token = [], b""
    for _ in range(1000):  # bounded: 16 entries of 16 bytes in chunks of the 64-byte minimum area
        r = lo(StateExportRequest(token), MIN_REPLY)  # (Wire checks that it fits)
        assert r.ok, r.text
        chunks.append(r.payload.chunk)
        token = r.payload.token
        if not token:
            break
    assert len(chunks) > 5 and all(chunks)
    assert b"".join(chunks) == lo.handler.service.state_export(lo.handler.device)
    r = lo(StateImportRequest(b"x", 2))
    assert r.code == Errno.EINVAL and "unknown flags 0x2" in r.text
    r = lo(StateImportRequest(b"".join(chunks), 1))
    assert r.code == Errno.EBUSY and "empty device" in r.text  # the device has its map
    lo.acked = 0  # the frontend renegotiated without offload: the device's record says so at once
    assert lo(StateExportRequest()).code == Errno.EOPNOTSUPP


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_a_reply_that_does_not_fit_is_enobufs_with_the_size_it_needs(lo):
    """Spec §3: a payload larger than the writable area is not cut: ENOBUFS, PAYLOAD_OMITTED and the
    payload size needed, so the driver retries with that much; the command changed nothing."""
    m = lo.ok(MapCreateRequest(MapType.ARRAY, 4, 256, 4, name="big")).map
    lo.ok(MapUpdateRequest(m, U32.pack(1), bytes(range(256))))
    r = lo(MapLookupRequest(m, U32.pack(1)), MIN_REPLY)
    assert r.code == Errno.ENOBUFS and r.payload_omitted and r.needed == 4 + 256
    assert lo.ok(MapLookupRequest(m, U32.pack(1)), 1 + 16 + r.needed).value == bytes(range(256))
    r = lo(MapLookupBatchRequest(m, 4), 256)
    assert r.code == Errno.ENOBUFS and r.payload_omitted and r.needed > 4 * 260
    b = lo.ok(MapLookupBatchRequest(m, 4), 1 + 16 + r.needed)
    assert len(b.keys) == 4 and b.values[1] == bytes(range(256))


class _BrokenCaps(OffloadService):
    """A service with a bug in one method: the handler must answer EIO, not raise."""

    def caps(self, device: str) -> dict:
        raise ZeroDivisionError("bug")


@pytest.mark.parametrize("engine", ENGINES)
def test_an_internal_error_is_eio_and_one_log_line(caplog, engine):
    made = offload_service(engine)
    s = _BrokenCaps(made.engine_factory, port_factory=made.port_factory)
    try:
        dev = _dev()
        s.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
        w = Wire(s, dev)
        with caplog.at_level(logging.ERROR, logger="vxdp.host.offload.handler"):
            r = w(CapsRequest())
        assert r.code == Errno.EIO and "device internal error" in r.text
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "vxdp.host.offload.handler"]
        assert lines == [f"device {dev}: CAPS: internal error: ZeroDivisionError: bug"]
        assert w.ok(MapCreateRequest(MapType.ARRAY, 4, 8, 1, name="m")).map == 1  # still serving
    finally:
        s.close()


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_an_unknown_device_is_enodev(service):
    r = Wire(service, "nosuchdev")(CapsRequest())
    assert r.code == errno.ENODEV and "no device named 'nosuchdev'" in r.text


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_the_ctrl_table_shape(service):
    dev = _dev()
    acked = [0]
    service.add_device(dev, "lo", acked_features=lambda: acked[0])
    answer = BpfCommandHandler(service, dev).answer
    req = encode_request(MapCreateRequest(MapType.ARRAY, 4, 8, 1, name="m"))
    reply = answer(req, 256)
    assert not reply.ok and decode_reply(req.command, reply).code == Errno.EOPNOTSUPP
    assert service.show()[0]["offload_negotiated"] is False  # host show reads the same answer
    acked[0] = OFFLOADED
    reply = answer(req, 256)
    assert reply.ok and decode_reply(req.command, reply).payload.map == 1
    assert service.show()[0]["offload_negotiated"] is True
    load = answer(encode_request(ProgLoadRequest(RET2, name="p")), 4096)  # the verifier pass: off the loop
    assert isinstance(load, Deferred) and decode_reply(Command.PROG_LOAD, load.future.result(10)).ok


# -- OBJ_LIST (1.2): the device's table, whoever made the objects -----------------------------------

def _listing(w: Wire, cap: int = 4096, max_count: int = 0) -> list:
    out, token = [], b""
    for _ in range(100):
        r = w.ok(ObjListRequest(max_count, token), cap)
        out.extend(r.objects)
        if not r.token:
            return out
        token = r.token
    raise AssertionError("OBJ_LIST did not end")


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_caps_say_version_1_2(lo):
    caps = lo.ok(CapsRequest())
    assert (caps.version_major, caps.version_minor) == (1, 2)


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_obj_list_is_the_device_table_whoever_made_it(veth, service):
    m = veth.ok(MapCreateRequest(MapType.HASH, 8, 16, 32, 0, "flows")).map
    p = veth.ok(ProgLoadRequest(insns=RET2, name="pass2"))
    veth.ok(ProgAttachRequest(p.prog))
    with service.as_operator():
        om = service.map_create(veth.handler.device, type=MapType.ARRAY, key_size=4, value_size=8,
                                max_entries=4, name="op_stats")
    veth.ok(MapFreezeRequest(om))
    objs = _listing(veth)
    assert [o.handle for o in objs] == sorted([m, p.prog, om])
    by = {o.handle: o for o in objs}
    assert (by[m].kind, by[m].name, by[m].origin, by[m].type, by[m].key_size, by[m].value_size,
            by[m].max_entries, by[m].flags) == (ObjKind.MAP, "flows", ObjOrigin.DRIVER, MapType.HASH, 8, 16, 32, 0)
    assert (by[p.prog].kind, by[p.prog].name, by[p.prog].insns, by[p.prog].tag, by[p.prog].type,
            by[p.prog].flags) == (ObjKind.PROG, "pass2", 2, p.tag, 6, ObjFlag.ATTACHED)
    assert (by[om].origin, by[om].flags, by[om].name) == (ObjOrigin.OPERATOR, ObjFlag.FROZEN, "op_stats")
    # what host show lists is the same table
    (dev,) = [d for d in service.show() if d["name"] == veth.handler.device]
    assert {x["handle"]: x["origin"] for x in dev["programs"] + dev["maps"]} == {
        m: "guest", p.prog: "guest", om: "operator"}
    veth.ok(ProgDetachRequest())
    assert not {o.handle: o for o in _listing(veth)}[p.prog].attached


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_obj_list_says_import_for_what_a_state_import_made(lo, service):
    m = lo.ok(MapCreateRequest(MapType.ARRAY, 4, 8, 2, 0, "seen")).map
    p = lo.ok(ProgLoadRequest(insns=RET2, name="pass2")).prog
    blob = service.state_export(lo.handler.device)
    dest = _dev()
    service.add_device(dest, "lo", acked_features=lambda: OFFLOADED)
    w = Wire(service, dest)
    service.state_import(dest, blob)
    assert [(o.handle, o.kind, o.origin) for o in _listing(w)] == [
        (m, ObjKind.MAP, ObjOrigin.IMPORT), (p, ObjKind.PROG, ObjOrigin.IMPORT)]


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_obj_list_fills_the_area_continues_with_a_token_and_refuses_a_foreign_one(lo):
    handles = [lo.ok(MapCreateRequest(MapType.ARRAY, 4, 8, 1, 0, f"m{i}")).map for i in range(5)]
    two = 1 + 16 + 4 + 4 + 8 + 2 * 56  # ack, header, token blob, count, rec_size, two records
    pages = []
    token = b""
    while True:
        r = lo.ok(ObjListRequest(0, token), two)
        pages.append([o.handle for o in r.objects])
        if not r.token:
            break
        token = r.token
    assert pages == [handles[0:2], handles[2:4], handles[4:5]]
    assert [o.handle for o in lo.ok(ObjListRequest(1)).objects] == handles[:1]
    assert _listing(lo, max_count=3) == _listing(lo)
    # the smallest area cannot hold one record: ENOBUFS with the size one needs, never a partial answer
    r = lo(ObjListRequest(), MIN_REPLY)
    assert r.code == Errno.ENOBUFS and r.payload_omitted and r.needed == 4 + 4 + 8 + 56
    r = lo(ObjListRequest(0, b"\x01\x02\x03"))
    assert r.code == Errno.EINVAL and "token of 3 bytes" in r.text
    # past the last handle: an empty, complete listing
    r = lo.ok(ObjListRequest(0, (handles[-1]).to_bytes(4, "little")))
    assert r.objects == () and r.token == b""


@pytest.mark.parametrize("engine", ENGINES)
def test_the_rate_is_charged_before_decoding_and_by_size(engine):
    """Malformed requests pay: one token plus one per 64 KiB, before decoding (issue 9 §10)."""
    service = offload_service(engine, Policy(quota=Quota(commands_per_second=1.0, command_burst=20)),
                              clock=lambda: 0.0)
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    try:
        h = BpfCommandHandler(service, dev)
        big = b"\xff" * ((256 << 10) - 2)  # with class and command 256 KiB: 5 tokens
        for _ in range(4):
            r = decode_reply(Command.PROG_LOAD, _ask(h, Command.PROG_LOAD, big, 256))
            assert r.code == Errno.EINVAL
        r = decode_reply(Command.MAP_UPDATE, _ask(h, Command.MAP_UPDATE, b"\xff", 256))
        assert r.code == Errno.EAGAIN and r.text.endswith("(rule rate)")  # not decoded: no field named
        counters = service.show()[0]["counters"]
        assert counters["commands"] == 5 and counters["rate_limited"] == 1
    finally:
        service.remove_device(dev)


def test_kernel_internal_errnos_become_linux_ones():
    assert linux_errno(524) == errno.EOPNOTSUPP  # ENOTSUPP, from the verifier and map code
    assert linux_errno(512) == errno.EINTR and linux_errno(517) == errno.EAGAIN and linux_errno(520) == errno.EIO
    assert linux_errno(errno.EACCES) == errno.EACCES and linux_errno(0) == 0
