"""STATE_EXPORT / STATE_IMPORT: a device's maps (contents, frozen), programs (the guest's
instructions), prog_array entries and attachment move to a fresh device under the same handles,
and a damaged, oversized or forbidden state is refused leaving the destination empty.

On the real kernel (privileged), devices sit on the two ends of a veth pair (each in its own netns,
198.18.0.0/15, `NetLab`) so both can attach natively; the corruption tests use the loopback (no
attachment in their state) and look for leftover kernel objects by name. Everything but those
also runs on the interpreter with recorded ports, unprivileged (`offload_engines.ENGINES`). Commands go
through `BpfCommandHandler` and `OffloadClient`, as a guest's would; the service is closed in
``finally``, so nothing outlives a test.
"""

from __future__ import annotations

import errno
import struct
import tracemalloc
import zlib
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from offload_engines import ENGINES, offload_service
from testpaths import SAMPLES_BUILD

from vxdp.bpf import elf, link
from vxdp.bpf.helpers import Helper
from vxdp.bpf.isa import EXIT, Insn
from vxdp.bpf.kernel.xdp import query_xdp
from vxdp.bpf.mapspec import MapFlag, MapType
from vxdp.host.offload.handler import BpfCommandHandler
from vxdp.host.offload.handles import Kind
from vxdp.host.offload.policy import DEFAULT_HELPERS, Policy, Quota
from vxdp.host.offload.port import RecordedPort
from vxdp.host.offload.service import OffloadService
from vxdp.host.offload.state_format import DeviceState, Entries, MapState, decode_state, encode_state
from vxdp.offload.client import OffloadClient, OffloadRefused
from vxdp.offload.codec import decode_reply, encode_request
from vxdp.offload.messages import StateExportRequest, StateImportRequest
from vxdp.offload.wire import CapsFlag, Errno
from vxdp.packets import frame
from vxdp.testing.kobjects import device_name, kernel_ids, names_left, prog_names
from vxdp.testing.netns import NetLab
from vxdp.virtio.features import Experimental

OFFLOADED = Experimental.NET_BPF_OFFLOAD.bit  # the acked features of a frontend that negotiated offload

U32 = struct.Struct("<I")
PACKETS = [frame(k) for k in ("ipv4/udp", "ipv4/tcp", "ipv4/icmp", "arp", "ipv6/udp")]


def _dev() -> str:
    return device_name("s")


def _client(s: OffloadService, dev: str, max_capacity: int | None = None) -> OffloadClient:
    h = BpfCommandHandler(s, dev)
    return OffloadClient(h.handle, max_capacity=max_capacity)


def _load(s: OffloadService, dev: str, path, programs: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    obj = elf.load_object(path)
    maps = {n: s.map_create(dev, type=m.type, key_size=m.key_size, value_size=m.value_size,
                            max_entries=m.max_entries, flags=m.flags, name=n) for n, m in obj.maps.items()}
    progs = {}
    for name in programs:
        linked = link.link(obj, name)
        progs[name], _ = s.prog_load(dev, link.resolve_maps(linked, maps), name=name, license=linked.license,
                                     btf=obj.btf_raw, func_info=linked.func_info, line_info=linked.line_info)
    return maps, progs


def _populate(s: OffloadService, dev: str, attach: bool = True) -> dict[str, int]:
    """xdp1 with counts in rxcnt, the tail-call corpus with a filled prog_array, a frozen read-only map."""
    m1, p1 = _load(s, dev, SAMPLES_BUILD / "xdp1.o", ["xdp_prog1"])
    m2, p2 = _load(s, dev, SAMPLES_BUILD / "corpus" / "tail_calls.o", ["xdp_entry", "handle_ipv4", "handle_other"])
    for proto, n in ((17, 5), (6, 7), (1, 11)):
        s.map_update(dev, m1["rxcnt"], U32.pack(proto), struct.pack("<Q", n))
    s.map_update(dev, m2["jmp_table"], U32.pack(0), U32.pack(p2["handle_ipv4"]))
    s.map_update(dev, m2["jmp_table"], U32.pack(2), U32.pack(p2["handle_other"]))
    s.map_update(dev, m2["hops"], U32.pack(3), struct.pack("<Q", 99))
    const = s.map_create(dev, type=MapType.ARRAY, key_size=4, value_size=16, max_entries=1,
                         flags=MapFlag.RDONLY_PROG, name="const")
    s.map_update(dev, const, U32.pack(0), b"constant-value!!")
    s.map_freeze(dev, const)
    scratch = s.map_create(dev, type=MapType.HASH, key_size=8, value_size=4, max_entries=64, name="gone")
    s.free(dev, scratch)  # a hole in the handles: the import must keep the others where they were
    if attach:
        s.prog_attach(dev, p2["xdp_entry"])
    return {**m1, **m2, "const": const, **p1, **p2}


def _contents(s: OffloadService, dev: str) -> dict[int, dict[bytes, bytes]]:
    return {m["handle"]: dict(s.map_lookup_batch(dev, m["handle"], None, 0)[0]) for m in _shown(s, dev)["maps"]}


def _shown(s: OffloadService, dev: str) -> dict:
    return next(d for d in s.show() if d["name"] == dev)


def _objects(s: OffloadService, dev: str) -> tuple[list, list]:
    d = _shown(s, dev)
    maps = [(m["handle"], m["name"], m["type"], m["key_size"], m["value_size"], m["max_entries"], m["flags"],
             m["frozen"]) for m in d["maps"]]
    progs = [(p["handle"], p["name"], p["tag"], p["insns"], p["maps"]) for p in d["programs"]]
    return maps, progs


def _runs(s: OffloadService, dev: str) -> list[tuple[int, int, bytes]]:
    d = s.devices[dev]
    out = []
    for p in d.progs():
        for pkt in PACKETS:
            r = d.engine.run(p.engine_handle, pkt)
            out.append((p.handle, r.action, r.packet))
    return out


def _empty(s: OffloadService, dev: str) -> bool:
    d = s.devices[dev]
    return len(d.handles) == 0 and d.attached is None and d.map_memory == 0


@pytest.fixture
def pair(service):
    """Two ports that run programs: on the kernel a veth pair, each end in its own netns with IPv6 off
    (so the kernel sends nothing of its own that the attached programs would count); ``None`` on an
    engine whose ports are recorded."""
    if service.port_factory is RecordedPort:
        yield None
        return
    with NetLab("vxs") as lab:
        ns_a, ns_b = lab.netns(ipv6=False), lab.netns(ipv6=False)
        yield lab.veth(ns_a, ns_b, "vsa", "vsb", addr_a="198.18.0.21/30", addr_b="198.18.0.22/30")


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_state_moves_maps_programs_prog_array_and_attachment_under_the_same_handles(pair, service):
    a, b = _dev(), _dev()
    service.add_device(a, pair.b if pair else "vsb", netns=pair.ns_b if pair else None, acked_features=lambda: OFFLOADED)
    service.add_device(b, pair.a if pair else "vsa", netns=pair.ns_a if pair else None, acked_features=lambda: OFFLOADED)
    h = _populate(service, a)
    assert _client(service, a).caps().flags & CapsFlag.STATE
    # small ctrl buffers: the state crosses in many chunks each way
    blob = _client(service, a, max_capacity=256).state_export()
    assert len(blob) > 10 * 200 and blob.startswith(b"VXDPSTAT")
    assert blob == service.state_export(a)  # nothing changed in between: the same snapshot
    _client(service, b, max_capacity=300).state_import(blob)

    assert _objects(service, b) == _objects(service, a)  # handles, names, specs, frozen, tags (same insns)
    assert _shown(service, b)["maps"][-1]["frozen"] and _shown(service, b)["maps"][-1]["handle"] == h["const"]
    assert _contents(service, b) == _contents(service, a)
    jt = _contents(service, b)[h["jmp_table"]]
    assert jt == {U32.pack(0): U32.pack(h["handle_ipv4"]), U32.pack(2): U32.pack(h["handle_other"])}
    with pytest.raises(Exception, match="frozen|Operation not permitted"):
        service.map_update(b, h["const"], U32.pack(0), bytes(16))
    # the attachment: the same guest handle, natively on B's port
    assert service.devices[b].attached == h["xdp_entry"]
    b_entry = service.devices[b].handles.get(h["xdp_entry"], Kind.PROG)
    if pair:
        assert query_xdp(pair.a, netns=pair.ns_a) == b_entry.kernel_id
    else:
        assert service.devices[b].port.rx == b_entry.engine_handle
    # the programs compute the same: same verdicts and packets, same map updates (tail calls included)
    assert _runs(service, b) == _runs(service, a)
    assert _contents(service, b) == _contents(service, a)
    assert _contents(service, b)[h["hops"]][U32.pack(0)] != bytes(8)  # the tail-called ipv4 handler counted
    # new handles on B come after every imported one
    assert service.map_create(b, type=MapType.ARRAY, key_size=4, value_size=4, max_entries=1) > max(h.values())
    # a second import into a device with objects: EBUSY, and B keeps what it has
    with pytest.raises(OffloadRefused) as e:
        _client(service, b).state_import(blob)
    assert e.value.code == Errno.EBUSY
    assert service.devices[b].attached == h["xdp_entry"]


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_export_snapshot_is_kept_across_interleaved_commands_and_tokens_go_stale(service):
    a = _dev()
    service.add_device(a, "lo", acked_features=lambda: OFFLOADED)
    h = _populate(service, a, attach=False)
    c = _client(service, a)
    first = c.state_export_chunk(b"", 200)
    service.map_update(a, h["rxcnt"], U32.pack(17), struct.pack("<Q", 12345))  # after the snapshot
    parts, token = [first.chunk], first.token
    while token:
        r = c.state_export_chunk(token, 200)
        parts.append(r.chunk)
        token = r.token
    old = decode_state(b"".join(parts))
    rx = next(m for m in old.maps if m.handle == h["rxcnt"])
    assert dict(rx.entries)[U32.pack(17)] == struct.pack("<Q", 5)  # the state of the start
    assert dict(next(m for m in decode_state(c.state_export()).maps
                     if m.handle == h["rxcnt"]).entries)[U32.pack(17)] == struct.pack("<Q", 12345)
    # a token from a finished (or superseded) walk is refused
    with pytest.raises(OffloadRefused) as e:
        c.state_export_chunk(first.token, 200)
    assert e.value.code == Errno.EINVAL and "token" in e.value.message


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_a_program_the_destination_policy_forbids_refuses_the_whole_import(service, request):
    engine = request.node.callspec.params["service"]
    a = _dev()
    service.add_device(a, "lo", acked_features=lambda: OFFLOADED)
    _populate(service, a, attach=False)
    blob = service.state_export(a)
    strict = offload_service(engine, Policy(helpers=DEFAULT_HELPERS - {Helper.tail_call}))
    try:
        b = _dev()
        strict.add_device(b, "lo", acked_features=lambda: OFFLOADED)
        before = kernel_ids()
        with pytest.raises(OffloadRefused) as e:
            _client(strict, b).state_import(blob)
        assert e.value.code == Errno.EPERM and e.value.rule == "helpers.allow", str(e.value)
        assert "tail_call" in e.value.message
        assert _empty(strict, b)
        if engine == "kernel":
            assert names_left(b + "_", before) == ([], [])
        # quotas of the destination apply too: too little map memory
        small = offload_service(engine, Policy(quota=Quota(max_map_memory=4096)))
        try:
            c = _dev()
            small.add_device(c, "lo", acked_features=lambda: OFFLOADED)
            with pytest.raises(OffloadRefused) as e:
                _client(small, c).state_import(blob)
            assert e.value.code in (Errno.ENOSPC, Errno.E2BIG) and e.value.rule in ("quota.max_map_memory",
                                                                                    "quota.state_size")
            assert _empty(small, c)
        finally:
            small.close()
    finally:
        strict.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_oversized_state_is_refused_before_it_is_buffered(engine):
    b = _dev()
    tiny = offload_service(engine, Policy(quota=Quota(max_map_memory=1024, max_total_insns=64, max_progs=1)))
    try:
        tiny.add_device(b, "lo", acked_features=lambda: OFFLOADED)
        c = _client(tiny, b)
        limit = 1024 + 64 * 48 + (2 << 20) + (1 << 20)
        with pytest.raises(OffloadRefused) as e:
            c.state_import(bytes(limit + 1), chunk_size=1 << 20)
        assert e.value.code == Errno.E2BIG and e.value.rule == "quota.state_size"
        assert tiny.devices[b].import_buffer is None and _empty(tiny, b)
    finally:
        tiny.close()


@pytest.fixture(scope="module")
def lo_pair():
    """Device A on the loopback with a populated state (no attachment: lo has no native XDP), and an
    empty device B to import damaged copies of A's state into."""
    s = OffloadService(policy=Policy(quota=Quota(commands_per_second=1e9, command_burst=10 ** 9)))
    try:
        a, b = _dev(), _dev()
        s.add_device(a, "lo", acked_features=lambda: OFFLOADED)
        s.add_device(b, "lo", acked_features=lambda: OFFLOADED)
        _populate(s, a, attach=False)
        yield s, a, b, s.state_export(a)
    finally:
        s.close()


def _import(s: OffloadService, dev: str, blob: bytes):
    h = BpfCommandHandler(s, dev)
    req = encode_request(StateImportRequest(blob, 1))
    return decode_reply(req.command, h.handle(req, 1 << 16))


@pytest.mark.privileged
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_state_is_refused_cleanly_and_leaves_the_device_empty(lo_pair, data):
    s, a, b, blob = lo_pair
    how = data.draw(st.sampled_from(["truncate", "flip", "flip+crc"]))
    if how == "truncate":
        bad = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        pos = data.draw(st.integers(0, len(blob) - 5))
        bad = bytearray(blob)
        bad[pos] ^= data.draw(st.integers(1, 255))
        if how == "flip+crc":  # past the checksum: the parser and the import's checks must hold
            bad[-4:] = zlib.crc32(bytes(bad[:-4])).to_bytes(4, "little")
        bad = bytes(bad)
    r = _import(s, b, bad)
    if how != "flip+crc":
        assert r.code == Errno.EINVAL, r.text
        assert "STATE_IMPORT" in r.text and "\n" not in r.text.strip()
    if r.ok:  # a flip in a value or a name can be a valid state: then it is a whole one
        assert len(s.devices[b].handles) == len(s.devices[a].handles)
        s.reset(b)
    else:
        assert r.code in set(Errno) - {Errno.EIO}, r.text  # a refusal of ours, never an internal error
        assert _empty(s, b), r.text
        assert list(prog_names(b + "_").values()) == []  # programs go at their last close
    assert _empty(s, b)


@pytest.mark.privileged
def test_no_kernel_object_of_the_destination_survives_the_damaged_imports(lo_pair):
    s, a, b, blob = lo_pair
    # the last program reads r0 before setting it: the host verifier refuses it after every map and the
    # other programs were made; its log comes back as PROG_LOAD's would
    state = decode_state(blob)
    last = state.progs[-1]
    bad_prog = replace(last, load=replace(last.load, insns=(Insn(EXIT),), func_info=(), line_info=()))
    before = kernel_ids()
    r = _import(s, b, encode_state(replace(state, progs=state.progs[:-1] + (bad_prog,))))
    assert r.code == Errno.EACCES and "verifier" in r.text and "R0 !read_ok" in r.text, r.text
    assert _empty(s, b)
    assert names_left(b + "_", before) == ([], [])
    assert _import(s, b, b"").code == Errno.EINVAL
    r = _import(s, b, blob)
    assert r.ok, r.text
    assert _objects(s, b) == _objects(s, a)
    s.reset(b)


@pytest.mark.privileged
def test_export_request_with_a_forged_token_is_refused(lo_pair):
    s, a, _, _ = lo_pair
    h = BpfCommandHandler(s, a)
    req = encode_request(StateExportRequest(b"\x01" * 12))
    r = decode_reply(req.command, h.handle(req, 4096))
    assert r.code == Errno.EINVAL and "token" in r.text
    assert errno.EINVAL == Errno.EINVAL


@pytest.mark.parametrize("service", ENGINES, indirect=True)
def test_a_state_declaring_a_huge_map_is_refused_from_its_header_before_anything_is_allocated(service):
    """The attack: 12 MB declaring one map of 4 M entries (1 M of them present). On main the decoder
    made a (key, value) pair per entry before MAP_CREATE's quota refused it: +509 MB of RSS, 42 x the
    blob. Now the quota is asked at the map's header, and entries stay in the blob's buffer. Bound:
    the buffered blob, the decoder's one copy of it and a chunk in flight, 3 x the blob + 8 MiB
    (Python allocations, tracemalloc's peak); a per-entry object would be ~100 bytes each, 100 MB."""
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    n = 1 << 20
    huge = MapState(1, "huge", int(MapType.HASH), 4, 8, 4 << 20, 0, False, 8,
                    Entries(b"".join(U32.pack(i) + bytes(8) for i in range(n)), 4, 8))
    blob = encode_state(DeviceState(maps=(huge,), next_handle=2))
    assert len(blob) > 12 * 10 ** 6
    client = _client(service, dev)
    tracemalloc.start()
    try:
        with pytest.raises(OffloadRefused) as e:
            client.state_import(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.code == Errno.E2BIG and e.value.rule == "quota.max_entries", str(e.value)
    assert "STATE_IMPORT" in e.value.message or "max_entries" in e.value.message
    assert peak < 3 * len(blob) + (8 << 20), f"peak {peak / 2**20:.1f} MiB for a {len(blob) / 2**20:.1f} MiB blob"
    assert _empty(service, dev)
    # over the map count and the instruction quota: refused at the counts, the same way
    many = DeviceState(maps=tuple(MapState(h, f"m{h}", int(MapType.ARRAY), 4, 4, 1, 0, False, 4)
                                  for h in range(1, 18)), next_handle=18)
    with pytest.raises(OffloadRefused) as e:
        client.state_import(encode_state(many))
    assert e.value.code == Errno.ENOSPC and e.value.rule == "quota.max_maps", str(e.value)
    # a good state still imports: the blob of a populated device, whole
    src = _dev()
    service.add_device(src, "lo", acked_features=lambda: OFFLOADED)
    _populate(service, src, attach=False)
    client.state_import(service.state_export(src))
    assert _objects(service, dev) == _objects(service, src)
