"""Linking: callees appended depth first, call offsets, ext info rebased, map references resolved."""

from __future__ import annotations

import pytest
from bpf_cc import FEATURES, compile_bpf

from vxdp.bpf.elf import load_object
from vxdp.bpf.isa import PseudoSrc, lddw_value
from vxdp.bpf.link import LinkError, link, resolve_maps
from vxdp.bpf.obj import RelocKind

CALL_GRAPH = r"""
int sink;
static __attribute__((noinline)) int leaf(int x) { sink += x; return x + 1; }
static __attribute__((noinline)) int first(int x) { return leaf(x) * 2; }
static __attribute__((noinline)) int second(int x) { return leaf(x) + 3; }
static __attribute__((noinline)) int unused(int x) { return x - 7; }
SEC("xdp") int entry(struct xdp_md *ctx) { return (first(ctx->rx_queue_index) + second(1)) & 3; }
SEC("xdp") int other(struct xdp_md *ctx) { return unused(ctx->rx_queue_index) & 3; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return load_object(compile_bpf(tmp_path_factory.mktemp("link"), CALL_GRAPH, "graph"))


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return load_object(compile_bpf(tmp_path_factory.mktemp("link"), FEATURES, "features"))


def _layout(obj, linked):
    """Function name at each start slot, recovered from func_info."""
    return [(fi.insn, obj.btf.type(fi.type_id).name) for fi in linked.func_info]


def test_callees_appended_depth_first_each_once(graph):
    linked = link(graph, "entry")
    layout = _layout(graph, linked)
    # libbpf's order: first is placed, then walked at once (placing leaf), then second
    assert [name for _, name in layout] == ["entry", "first", "leaf", "second"]
    sizes = {name: len(graph.functions[name].insns) for name in ("entry", "first", "leaf", "second")}
    assert len(linked.insns) == sum(sizes.values())
    start = 0
    for at, name in layout:
        assert at == start
        _unrelocated_equal(graph.functions[name].insns, linked.insns[at:at + sizes[name]])
        start += sizes[name]
    assert [name for _, name in _layout(graph, link(graph, "other"))] == ["other", "unused"]


def test_call_offsets_point_at_callee_starts(graph, features):
    for obj in (graph, features):
        for name in obj.programs:
            linked = link(obj, name)
            starts = dict(_layout(obj, linked))
            for i, insn in enumerate(linked.insns):
                is_func_addr = insn.is_lddw and insn.src == PseudoSrc.FUNC
                if insn.is_subprog_call or is_func_addr:
                    target = i + 1 + insn.imm
                    assert target in starts, (name, i)
                    callee = obj.functions[starts[target]]
                    assert linked.insns[target:target + len(callee.insns)] == _unrelocated_equal(
                        callee.insns, linked.insns[target:target + len(callee.insns)])


def _unrelocated_equal(orig, placed):
    """``placed`` if it equals ``orig`` except in call/func-address immediates (which linking rewrites)."""
    assert len(orig) == len(placed)
    for a, b in zip(orig, placed):
        if a.is_subprog_call or (a.is_lddw and a.src == PseudoSrc.FUNC):
            assert a.replace(imm=0) == b.replace(imm=0)
        else:
            assert a == b
    return placed


def test_ext_info_and_map_refs_rebased(features):
    linked = link(features, "prog_one")
    starts = dict(_layout(features, linked))
    assert linked.func_info[0].insn == 0 and linked.line_info[0].insn == 0
    for at, name in starts.items():
        fn = features.functions[name]
        mine = [li for li in linked.line_info if at <= li.insn < at + len(fn.insns)]
        assert [(li.insn - at, li.line) for li in mine] == [(li.insn, li.line) for li in fn.line_info]
    assert [r.insn for r in linked.map_refs] == sorted(r.insn for r in linked.map_refs)
    assert all(linked.insns[r.insn].is_lddw for r in linked.map_refs)
    targets = {(r.kind, r.target, r.offset) for r in linked.map_refs}
    # sub_static (reached through sub_global) reads scount at .data+4
    assert (RelocKind.MAP_VALUE, ".data", 4) in targets and (RelocKind.MAP, "counts", 0) in targets
    assert linked.license == "Dual BSD/GPL" and linked.section == "xdp"


def test_resolve_maps_sets_pseudo_sources(features):
    linked = link(features, "prog_one")
    handles = {name: 100 + i for i, name in enumerate(features.maps)}
    insns = resolve_maps(linked, handles)
    assert len(insns) == len(linked.insns)
    for r in linked.map_refs:
        first, second = insns[r.insn], insns[r.insn + 1]
        assert first.imm == handles[r.target]
        if r.kind == RelocKind.MAP:
            assert first.src == PseudoSrc.MAP_FD and second.imm == 0
        else:
            assert first.src == PseudoSrc.MAP_VALUE and second.imm == r.offset
            assert lddw_value(first, second) == handles[r.target] | (r.offset << 32)
    untouched = set(range(len(insns))) - {r.insn for r in linked.map_refs} - {r.insn + 1 for r in linked.map_refs}
    assert all(insns[i] == linked.insns[i] for i in untouched)


def test_link_errors(features):
    with pytest.raises(LinkError, match="no program named 'nope'") as e:
        link(features, "nope")
    assert isinstance(e.value, KeyError) and str(e.value).endswith("have prog_one, prog_two, prog_three")
    linked = link(features, "prog_one")
    with pytest.raises(LinkError) as e:
        resolve_maps(linked, {"counts": 3})
    assert "no handle for map" in str(e.value) and not str(e.value).startswith("'")


@pytest.mark.privileged
def test_linked_programs_load_and_run_in_the_kernel(features):
    """The host kernel verifies what we linked, with our BTF, func_info and line_info."""
    from vxdp.bpf.kernel.btf import KernelBtf
    from vxdp.bpf.kernel.maps import KernelMap
    from vxdp.bpf.kernel.prog import KernelProgram

    btf = KernelBtf.load(features.btf_raw)
    maps = {}
    progs = []
    try:
        for spec in features.maps.values():
            maps[spec.name] = KernelMap.create(spec, btf_fd=btf.fd if spec.btf_value_type_id else 0,
                                               btf_key_type_id=spec.btf_key_type_id,
                                               btf_value_type_id=spec.btf_value_type_id)
        handles = {name: m.fd for name, m in maps.items()}
        for name in features.programs:
            linked = link(features, name)
            progs.append(KernelProgram.load(resolve_maps(linked, handles), name=name, license=linked.license,
                                            btf_fd=btf.fd, func_info=linked.func_info,
                                            line_info=linked.line_info))
        three = progs[2]
        result = three.test_run(bytes(64))
        assert result.retval == 2  # sub_mid(2) = (2 ^ 9) + 1 != 0 -> XDP_PASS
        bss = maps[".bss"].lookup(bytes(4))
        assert int.from_bytes(bss[4:8], "little") == 9  # zeroed_static, written at .bss+4
        two = progs[1]
        assert two.test_run(bytes(64)).retval == (2 + 3) & 3  # no pair: sub_static(2) with scount 3
        assert int.from_bytes(maps[".bss"].lookup(bytes(4))[0:4], "little") == 0 + 1 + 2 + 3  # bpf_loop callback
    finally:
        for p in progs:
            p.close()
        for m in maps.values():
            m.close()
        btf.close()
