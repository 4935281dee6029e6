"""OffloadService: maps, programs, attach, tail calls between offloaded programs, refusals, cleanup.

On the real kernel (privileged): programs through the verifier, native attach to a veth port in a
netns (198.18.0.0/15, `NetLab`), live frames. The rules that need no kernel (handles, policy,
quotas, rate, prog_array translation, what the port runs) also run on the interpreter with a
recorded port, unprivileged (`offload_engines.ENGINES`). The service is closed in ``finally``,
so nothing outlives a test.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import struct
from collections import Counter

import pytest
from offload_engines import ENGINES, offload_service
from testpaths import SAMPLES_BUILD

from vxdp.bpf import elf, link
from vxdp.bpf.helpers import Helper
from vxdp.bpf.isa import EXIT, Insn, PseudoCall, PseudoSrc, XdpAction, lddw
from vxdp.bpf.kernel.live_frames import send_live_frames_in
from vxdp.bpf.kernel.objects import map_ids, prog_ids
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.kernel.xdp import XdpMode, attach_xdp, detach_xdp, query_xdp
from vxdp.bpf.mapspec import MapType, possible_cpus
from vxdp.engine.kernel import KERNEL_NAME_SHOWN, KernelEngine
from vxdp.frames import FrameBatch
from vxdp.host.offload.errors import OffloadError
from vxdp.host.offload.handles import Kind
from vxdp.host.offload.policy import Policy, Quota
from vxdp.host.offload.port import RecordedPort
from vxdp.host.offload.service import OffloadService, kernel_prefix
from vxdp.packets import frame
from vxdp.testing.kobjects import prog_names, wait_gone
from vxdp.testing.netns import NetLab
from vxdp.virtio.features import Experimental

OFFLOADED = Experimental.NET_BPF_OFFLOAD.bit  # the acked features of a frontend that negotiated offload

_seq = itertools.count()
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


@pytest.fixture
def port():
    """A veth pair: ``a`` in a traffic netns (IPv6 off, so the kernel sends nothing of its own),
    ``b`` (the device's host port) in a port netns."""
    with NetLab("vxo") as lab:
        ns_a, ns_b = lab.netns(ipv6=False), lab.netns(ipv6=False)
        pair = lab.veth(ns_a, ns_b, "vxa", "vxb", addr_a="198.18.0.1/30", addr_b="198.18.0.2/30")
        yield pair


def _dev() -> str:
    return f"t{os.getpid() % 1000}{next(_seq)}"


def offload_object(s: OffloadService, dev: str, path, programs: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Create the object's maps through the service, then load each program with guest handles."""
    obj = elf.load_object(path)
    maps = {name: s.map_create(dev, type=spec.type, key_size=spec.key_size, value_size=spec.value_size,
                               max_entries=spec.max_entries, flags=spec.flags, name=name)
            for name, spec in obj.maps.items()}
    progs = {}
    for name in programs:
        linked = link.link(obj, name)
        insns = link.resolve_maps(linked, maps)
        progs[name], tag = s.prog_load(dev, insns, name=name, license=linked.license, btf=obj.btf_raw,
                                       func_info=linked.func_info, line_info=linked.line_info)
        assert len(tag) == 16
    return maps, progs


def _u64(b: bytes | None) -> int:
    return U64.unpack(b)[0] if b is not None else -1


def _names_alive(prefix: str) -> list[str]:
    """Names of live kernel programs starting with ``prefix`` (ours: the device prefix is unique)."""
    return list(prog_names(prefix).values())


# -- the xdp1 offload, end to end on a veth port --------------------------------------------------

@pytest.mark.privileged
def test_xdp1_offloaded_drops_and_counts_live_frames(port, service):
    dev = _dev()
    service.add_device(dev, port.b, netns=port.ns_b)
    maps, progs = offload_object(service, dev, SAMPLES_BUILD / "xdp1.o", ["xdp_prog1"])
    h = progs["xdp_prog1"]
    service.prog_attach(dev, h)
    assert query_xdp(port.b, XdpMode.NATIVE, netns=port.ns_b) == service.show()[0]["programs"][0]["kernel_id"]
    sent = Counter()
    with KernelProgram.load([Insn(0xB7, 0, 0, 0, XdpAction.TX), Insn(EXIT)], name="t_gen_tx") as gen:
        for kind, proto, n in (("ipv4/udp", 17, 300), ("ipv4/tcp", 6, 200), ("ipv4/icmp", 1, 100),
                               ("ipv6/udp", 17, 50)):
            send_live_frames_in(port.ns_a, gen, frame(kind), ifindex=port.a_index, count=n)
            sent[proto] += n
    for proto, n in sent.items():
        assert _u64(service.map_lookup(dev, maps["rxcnt"], U32.pack(proto))) == n
    total = sum(sent.values())
    assert service.prog_counters(dev, h) == {"aborted": 0, "drop": total, "pass": 0, "tx": 0,
                                             "redirect": 0, "other": 0}
    q = service.prog_query(dev)
    assert q["attached"] == h and q["programs"][0]["actions"]["drop"] == total
    shown = service.show()[0]
    p = shown["programs"][0]
    assert (p["name"], p["maps"], p["insns"]) == ("xdp_prog1", [maps["rxcnt"]], p["host_insns"] - 16)
    assert p["attached"] == {"ifname": port.b, "ifindex": port.b_index, "netns": port.ns_b, "mode": "native"}
    assert p["kernel_name"].startswith(dev + "_")  # what bpftool prog show prints
    assert shown["maps"][0] | {"kernel_id": 0} == {
        "handle": maps["rxcnt"], "name": "rxcnt", "kernel_name": f"{dev}_rxcnt", "type": "array", "key_size": 4,
        "value_size": 8, "max_entries": 256, "flags": 0, "memory": 256 * 16, "kernel_id": 0,
        "frozen": False, "origin": "guest"}
    service.prog_detach(dev)
    assert query_xdp(port.b, netns=port.ns_b) is None


# -- attaching through a link: replace, what the port runs at start ------------------------------

SERVICE_LOG = "vxdp.host.offload.port"


@pytest.mark.privileged
def test_replace_updates_the_one_link_and_the_replaced_program_stays_loaded(port, service):
    """A second attach is BPF_LINK_UPDATE on the same link (never detach, then attach): the link's id
    does not change, the port runs the new program, the old one is loaded, no longer attached."""
    dev = _dev()
    service.add_device(dev, port.b, netns=port.ns_b)
    _, first = offload_object(service, dev, SAMPLES_BUILD / "xdp1.o", ["xdp_prog1"])
    _, second = offload_object(service, dev, SAMPLES_BUILD / "xdp_pass.o", ["xdp_pass"])
    h1, h2 = first["xdp_prog1"], second["xdp_pass"]
    service.prog_attach(dev, h1)
    link_id = service.devices[dev].port.link.info().id
    service.prog_attach(dev, h2)
    ids = {p["handle"]: p["kernel_id"] for p in service.show()[0]["programs"]}
    assert query_xdp(port.b, XdpMode.NATIVE, netns=port.ns_b) == ids[h2]
    assert service.devices[dev].port.link.info().id == link_id and service.devices[dev].port.link.info().prog_id == ids[h2]
    assert service.prog_query(dev)["attached"] == h2
    service.free(dev, h1)  # replaced: no longer attached, so it can go
    _refused(service.free, dev, h2, rule="handles", err=errno.EBUSY, match="attached")
    service.remove_device(dev)
    assert query_xdp(port.b, netns=port.ns_b) is None


@pytest.mark.privileged
def test_a_program_an_earlier_vxdp_left_on_the_port_is_detached_at_start(port, service, caplog):
    """A program of this device's kernel prefix, attached the old (netlink) way, outlived its daemon:
    the next add_device takes it off the port and says so."""
    dev = _dev()
    left = KernelEngine(name_prefix=kernel_prefix(dev))
    fd = left.load_program("xdp_prog1", [Insn(0xB7, 0, 0, 0, XdpAction.DROP), Insn(EXIT)])
    left_id = left.program(fd).info().id
    attach_xdp(port.b_index, fd, XdpMode.NATIVE, netns=port.ns_b)
    left.close()  # the port holds it now, as after a killed daemon of before
    assert query_xdp(port.b, netns=port.ns_b) == left_id
    with caplog.at_level(logging.WARNING, logger=SERVICE_LOG):
        service.add_device(dev, port.b, netns=port.ns_b)
    assert query_xdp(port.b, netns=port.ns_b) is None
    (msg,) = [r.getMessage() for r in caplog.records if r.name == SERVICE_LOG]
    name = (kernel_prefix(dev) + "xdp_prog1")[:KERNEL_NAME_SHOWN]
    assert f"detached XDP program '{name}' (id {left_id})" in msg and "earlier vxdp" in msg, msg


@pytest.mark.privileged
def test_a_foreign_program_on_the_port_is_left_with_a_warning_and_our_attach_is_ebusy(port, service, caplog):
    dev = _dev()
    with KernelProgram.load([Insn(0xB7, 0, 0, 0, XdpAction.PASS), Insn(EXIT)], name="foreign_xdp") as p:
        attach_xdp(port.b_index, p.fd, XdpMode.NATIVE, netns=port.ns_b)
        try:
            with caplog.at_level(logging.WARNING, logger=SERVICE_LOG):
                service.add_device(dev, port.b, netns=port.ns_b)
            assert query_xdp(port.b, netns=port.ns_b) == p.info().id  # left alone
            (msg,) = [r.getMessage() for r in caplog.records if r.name == SERVICE_LOG]
            assert "'foreign_xdp'" in msg and "left alone" in msg and port.b in msg
            _, progs = offload_object(service, dev, SAMPLES_BUILD / "xdp1.o", ["xdp_prog1"])
            err = _refused(service.prog_attach, dev, progs["xdp_prog1"], rule=None, err=errno.EBUSY)
            assert f"already runs XDP program 'foreign_xdp' (id {p.info().id})" in str(err), str(err)
            assert service.prog_query(dev)["attached"] is None
        finally:
            detach_xdp(port.b_index, XdpMode.NATIVE, netns=port.ns_b)


@pytest.mark.privileged
def test_reset_and_remove_free_every_kernel_object(port, service):
    dev = _dev()
    service.add_device(dev, port.b, netns=port.ns_b)
    progs_before = prog_ids()
    offload_object(service, dev, SAMPLES_BUILD / "corpus" / "tail_calls.o",
                   ["xdp_entry", "handle_ipv4", "handle_other"])
    service.prog_attach(dev, 4)
    pids, mids = service.kernel_ids(dev)
    assert len(pids) == 3 and len(mids) == 2 + 3  # two guest maps, a counter map per program
    assert pids <= prog_ids() - progs_before and mids <= map_ids()
    assert len(_names_alive(dev + "_")) == 3
    service.reset(dev)
    assert query_xdp(port.b, netns=port.ns_b) is None
    assert pids & prog_ids() == set()  # program ids go at the last close
    assert wait_gone(mids, map_ids) == set()
    assert _names_alive(dev + "_") == []
    assert service.show()[0]["programs"] == [] and service.caps(dev)["usage"]["maps"] == 0
    # the device still works after a reset, and its handles keep counting up
    h = service.map_create(dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, name="again")
    assert h > 5
    _, mids2 = service.kernel_ids(dev)
    service.remove_device(dev)
    assert wait_gone(mids2, map_ids) == set()
    assert dev not in service.devices


# -- tail calls across offloaded programs -------------------------------------------------------

@pytest.mark.privileged
def test_tail_calls_through_a_prog_array_of_guest_handles(port, service):
    dev = _dev()
    service.add_device(dev, port.b, netns=port.ns_b)
    maps, progs = offload_object(service, dev, SAMPLES_BUILD / "corpus" / "tail_calls.o",
                                 ["xdp_entry", "handle_ipv4", "handle_other"])
    jt = maps["jmp_table"]
    service.map_update(dev, jt, U32.pack(0), U32.pack(progs["handle_ipv4"]))
    service.map_update(dev, jt, U32.pack(2), U32.pack(progs["handle_other"]))
    # lookups answer in guest handles, never host fds or kernel ids
    assert service.map_lookup(dev, jt, U32.pack(0)) == U32.pack(progs["handle_ipv4"])
    assert service.map_lookup(dev, jt, U32.pack(1)) is None
    items, _ = service.map_lookup_batch(dev, jt)
    assert dict(items) == {U32.pack(0): U32.pack(progs["handle_ipv4"]), U32.pack(2): U32.pack(progs["handle_other"])}
    with pytest.raises(OffloadError, match=f"handle {maps['hops']} is not a program of device {dev}"):
        service.map_update(dev, jt, U32.pack(1), U32.pack(maps["hops"]))
    service.prog_attach(dev, progs["xdp_entry"])
    with KernelProgram.load([Insn(0xB7, 0, 0, 0, XdpAction.TX), Insn(EXIT)], name="t_gen_tx") as gen:
        for kind, n in (("ipv4/udp", 40), ("ipv4/tcp", 30), ("arp", 20), ("ipv6/udp", 10)):
            send_live_frames_in(port.ns_a, gen, frame(kind), ifindex=port.a_index, count=n)
    hops = [_u64(service.map_lookup(dev, maps["hops"], U32.pack(i))) for i in range(4)]
    assert hops == [70, 0, 20, 10]  # IPv6: slot 1 is empty, the tail call falls through
    counts = {name: service.prog_counters(dev, h) for name, h in progs.items()}
    # the verdict is counted by the program that gave it: the tail-called one
    assert counts["handle_ipv4"]["tx"] == 40 and counts["handle_ipv4"]["pass"] == 30
    assert counts["handle_other"]["drop"] == 20
    assert counts["xdp_entry"] == {"aborted": 0, "drop": 0, "pass": 10, "tx": 0, "redirect": 0, "other": 0}


# -- refusals, each naming its rule -------------------------------------------------------------

def _refused(fn, *args, rule: str | None, err: int | None = None, match: str = "", **kwargs) -> OffloadError:
    with pytest.raises(OffloadError) as e:
        fn(*args, **kwargs)
    assert e.value.rule == rule, str(e.value)
    if err is not None:
        assert e.value.errno == err
    assert match in str(e.value)
    return e.value


def _calls(helper: int) -> list[Insn]:
    return [Insn(0xB7, 1, 0, 0, 0), Insn(0x85, 0, PseudoCall.HELPER, 0, int(helper)), Insn(0xB7, 0, 0, 0, 2),
            Insn(EXIT)]


def _lo_service(engine: str, **quota) -> tuple[OffloadService, str]:
    now = [0.0]
    s = offload_service(engine, Policy(quota=Quota(**quota)), clock=lambda: now[0])
    s.now = now  # type: ignore[attr-defined]
    dev = _dev()
    s.add_device(dev, "lo")
    return s, dev


@pytest.mark.parametrize("engine", ENGINES)
def test_program_refusals(engine):
    s, dev = _lo_service(engine)
    try:
        _refused(s.prog_load, dev, _calls(Helper.redirect), name="r", rule="helpers.never",
                 match="bpf_redirect (23)")
        _refused(s.prog_load, dev, _calls(Helper.redirect_map), name="r", rule="helpers.never")
        _refused(s.prog_load, dev, _calls(Helper.fib_lookup), name="f", rule="helpers.never",
                 match="policy: helper bpf_fib_lookup (69) is never allowed")
        _refused(s.prog_load, dev, [Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)], name="tc", prog_type=3, rule="prog_type")
        _refused(s.prog_load, dev, [*lddw(1, 99, PseudoSrc.MAP_FD), Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)],
                 name="m", rule=None, err=errno.EBADF, match=f"handle 99 is not a map of device {dev}")
        if engine == "kernel":  # the kernel verifier's refusal carries its log back
            e = _refused(s.prog_load, dev, [Insn(EXIT)], name="bad", rule="verifier",
                         match="kernel verifier refused program 'bad'")
            assert "R0 !read_ok" in e.log and "R0 !read_ok" in str(e)
        assert s.show()[0]["counters"]["refused"] == (6 if engine == "kernel" else 5)
        assert s.kernel_ids(dev) == (set(), set())  # nothing left behind by refused loads
    finally:
        s.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_bare_redirect_loads_and_is_counted(engine):
    s, dev = _lo_service(engine)
    try:
        h, _ = s.prog_load(dev, [Insn(0xB7, 0, 0, 0, XdpAction.REDIRECT), Insn(EXIT)], name="bare")
        obj = s.devices[dev].handles.get(h, Kind.PROG)
        assert s.devices[dev].engine.run(obj.engine_handle, bytes(64), repeat=3).action == XdpAction.REDIRECT
        assert s.prog_counters(dev, h)["redirect"] == 3
    finally:
        s.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_map_refusals_and_quotas(engine):
    s, dev = _lo_service(engine, max_maps=2, max_map_memory=4096, max_progs=1, max_total_insns=6, max_insns=4)
    try:
        _refused(s.map_create, dev, type=MapType.DEVMAP, key_size=4, value_size=4, max_entries=1, name="d",
                 rule="map_types.allow", match="devmap")
        _refused(s.map_create, dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, flags=1 << 10,
                 name="mm", rule="map_flags")
        a = s.map_create(dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=128, name="a")  # 2048 B
        _refused(s.map_create, dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=129, name="b",
                 rule="quota.max_map_memory", err=errno.ENOSPC, match="uses 2048 of 4096")
        b = s.map_create(dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=128, name="b")
        _refused(s.map_create, dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, name="c",
                 rule="quota.max_maps")
        s.free(dev, b)  # frees its memory and its slot
        s.map_create(dev, type=MapType.HASH, key_size=4, value_size=8, max_entries=8, name="c")
        _refused(s.prog_load, dev, [Insn(0xB7)] * 4 + [Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)], name="big",
                 rule="quota.max_insns")
        prog = [*lddw(1, a, PseudoSrc.MAP_FD), Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)]
        h, _ = s.prog_load(dev, prog, name="p1")
        _refused(s.prog_load, dev, prog, name="p2", rule="quota.max_progs")
        _refused(s.free, dev, a, rule="handles", err=errno.EBUSY, match=f"used by program handle(s) {h}")
        s.free(dev, h)
        s.free(dev, a)
        _refused(s.free, dev, a, rule=None, err=errno.EBADF)
        s2, dev2 = _lo_service(engine, max_total_insns=6)
        try:
            four = [Insn(0xB7, 0, 0, 0, 2)] * 3 + [Insn(EXIT)]
            s2.prog_load(dev2, four, name="p1")
            _refused(s2.prog_load, dev2, four, name="p2",
                     rule="quota.max_total_insns", match="has 4 of 6 loaded")
        finally:
            s2.close()
    finally:
        s.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_rate_limit_with_an_injected_clock(engine):
    s, dev = _lo_service(engine, commands_per_second=10.0, command_burst=3)
    try:
        for _ in range(3):
            s.caps(dev)
        e = _refused(s.caps, dev, rule="rate", err=errno.EAGAIN, match="more than 10 commands a second")
        assert "burst 3" in str(e)
        s.now[0] += 0.1  # one token back
        s.caps(dev)
        _refused(s.caps, dev, rule="rate")
        assert s.show()[0]["counters"]["rate_limited"] == 2
    finally:
        s.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_operator_commands_take_nothing_from_the_guest_rate_but_quotas_still_apply(engine):
    s, dev = _lo_service(engine, commands_per_second=1.0, command_burst=2, max_maps=2)
    try:
        with s.as_operator():  # far more commands than the guest's burst, the clock standing still
            m = s.map_create(dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, name="op")
            for i in range(10):
                s.map_update(dev, m, U32.pack(0), U64.pack(i))
            s.map_create(dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, name="op2")
            _refused(s.map_create, dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1,
                     name="op3", rule="quota.max_maps")  # the map quota counts the operator's maps
        counters = s.show()[0]["counters"]
        assert counters["operator_commands"] == 13 and counters["commands"] == 0
        assert counters["rate_limited"] == 0
        s.caps(dev)  # the guest still has its whole burst
        s.caps(dev)
        _refused(s.caps, dev, rule="rate", err=errno.EAGAIN)
        with s.as_operator():
            assert s.map_lookup(dev, m, U32.pack(0)) == U64.pack(9)  # the operator is not held back
        _refused(s.caps, dev, rule="rate")  # and leaving the block charges the guest again
    finally:
        s.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_handles_of_another_device_and_the_feature_bit(engine):
    s, dev0 = _lo_service(engine)
    dev1 = _dev()
    s.add_device(dev1, "lo", acked_features=lambda: OFFLOADED)
    try:
        m0 = s.map_create(dev0, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, name="m")
        s.map_create(dev1, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, name="m")
        m1 = s.map_create(dev1, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, name="n")
        assert m1 != m0
        _refused(s.map_lookup, dev0, m1, bytes(4), rule=None, err=errno.EBADF,
                 match=f"handle {m1} is not a map of device {dev0}")
        _refused(s.prog_attach, dev1, m1, rule=None, err=errno.EBADF, match="is not a program")
        assert {d["name"]: d["offload_negotiated"] for d in s.show()} == {dev0: False, dev1: True}
        _refused(s.caps, "nodev", rule=None, err=errno.ENODEV)
        if engine == "kernel":  # the kernel port looks the interface up
            with pytest.raises(OffloadError, match="no such interface"):
                s.add_device("x", "no-such-if0")
    finally:
        s.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_map_operations_through_handles(engine):
    s, dev = _lo_service(engine)
    try:
        h = s.map_create(dev, type=MapType.HASH, key_size=4, value_size=8, max_entries=16, name="h")
        assert s.map_lookup(dev, h, U32.pack(1)) is None
        s.map_update(dev, h, U32.pack(1), U64.pack(10))
        assert s.map_update_batch(dev, h, [(U32.pack(i), U64.pack(i * 10)) for i in range(2, 6)]) == 4
        _refused(s.map_update, dev, h, U32.pack(1), U64.pack(1), 1, rule=None, err=errno.EEXIST)  # NOEXIST
        assert _u64(s.map_lookup(dev, h, U32.pack(3))) == 30
        s.map_delete(dev, h, U32.pack(3))
        _refused(s.map_delete, dev, h, U32.pack(3), rule=None, err=errno.ENOENT)
        _refused(s.map_lookup, dev, h, b"\0", rule=None, err=errno.EINVAL, match="key of 1 bytes")
        keys, k = set(), s.map_get_next_key(dev, h, None)
        while k is not None:
            keys.add(U32.unpack(k)[0])
            k = s.map_get_next_key(dev, h, k)
        assert keys == {1, 2, 4, 5}
        items, _token = s.map_lookup_batch(dev, h, None, 16)
        assert {U32.unpack(k)[0]: U64.unpack(v)[0] for k, v in items} == {1: 10, 2: 20, 4: 40, 5: 50}
        pc = s.map_create(dev, type=MapType.PERCPU_ARRAY, key_size=4, value_size=4, max_entries=2, name="pc")
        ncpu = possible_cpus()
        assert len(s.map_lookup(dev, pc, U32.pack(0))) == 8 * ncpu
        assert s.caps(dev)["possible_cpus"] == ncpu
        assert s.caps(dev)["usage"]["map_memory"] == 16 * (8 + 8) + 2 * (8 + 8 * ncpu)
    finally:
        s.close()


# -- what the port runs, and prog_arrays, on every engine ---------------------------------------

def test_run_rx_runs_the_attached_program_on_a_batch_and_counts_the_verdicts():
    """What the backend calls per batch of port frames on an engine outside the kernel: the program sees
    the batch, TX frames go to ``send``, PASS ones stay in order, the others are dropped; ``show``
    counts them by verdict, across a reset (a new engine) and a new attach."""
    s, dev = _lo_service("interp")
    try:
        # even-length frames are sent back (TX), odd ones dropped, 60-byte ones passed
        code = [Insn(0x61, 2, 1, 4), Insn(0x61, 3, 1, 0), Insn(0x1F, 2, 3),  # r2 = data_end - data
                Insn(0xB7, 0, 0, 0, XdpAction.PASS), Insn(0x15, 2, 0, 4, 60),
                Insn(0xB7, 0, 0, 0, XdpAction.DROP), Insn(0x57, 2, 0, 0, 1), Insn(0x55, 2, 0, 1, 0),
                Insn(0xB7, 0, 0, 0, XdpAction.TX), Insn(EXIT)]
        h, _ = s.prog_load(dev, code, name="split")
        frames = [bytes([i]) * n for i, n in enumerate((60, 64, 65, 60, 100))]
        batch = FrameBatch.allocate(8)
        batch.fill(frames)
        sent: list[bytes] = []
        s.run_rx(dev, batch, lambda b: sent.extend(b.frames()) or b.count)
        assert batch.frames() == frames  # nothing attached: the batch is left alone
        s.prog_attach(dev, h)
        s.run_rx(dev, batch, lambda b: sent.extend(b.frames()) or b.count)
        assert batch.frames() == [frames[0], frames[3]] and sent == [frames[1], frames[4]]
        (shown,) = s.show()
        assert shown["engine"] == "interp" and shown["rx_frames"] == {"drop": 1, "pass": 2, "tx": 2}
        (prog,) = shown["programs"]
        # the program's own counters agree
        assert {k: v for k, v in prog["actions"].items() if v} == {"drop": 1, "pass": 2, "tx": 2}
        s.reset(dev)
        batch.fill(frames)
        s.run_rx(dev, batch, lambda b: b.count)
        assert batch.count == len(frames) and s.show()[0]["rx_frames"] == {"drop": 1, "pass": 2, "tx": 2}
    finally:
        s.close()


def test_a_recorded_port_runs_the_attached_program_and_nothing_is_attached_in_the_kernel():
    """The interpreter's port: attach puts the program's engine handle on RX, a second attach replaces
    it, detach takes it off; reset and free follow the same rules as on a kernel port."""
    s, dev = _lo_service("interp")
    try:
        port = s.devices[dev].port
        assert isinstance(port, RecordedPort) and port.rx is None
        h1, _ = s.prog_load(dev, [Insn(0xB7, 0, 0, 0, XdpAction.DROP), Insn(EXIT)], name="drop")
        h2, _ = s.prog_load(dev, [Insn(0xB7, 0, 0, 0, XdpAction.PASS), Insn(EXIT)], name="pass")
        objs = {o.handle: o for o in s.objects(dev)}
        s.prog_attach(dev, h1)
        assert port.rx == objs[h1].engine_handle
        s.prog_attach(dev, h2)
        assert port.rx == objs[h2].engine_handle and s.prog_query(dev)["attached"] == h2
        shown = {p["handle"]: p["attached"] for p in s.show()[0]["programs"]}
        assert shown == {h1: None, h2: {"ifname": "lo", "ifindex": 0, "netns": None, "mode": "interp"}}
        assert s.devices[dev].engine.run(port.rx, bytes(64)).action == XdpAction.PASS
        _refused(s.free, dev, h2, rule="handles", err=errno.EBUSY, match="attached to lo")
        s.prog_detach(dev)
        assert port.rx is None and s.prog_query(dev)["attached"] is None
        s.prog_attach(dev, h1)
        s.reset(dev)
        assert port.rx is None and s.objects(dev) == []
    finally:
        s.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_prog_array_values_are_guest_handles_both_ways_and_hold_their_programs(engine):
    s, dev = _lo_service(engine)
    try:
        maps, progs = offload_object(s, dev, SAMPLES_BUILD / "corpus" / "tail_calls.o",
                                     ["xdp_entry", "handle_ipv4", "handle_other"])
        jt, ipv4, other = maps["jmp_table"], progs["handle_ipv4"], progs["handle_other"]
        s.map_update(dev, jt, U32.pack(0), U32.pack(ipv4))
        s.map_update_batch(dev, jt, [(U32.pack(2), U32.pack(other))])
        assert s.map_lookup(dev, jt, U32.pack(0)) == U32.pack(ipv4)
        assert s.map_lookup(dev, jt, U32.pack(1)) is None
        items, _ = s.map_lookup_batch(dev, jt)
        assert dict(items) == {U32.pack(0): U32.pack(ipv4), U32.pack(2): U32.pack(other)}
        _refused(s.map_update, dev, jt, U32.pack(1), U32.pack(maps["hops"]), rule=None, err=errno.EBADF,
                 match="is not a program")
        _refused(s.free, dev, other, rule="handles", err=errno.EBUSY, match=f"prog_array handle {jt}")
        s.map_delete(dev, jt, U32.pack(2))
        s.free(dev, other)  # out of the array: it can go
        entry = s.devices[dev].handles.get(progs["xdp_entry"], Kind.PROG)
        r = s.devices[dev].engine.run(entry.engine_handle, frame("ipv4/udp"))
        assert r.action == XdpAction.TX  # tail-called handle_ipv4 answers TX for UDP
        assert s.prog_counters(dev, ipv4)["tx"] == 1 and s.prog_counters(dev, progs["xdp_entry"])["tx"] == 0
    finally:
        s.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_usage_is_read_from_the_table(engine):
    """Caps usage, show and OBJ_LIST's source are one record: what free and reset take away is gone from each."""
    s, dev = _lo_service(engine)
    try:
        a = s.map_create(dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=4, name="a")
        b = s.map_create(dev, type=MapType.HASH, key_size=4, value_size=8, max_entries=4, name="b")
        p, _ = s.prog_load(dev, [*lddw(1, a, PseudoSrc.MAP_FD), Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)], name="p",
                           btf=None)
        usage = s.caps(dev)["usage"]
        assert usage == {"maps": 2, "map_memory": 4 * 16 + 4 * 16, "progs": 1, "insns": 4}
        assert s.show()[0]["map_memory"] == usage["map_memory"]
        assert [o.handle for o in s.objects(dev)] == [a, b, p]
        s.free(dev, b)
        assert s.caps(dev)["usage"] == {"maps": 1, "map_memory": 4 * 16, "progs": 1, "insns": 4}
        assert [m["handle"] for m in s.show()[0]["maps"]] == [a]
        s.reset(dev)
        assert s.caps(dev)["usage"] == {"maps": 0, "map_memory": 0, "progs": 0, "insns": 0}
        assert s.objects(dev) == [] and s.show()[0]["programs"] == []
    finally:
        s.close()


@pytest.mark.privileged
def test_a_program_has_the_same_tag_on_the_interpreter_as_in_the_kernel():
    """The tag names the code (the kernel's rule, map references zeroed): the same guest program,
    with its own maps on each engine, has one tag whichever engine the device runs."""
    tags = []
    for engine in ("kernel", "interp"):
        s, dev = _lo_service(engine)
        try:
            s.map_create(dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, name="pad")
            m = s.map_create(dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, name="m")
            _, tag = s.prog_load(dev, [*lddw(1, m, PseudoSrc.MAP_FD), Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)], name="p")
            tags.append(tag)
        finally:
            s.close()
    assert len(tags[0]) == 16 and tags[0] == tags[1]
