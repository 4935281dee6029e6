"""The offload client and `OffloadEngine` against the device's real handler, in one process.

The client's transport is wired straight to a `BpfCommandHandler` (the class checked; the
`CtrlRequest` and `CtrlReply` handed over as the ctrl vq carries them) over a real
`OffloadService` on the kernel engine; the device's port is a veth end in its own netns (`NetLab`,
198.18.0.0/15), so offloaded programs see live frames. Everything is torn down in
``finally`` blocks and fixtures.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import os
import struct
from collections import Counter

import pytest
from testpaths import SAMPLES_BUILD

from vxdp.bpf import elf
from vxdp.bpf.asm import assemble
from vxdp.bpf.helpers import Helper
from vxdp.bpf.isa import EXIT, Insn, PseudoCall, XdpAction
from vxdp.bpf.kernel.live_frames import send_live_frames_in
from vxdp.bpf.kernel.maps import KernelMap
from vxdp.bpf.kernel.objects import map_ids, prog_ids
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.kernel.xdp import XdpMode, attach_xdp, query_xdp
from vxdp.bpf.mapspec import MapOrigin, MapSpec, MapType, possible_cpus
from vxdp.engine.loader import load_object
from vxdp.host.offload.handler import BpfCommandHandler
from vxdp.host.offload.policy import Policy, Quota
from vxdp.host.offload.service import OffloadService
from vxdp.offload.client import OffloadClient, OffloadRefused
from vxdp.offload.remote import OffloadEngine
from vxdp.offload.wire import CTRL_CLASS_BPF, Errno
from vxdp.packets import frame
from vxdp.testing.kobjects import wait_gone
from vxdp.testing.netns import NetLab
from vxdp.virtio.ctrl_framing import CtrlReply, CtrlRequest
from vxdp.virtio.features import Experimental

pytestmark = pytest.mark.privileged

OFFLOADED = Experimental.NET_BPF_OFFLOAD.bit  # the acked features of a frontend that negotiated offload

_seq = itertools.count()
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


def _dev() -> str:
    return f"g{os.getpid() % 1000}{next(_seq)}"


def wire(handler: BpfCommandHandler, *, log: list | None = None):
    """A transport straight into ``handler``: the request frame in, the reply frame out."""
    def transport(req: CtrlRequest, cap: int) -> CtrlReply:
        assert req.cls == CTRL_CLASS_BPF
        if log is not None:
            log.append((req.command, cap))
        return handler.handle(req, cap)
    return transport


@pytest.fixture
def port():
    with NetLab("vxg") as lab:
        ns_a, ns_b = lab.netns(ipv6=False), lab.netns(ipv6=False)
        yield lab.veth(ns_a, ns_b, "vga", "vgb", addr_a="198.18.0.5/30", addr_b="198.18.0.6/30")


def _client(service: OffloadService, dev: str, **kw) -> OffloadClient:
    return OffloadClient(wire(BpfCommandHandler(service, dev)), **kw)


# The generator: TX each frame out of the traffic end with the MACs of `vxdp.packets.frame` written
# afresh. Live-frames pages are recycled with whatever the last program wrote (veth passes pages
# zero-copy, so xdp2's swap would come back into the generator's next frames otherwise).
GEN_TX = assemble(f"""
    r2 = *(u32 *)(r1 +0)
    r3 = *(u32 *)(r1 +4)
    r4 = r2
    r4 += 12
    if r4 > r3 goto out
    *(u32 *)(r2 +0) = 2      ; dst 02:00:00:00:00:02
    *(u16 *)(r2 +4) = 0x200
    *(u32 *)(r2 +6) = 2      ; src 02:00:00:00:00:01
    *(u16 *)(r2 +10) = 0x100
out:
    r0 = {int(XdpAction.TX)}
    exit
""")


def _send(port, mix) -> Counter:
    sent = Counter()
    with KernelProgram.load(GEN_TX, name="t_gen_tx") as gen:
        for kind, proto, n in mix:
            send_live_frames_in(port.ns_a, gen, frame(kind), ifindex=port.a_index, count=n)
            sent[proto] += n
    return sent


MIX = (("ipv4/udp", 17, 300), ("ipv4/tcp", 6, 200), ("ipv4/icmp", 1, 100), ("ipv6/udp", 17, 50))


# -- whole objects offloaded through load_object(OffloadEngine(...)) -------------------------------

def test_xdp1_offloaded_counts_read_back_through_remote_maps(port, service):
    dev = _dev()
    service.add_device(dev, port.b, netns=port.ns_b, acked_features=lambda: OFFLOADED)
    progs_before, maps_before = prog_ids(), map_ids()
    engine = OffloadEngine(_client(service, dev))
    try:
        loaded = load_object(engine, elf.load_object(SAMPLES_BUILD / "xdp1.o"))
        rxcnt = loaded.maps["rxcnt"]
        assert rxcnt.handle == service.show()[0]["maps"][0]["handle"]  # guest handles in the guest's hands
        prog = loaded.program_handle("xdp_prog1")
        engine.attach(prog)
        assert query_xdp(port.b, XdpMode.NATIVE, netns=port.ns_b) == service.show()[0]["programs"][0]["kernel_id"]
        sent = _send(port, MIX)
        for proto, n in sent.items():
            assert U64.unpack(rxcnt.lookup(U32.pack(proto)))[0] == n
        counted = {U32.unpack(k)[0]: U64.unpack(v)[0] for k, v in rxcnt.items_batched(100) if v != bytes(8)}
        assert counted == dict(sent)
        assert {U32.unpack(k)[0] for k in rxcnt.keys()} == set(range(256))  # noqa: SIM118 -- Map.keys() walks GET_NEXT_KEY
        q = engine.query()
        assert (q.prog, q.actions) == (prog, (0, sum(sent.values()), 0, 0, 0))
        assert q.tag.hex() == service.show()[0]["programs"][0]["tag"]
        with pytest.raises(NotImplementedError, match="no test-run command"):
            engine.run(prog, frame("ipv4/udp"))
        kernel_progs, kernel_maps = service.kernel_ids(dev)
        assert kernel_progs and kernel_maps
    finally:
        engine.close()
    # close: detached, every program and map freed in the kernel
    assert query_xdp(port.b, netns=port.ns_b) is None
    assert service.show()[0]["programs"] == [] and service.show()[0]["maps"] == []
    assert kernel_progs & prog_ids() == set()
    assert wait_gone(kernel_maps, map_ids) == set()
    assert prog_ids() - progs_before == set()
    assert wait_gone(map_ids() - maps_before, map_ids) == set()


def test_xdp2_offloaded_sends_frames_back_with_macs_swapped(port, service):
    dev = _dev()
    service.add_device(dev, port.b, netns=port.ns_b, acked_features=lambda: OFFLOADED)
    engine = OffloadEngine(_client(service, dev))
    # On the traffic side a counter: slot 0 frames whose MACs came back swapped, slot 1 others.
    seen = KernelMap.create(MapSpec("t_seen", MapType.ARRAY, 4, 8, 2))
    check = assemble(f"""
        r6 = 1
        r2 = *(u32 *)(r1 +0)
        r3 = *(u32 *)(r1 +4)
        r4 = r2
        r4 += 12
        if r4 > r3 goto count
        r5 = *(u32 *)(r2 +0)
        if r5 != 0x2 goto count    ; dst 02:00:00:00:00:01 (the generator's source)
        r5 = *(u16 *)(r2 +4)
        if r5 != 0x100 goto count
        r5 = *(u16 *)(r2 +10)
        if r5 != 0x200 goto count  ; src ends :02 (the generator's destination)
        r6 = 0
    count:
        *(u32 *)(r10 -4) = r6
        r2 = r10
        r2 += -4
        r1 = map[fd:{seen.fd}] ll
        call bpf_map_lookup_elem
        if r0 == 0x0 goto out
        r1 = 1
        lock *(u64 *)(r0 +0) += r1
    out:
        r0 = 1
        exit
    """)
    try:
        with KernelProgram.load(check, name="t_check_swap") as checker:
            attach_xdp(port.a_index, checker.fd, XdpMode.NATIVE, netns=port.ns_a)
            loaded = load_object(engine, elf.load_object(SAMPLES_BUILD / "xdp2.o"))
            engine.attach(loaded.program_handle())
            sent = _send(port, MIX)
            total = sum(sent.values())
            assert [U64.unpack(seen.lookup(U32.pack(i)))[0] for i in range(2)] == [total, 0]
            assert engine.query().actions == (0, 0, 0, total, 0)
            for proto, n in sent.items():
                assert U64.unpack(loaded.maps["rxcnt"].lookup(U32.pack(proto)))[0] == n
    finally:
        engine.close()
        seen.close()


def test_tail_calls_with_a_prog_array_of_guest_handles(port, service):
    dev = _dev()
    service.add_device(dev, port.b, netns=port.ns_b, acked_features=lambda: OFFLOADED)
    engine = OffloadEngine(_client(service, dev))
    try:
        loaded = load_object(engine, elf.load_object(SAMPLES_BUILD / "corpus" / "tail_calls.o"))
        jt, hops = loaded.maps["jmp_table"], loaded.maps["hops"]
        # the loader filled the prog_array from .values with guest program handles; they read back as such
        assert jt.lookup(U32.pack(0)) == U32.pack(loaded.programs["handle_ipv4"])
        assert jt.lookup(U32.pack(2)) == U32.pack(loaded.programs["handle_other"])
        assert jt.lookup(U32.pack(1)) is None
        with pytest.raises(OffloadRefused) as e:  # a map handle is not a program
            jt.update(U32.pack(1), U32.pack(hops.handle))
        assert e.value.errno == errno.EBADF and f"handle {hops.handle} is not a program" in e.value.message
        engine.attach(loaded.programs["xdp_entry"])
        _send(port, (("ipv4/udp", 0, 40), ("ipv4/tcp", 1, 30), ("arp", 2, 20), ("ipv6/udp", 3, 10)))
        assert [U64.unpack(hops.lookup(U32.pack(i)))[0] for i in range(4)] == [70, 0, 20, 10]
    finally:
        engine.close()


def test_reset_frees_everything_and_close_after_reset_is_quiet(port, service):
    dev = _dev()
    service.add_device(dev, port.b, netns=port.ns_b, acked_features=lambda: OFFLOADED)
    engine = OffloadEngine(_client(service, dev))
    loaded = load_object(engine, elf.load_object(SAMPLES_BUILD / "corpus" / "tail_calls.o"))
    engine.attach(loaded.programs["xdp_entry"])
    pids, mids = service.kernel_ids(dev)
    assert len(pids) == 3 and mids <= map_ids()
    service.reset(dev)  # the guest reset the device
    assert query_xdp(port.b, netns=port.ns_b) is None
    assert pids & prog_ids() == set()
    assert wait_gone(mids, map_ids) == set()
    with pytest.raises(OffloadRefused) as e:
        loaded.maps["hops"].lookup(U32.pack(0))
    assert e.value.errno == errno.EBADF
    engine.close()  # the handles are gone already: EBADF/ENOENT are not errors here
    assert engine.maps == [] and engine.programs == []


def test_detach_of_an_attach_point_the_device_cleared_is_not_an_error(port, service):
    """`vxdp prog detach` must exit 0 when it freed everything, even if the device had already
    detached the program (another one replaced it, then went): nothing attached is what it wants."""
    dev = _dev()
    service.add_device(dev, port.b, netns=port.ns_b, acked_features=lambda: OFFLOADED)
    engine = OffloadEngine(_client(service, dev))
    loaded = load_object(engine, elf.load_object(SAMPLES_BUILD / "xdp_pass.o"))
    try:
        engine.attach(loaded.program_handle("xdp_pass"))
        service.prog_detach(dev)  # behind the engine's back
        engine.detach()
        assert engine.attached is None and query_xdp(port.b, netns=port.ns_b) is None
    finally:
        loaded.close()
    assert service.show()[0]["programs"] == [] and service.show()[0]["maps"] == []


def test_an_attachment_replaces_only_its_own_slots_program_and_detaches_only_its_own(port, service):
    """Two loads into one slot (two engines, one device): the second replaces the first without being
    asked because the device runs the program it replaces; the first's detach and close then leave the
    second attached. A third engine that replaces nothing is refused (EBUSY naming the program) unless
    ``replace``."""
    dev = _dev()
    service.add_device(dev, port.b, netns=port.ns_b, acked_features=lambda: OFFLOADED)
    engines = [OffloadEngine(_client(service, dev)) for _ in range(3)]
    first, second, third = (load_object(e, elf.load_object(SAMPLES_BUILD / "xdp_pass.o")) for e in engines)
    h1, h2, h3 = (lo.programs["xdp_pass"] for lo in (first, second, third))
    detach1, counters1 = engines[0].attachment(h1)
    _, counters2 = engines[1].attachment(h2, replaces=h1)
    ids = {p["handle"]: p["kernel_id"] for p in service.show()[0]["programs"]}
    assert query_xdp(port.b, netns=port.ns_b) == ids[h2]
    assert counters1() == {} and set(counters2()) >= {"pass", "drop"}  # each reads its own program only
    detach1()
    first.close()
    assert query_xdp(port.b, netns=port.ns_b) == ids[h2] and service.prog_query(dev)["attached"] == h2
    e = _refused(engines[2].attachment, h3, replaces=h1, code=errno.EBUSY, match=f"runs program {h2}")
    assert "'xdp_pass', loaded by the guest" in e.message
    engines[2].attachment(h3, replace=True)
    assert query_xdp(port.b, netns=port.ns_b) == ids[h3]
    second.close()  # replaced: closing frees it and leaves the third attached
    assert query_xdp(port.b, netns=port.ns_b) == ids[h3]
    third.close()
    assert query_xdp(port.b, netns=port.ns_b) is None


# -- refusals, each reaching the client with its message -------------------------------------------

def _calls(helper: int) -> list[Insn]:
    return [Insn(0xB7, 1, 0, 0, 0), Insn(0x85, 0, PseudoCall.HELPER, 0, int(helper)), Insn(0xB7, 0, 0, 0, 2),
            Insn(EXIT)]


def _refused(fn, *args, code: int, match: str = "", rule: str | None = None, **kw) -> OffloadRefused:
    with pytest.raises(OffloadRefused) as e:
        fn(*args, **kw)
    assert e.value.errno == code, str(e.value)
    assert match in e.value.message, e.value.message
    assert e.value.rule == rule, e.value.message
    return e.value


@pytest.fixture
def lo_service():
    """A service with tight quotas and an injected clock, its devices' ports the loopback."""
    now = [0.0]
    s = OffloadService(policy=Policy(quota=Quota(max_maps=3, max_map_memory=8192, max_progs=2, max_insns=8,
                                                 max_total_insns=12, commands_per_second=5.0,
                                                 command_burst=200)),
                       clock=lambda: now[0])
    s.now = now  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.close()


def test_policy_refusals_with_rules(lo_service):
    dev = _dev()
    lo_service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    c = _client(lo_service, dev)
    _refused(c.prog_load, _calls(Helper.redirect), name="r", code=errno.EPERM, rule="helpers.never",
             match="policy: helper bpf_redirect (23)")
    _refused(c.prog_load, _calls(Helper.fib_lookup), name="f", code=errno.EPERM, rule="helpers.never",
             match="policy: helper bpf_fib_lookup (69) is never allowed")
    _refused(c.map_create, MapType.DEVMAP, 4, 4, 1, name="d", code=errno.EPERM, rule="map_types.allow",
             match="devmap")
    _refused(c.prog_load, [Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)], prog_type=3, code=errno.EPERM, rule="prog_type")


def test_every_quota_through_the_client(lo_service):
    dev = _dev()
    lo_service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    c = _client(lo_service, dev)
    a = c.map_create(MapType.ARRAY, 4, 8, 256, name="a")  # 4096 bytes of 8192
    _refused(c.map_create, MapType.ARRAY, 4, 8, 257, name="b", code=errno.ENOSPC, rule="quota.max_map_memory",
             match="uses 4096 of 8192")
    c.map_create(MapType.ARRAY, 4, 8, 1, name="b")
    c.map_create(MapType.ARRAY, 4, 8, 1, name="c")
    _refused(c.map_create, MapType.ARRAY, 4, 8, 1, name="d", code=errno.ENOSPC, rule="quota.max_maps")
    _refused(c.prog_load, [Insn(0xB7, 0, 0, 0, 2)] * 8 + [Insn(EXIT)], name="big", code=errno.E2BIG,
             rule="quota.max_insns")
    seven = [Insn(0xB7, 0, 0, 0, 2)] * 6 + [Insn(EXIT)]
    p1, tag = c.prog_load(seven, name="p1")
    assert len(tag) == 8
    _refused(c.prog_load, seven, name="p2", code=errno.ENOSPC, rule="quota.max_total_insns", match="has 7 of 12")
    c.prog_load([Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)], name="p2")
    _refused(c.prog_load, [Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)], name="p3", code=errno.ENOSPC,
             rule="quota.max_progs")
    c.prog_free(p1)
    c.map_free(a)
    # the command rate: the bucket (5/s, burst 200) is nearly spent by now; time stands still
    for _ in range(300):
        try:
            c.caps(refresh=True)
        except OffloadRefused as e:
            assert e.errno == errno.EAGAIN and e.rule == "rate" and "more than 5 commands a second" in e.message
            break
    else:
        pytest.fail("the rate limit never refused")
    lo_service.now[0] += 1.0  # five tokens back
    assert c.caps(refresh=True).max_maps == 3


def test_handles_of_another_device_are_refused(service):
    d0, d1 = _dev(), _dev()
    service.add_device(d0, "lo", acked_features=lambda: OFFLOADED)
    service.add_device(d1, "lo", acked_features=lambda: OFFLOADED)
    c0, c1 = _client(service, d0), _client(service, d1)
    c0.map_create(MapType.ARRAY, 4, 8, 1, name="m0")
    c1.map_create(MapType.ARRAY, 4, 8, 1, name="m1")
    m1 = c1.map_create(MapType.ARRAY, 4, 8, 1, name="n1")
    _refused(c0.map_lookup, m1, bytes(4), code=errno.EBADF, match=f"handle {m1} is not a map of device {d0}")
    p1, _ = c1.prog_load([Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)], name="p")
    _refused(c0.prog_attach, p1, code=errno.EBADF, match=f"handle {p1} is not a program of device {d0}")
    _refused(c0.prog_free, p1, code=errno.EBADF)


def test_verifier_refusal_brings_the_log_back_cut_to_log_size(service):
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    c = _client(service, dev)
    e = _refused(c.prog_load, [Insn(EXIT)], name="bad", code=errno.EACCES, rule="verifier",
                 match="kernel verifier refused program 'bad'")
    assert "R0 !read_ok" in e.log and not e.log_truncated
    e = _refused(c.prog_load, [Insn(EXIT)], name="bad", log_size=10, code=errno.EACCES, rule="verifier")
    assert e.log_truncated and len(e.log.encode()) == 10 and "R0 !read_ok" in e.message
    assert service.kernel_ids(dev) == (set(), set())


def test_offload_not_negotiated_is_eopnotsupp(service):
    dev = _dev()
    service.add_device(dev, "lo")
    c = OffloadClient(wire(BpfCommandHandler(service, dev)))
    for call in (c.caps, lambda: c.map_create(MapType.ARRAY, 4, 8, 1, name="m")):
        _refused(call, code=errno.EOPNOTSUPP, match="VIRTIO_NET_F_BPF_OFFLOAD was not negotiated", rule="feature")
    assert service.kernel_ids(dev) == (set(), set())


def test_a_malformed_request_is_einval(service):
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    handler = BpfCommandHandler(service, dev)
    # a channel that loses the request's last byte: the device refuses, naming the field
    c = OffloadClient(lambda req, cap: handler.handle(dataclasses.replace(req, data=req.data[:-1]), cap))
    _refused(c.map_create, MapType.ARRAY, 4, 8, 1, name="m", code=errno.EINVAL,
             match="MAP_CREATE: request name: needs 16 bytes, 15 left")
    assert service.kernel_ids(dev) == (set(), set())


def test_a_reply_area_too_small_is_enobufs_then_the_retry_works(service):
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    calls: list[tuple[int, int]] = []
    c = OffloadClient(wire(BpfCommandHandler(service, dev), log=calls), capacity=64)
    m = c.map_create(MapType.ARRAY, 4, 256, 2, name="big")
    c.map_update(m, U32.pack(1), bytes(range(256)))
    calls.clear()
    assert c.map_lookup(m, U32.pack(1)) == bytes(range(256))
    assert calls == [(3, 64), (3, 1 + 16 + 4 + 256 + 1024)]  # ENOBUFS with the needed size, then the retry
    items = c.map_items(m, batch=2)
    assert items == [(U32.pack(0), bytes(256)), (U32.pack(1), bytes(range(256)))]
    caps = c.caps()  # CAPS does not fit in 64 bytes either
    assert caps.ncpus == possible_cpus() and caps.engine == "kernel"
    # below MIN_REPLY the device does not execute anything
    tiny = OffloadClient(wire(BpfCommandHandler(service, dev)), capacity=32)
    _refused(tiny.map_create, MapType.ARRAY, 4, 8, 1, name="x", code=Errno.ENOBUFS,
             match="writable area")
    assert len(service.show()[0]["maps"]) == 1


def test_a_transport_limit_caps_every_area_and_the_device_cuts_the_log(service):
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    calls: list[tuple[int, int]] = []
    c = OffloadClient(wire(BpfCommandHandler(service, dev), log=calls), max_capacity=200)
    e = _refused(c.prog_load, [Insn(EXIT)], name="bad", code=errno.EACCES, rule="verifier")
    assert calls == [(0x10, 200)] and e.log_truncated and e.log  # the log as far as 200 bytes held it
    m = c.map_create(MapType.ARRAY, 4, 256, 1, name="big")
    with pytest.raises(OffloadRefused) as r:  # 256-byte values need more than 200: no retry beyond the limit
        c.map_lookup(m, U32.pack(0))
    assert r.value.errno == Errno.ENOBUFS and r.value.reply.needed == 4 + 256


def test_global_data_maps_are_filled_on_create(service):
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    engine = OffloadEngine(_client(service, dev))
    try:
        obj = elf.load_object(SAMPLES_BUILD / "corpus" / "global_data.o")
        loaded = load_object(engine, obj)
        for name in (".data", ".rodata"):
            spec = obj.maps[name]
            assert loaded.maps[name].lookup(bytes(4)) == spec.data.ljust(spec.value_size, b"\0")
        shown = {m["name"]: m for m in service.show()[0]["maps"]}
        assert shown[".rodata"]["flags"] & 1 << 7  # BPF_F_RDONLY_PROG: programs cannot write it
        assert loaded.maps[".bss"].lookup(bytes(4)) == bytes(obj.maps[".bss"].value_size)
        assert list(loaded.programs) == ["xdp_global"]
    finally:
        engine.close()
    assert service.kernel_ids(dev) == (set(), set())


def test_rodata_is_frozen_before_the_program_so_the_device_verifier_sees_constants(service):
    """rodata_config verifies only with .rodata frozen: offloaded, the engine writes the image,
    freezes (MAP_FREEZE), then loads; the guest can no longer write the map (EPERM)."""
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    calls: list[tuple[int, int]] = []
    engine = OffloadEngine(OffloadClient(wire(BpfCommandHandler(service, dev), log=calls)))
    try:
        obj = elf.load_object(SAMPLES_BUILD / "corpus" / "rodata_config.o")
        loaded = load_object(engine, obj)
        order = [cmd for cmd, _ in calls if cmd != 0x00]  # CAPS aside
        assert order.index(0x09) < order.index(0x10)  # MAP_FREEZE before PROG_LOAD
        rodata = loaded.maps[".rodata"]
        shown = {m["name"]: m for m in service.show()[0]["maps"]}
        assert shown[".rodata"]["frozen"] and not shown["seen"]["frozen"]
        assert rodata.lookup(bytes(4)) == obj.maps[".rodata"].data
        _refused(rodata.update, bytes(4), bytes(12), code=errno.EPERM)
        _refused(rodata.freeze, code=errno.EPERM, match="already frozen")
        loaded.maps["seen"].update(bytes(4), U64.pack(5))  # the other map stays writable
    finally:
        engine.close()
    assert service.kernel_ids(dev) == (set(), set())


def test_rodata_left_unfrozen_gets_the_program_refused_offloaded(service):
    """What offloading did before MAP_FREEZE: the same config in a writable map; the device's
    verifier walks the dead branch and refuses its unchecked packet read."""
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    engine = OffloadEngine(_client(service, dev))
    try:
        obj = elf.load_object(SAMPLES_BUILD / "corpus" / "rodata_config.o")
        obj.maps[".rodata"] = dataclasses.replace(obj.maps[".rodata"], origin=MapOrigin.DATA, flags=0)
        with pytest.raises(OffloadRefused) as e:
            load_object(engine, obj)
        assert e.value.errno == errno.EACCES and e.value.rule == "verifier"
        assert "invalid access to packet" in e.value.log
    finally:
        engine.close()


def test_obj_list_walks_the_device_table_in_areas_the_transport_allows(service):
    """OBJ_LIST (1.2) through the client: every object once, in handle order, however small the ctrl
    buffer (here two records a reply): the client offers all the transport allows, the device fills it."""
    dev = _dev()
    service.add_device(dev, "lo", acked_features=lambda: OFFLOADED)
    calls: list[tuple[int, int]] = []
    c = OffloadClient(wire(BpfCommandHandler(service, dev), log=calls), capacity=64,
                      max_capacity=1 + 16 + 16 + 2 * 56)
    maps = [c.map_create(MapType.ARRAY, 4, 8, 1, name=f"m{i}") for i in range(5)]
    prog, tag = c.prog_load([Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)], name="p")
    calls.clear()
    objs = c.obj_list()
    assert [(o.handle, o.is_map) for o in objs] == [(h, True) for h in maps] + [(prog, False)]
    assert objs[-1].tag == tag and objs[-1].insns == 2 and [o.name for o in objs[:5]] == [f"m{i}" for i in range(5)]
    assert calls == [(0x30, 145)] * 3  # 2 + 2 + 2 records
