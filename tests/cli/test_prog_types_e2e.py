"""Only XDP programs load: a program whose section names another type (``SEC("tc")``) is refused by
name, offloaded (``--guest``), on the operator's path (``--device``), natively in the guest and by
``vxdp prog run`` (issue 8, item 8). Before, it loaded as XDP and returned XDP_ABORTED for every frame.

The tc program is compiled here (`bpf.bpf_cc`): samples/ holds XDP programs only, since the
differential test runs every one of them.
"""

from __future__ import annotations

import pytest
from offload_topology import DEVICE, GUEST, OFFLOAD_ENGINES, offload_topology
from test_offload_e2e import XDP_PASS, device_offload, started

from vxdp.engine import ENGINES

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

TC = """
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 1); } seen SEC(".maps");
SEC("tc") int tc_count(struct __sk_buff *skb) { __u32 k = 0; __u64 *v = bpf_map_lookup_elem(&seen, &k);
  if (v) __sync_fetch_and_add(v, 1); return 0; }
char _l[] SEC("license") = "GPL";
"""
KPROBE = 'SEC("kprobe/do_sys_openat2") int probe(void *ctx) { return 0; }\nchar _l[] SEC("license") = "GPL";\n'


@pytest.fixture
def tc_obj(tmp_path):
    from bpf.bpf_cc import compile_bpf

    return str(compile_bpf(tmp_path, TC, "tc_count"))


@pytest.fixture(params=OFFLOAD_ENGINES)
def topo(request, tmp_path, samples_built):
    yield from offload_topology(tmp_path, prefix="vxt", engine=request.param)


def first_line_of_refusal(r) -> str:
    assert r.code == 1 and r.out == "", (r.code, r.out, r.err)
    first = r.err.splitlines()[0]
    assert first.startswith("vxdp: ") and len(r.err.splitlines()) == 1, r.err
    return first


def test_a_tc_program_is_refused_offloaded_by_the_guest_and_the_operator_and_natively(topo, tc_obj):
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        for target in (("--guest", GUEST), ("--device", DEVICE)):
            first = first_line_of_refusal(topo.vxdp("prog", "load", tc_obj, "--offload", *target))
            assert "EPERM" in first and "(rule prog_type)" in first, first
            assert "program type SCHED_CLS (3) is not allowed" in first and 'section "tc"' in first, first
            assert "tc_count" in first, first
            dev = device_offload(topo)
            assert dev["programs"] == [] and dev["maps"] == [], dev  # its map was freed with the refusal
            assert not topo.xdp_on_port()

        first = first_line_of_refusal(topo.vxdp("prog", "load", tc_obj, "--native", "--guest", GUEST))
        assert 'section "tc"' in first and "SCHED_CLS" in first and "XDP programs only" in first, first
        assert topo.ok("prog", "show", "--guest", GUEST)["programs"] == []

        # and an XDP program still loads after the refusals
        topo.ok("prog", "load", XDP_PASS, "--offload", "--guest", GUEST)
        assert topo.xdp_on_port()


@pytest.mark.parametrize("engine", ENGINES)
def test_prog_run_refuses_a_non_xdp_program_naming_its_section(topo, tmp_path, tc_obj, engine):
    from bpf.bpf_cc import compile_bpf

    frame = "ff" * 6 + "02" * 6 + "0800" + "00" * 46
    first = first_line_of_refusal(topo.vxdp("prog", "run", tc_obj, "--engine", engine, "--packet", frame))
    assert 'section "tc"' in first and "SCHED_CLS" in first and f"the {engine} engine runs XDP programs only" in first
    kprobe = str(compile_bpf(tmp_path, KPROBE, "kprobe"))
    first = first_line_of_refusal(topo.vxdp("prog", "run", kprobe, "--engine", engine, "--packet", frame))
    assert 'section "kprobe/do_sys_openat2"' in first and "KPROBE" in first, first
