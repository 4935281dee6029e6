"""OffloadService on the real kernel: maps, programs through the verifier, native attach to a veth
port in a netns, live frames, tail calls between offloaded programs, refusals, and cleanup.

Each test builds its own namespaces and veth pair (198.18.0.0/15) through `NetLab`, and the
service is closed in ``finally``, so nothing outlives a test.
"""

from __future__ import annotations

import errno
import itertools
import os
import struct
import subprocess
import time
from collections import Counter

import pytest

from vxdp.bpf import elf, link
from vxdp.bpf.helpers import Helper
from vxdp.bpf.isa import EXIT, Insn, PseudoCall, PseudoSrc, XdpAction, lddw
from vxdp.bpf.kernel import (KernelProgram, map_ids, prog_get_fd_by_id, prog_ids, query_xdp, send_live_frames_in,
                             XdpMode)
from vxdp.bpf.mapspec import MapType, possible_cpus
from vxdp.host.offload import OffloadError, OffloadService, Policy, Quota
from vxdp.packets import frame
from vxdp.testing.netns import NetLab
from testpaths import SAMPLES_BUILD

pytestmark = pytest.mark.privileged

_seq = itertools.count()
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


@pytest.fixture
def port():
    """A veth pair: ``a`` in a traffic netns (IPv6 off, so the kernel sends nothing of its own),
    ``b`` (the device's host port) in a port netns."""
    with NetLab("vxo") as lab:
        ns_a, ns_b = lab.netns(), lab.netns()
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        pair = lab.veth(ns_a, ns_b, "vxa", "vxb", addr_a="198.18.0.1/30", addr_b="198.18.0.2/30")
        yield pair


def _dev() -> str:
    return f"t{os.getpid() % 1000}{next(_seq)}"


@pytest.fixture
def service():
    s = OffloadService()
    try:
        yield s
    finally:
        s.close()


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
    out = []
    for pid in prog_ids():
        try:
            fd = prog_get_fd_by_id(pid)
        except OSError:
            continue
        with KernelProgram.from_fd(fd) as p:
            if p.name.startswith(prefix):
                out.append(p.name)
    return out


def _wait_gone(ids: set[int], live) -> set[int]:
    """Maps a program used are released after an RCU grace period: poll, bounded (10 s)."""
    for _ in range(1000):
        left = ids & live()
        if not left:
            return left
        time.sleep(0.01)
    return ids & live()


# -- the xdp1 offload, end to end on a veth port --------------------------------------------------

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
        "value_size": 8, "max_entries": 256, "flags": 0, "memory": 256 * 16, "kernel_id": 0}
    service.prog_detach(dev)
    assert query_xdp(port.b, netns=port.ns_b) is None


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
    assert _wait_gone(mids, map_ids) == set()
    assert _names_alive(dev + "_") == []
    assert service.show()[0]["programs"] == [] and service.caps(dev)["usage"]["maps"] == 0
    # the device still works after a reset, and its handles keep counting up
    h = service.map_create(dev, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1, name="again")
    assert h > 5
    _, mids2 = service.kernel_ids(dev)
    service.remove_device(dev)
    assert _wait_gone(mids2, map_ids) == set()
    assert dev not in service.devices


# -- tail calls across offloaded programs -------------------------------------------------------

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
