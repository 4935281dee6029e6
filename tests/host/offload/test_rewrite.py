"""Checking and rewriting guest programs: the policy's static checks, map handles, action counters.

The counter epilogue is checked against the kernel: a program with the epilogue must load, act
exactly as before, and count each verdict BPF_PROG_TEST_RUN returned.
"""

from __future__ import annotations

import errno
import struct

import pytest
from testpaths import SAMPLES_BUILD

from vxdp.bpf import elf, link
from vxdp.bpf.helpers import Helper
from vxdp.bpf.isa import EXIT, Insn, PseudoCall, PseudoSrc, lddw
from vxdp.bpf.kernel.btf import KernelBtf
from vxdp.bpf.kernel.maps import KernelMap
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.mapspec import MapSpec, MapType, possible_cpus
from vxdp.bpf.obj import FuncInfo, LineInfo
from vxdp.host.offload.errors import OffloadError
from vxdp.host.offload.policy import Policy, Quota
from vxdp.host.offload.rewrite import (
    ACTION_SLOTS,
    add_action_counters,
    check_ext_info,
    check_program,
    counter_epilogue,
    function_starts,
    rewrite_map_handles,
)
from vxdp.packets import frame

MOV_K = 0xB7


def call(helper: int) -> Insn:
    return Insn(0x85, 0, PseudoCall.HELPER, 0, int(helper))


def ret(value: int) -> list[Insn]:
    return [Insn(MOV_K, 0, 0, 0, value), Insn(EXIT)]


# -- static checks ------------------------------------------------------------------------------

def test_check_returns_map_handles_and_helpers():
    insns = [*lddw(1, 7, PseudoSrc.MAP_FD), *lddw(2, 9, PseudoSrc.MAP_VALUE), *lddw(3, 1234),
             call(Helper.map_lookup_elem), *ret(1)]
    insns[3] = insns[3].replace(imm=16)  # MAP_VALUE offset in the second slot
    refs = check_program(insns, Policy())
    assert refs.map_handles == {7, 9}
    assert refs.helpers == {int(Helper.map_lookup_elem)}


@pytest.mark.parametrize("helper, rule", [
    (Helper.fib_lookup, "helpers.never"),
    (Helper.redirect, "helpers.never"),
    (Helper.redirect_map, "helpers.never"),
    (Helper.trace_printk, "helpers.never"),
    (Helper.perf_event_output, "helpers.never"),
    (Helper.skb_load_bytes, "helpers.allow"),
])
def test_helper_refusals_name_the_helper_and_rule(helper, rule):
    insns = [Insn(MOV_K, 1, 0, 0, 0), call(helper), *ret(2)]
    with pytest.raises(OffloadError) as e:
        check_program(insns, Policy(), name="p")
    assert e.value.rule == rule and e.value.errno == errno.EPERM
    assert f"bpf_{helper.name} ({int(helper)})" in str(e.value)
    assert "instruction 1 of program 'p'" in str(e.value)


def test_ktime_follows_the_switch():
    insns = [call(Helper.ktime_get_ns), *ret(2)]
    check_program(insns, Policy())
    with pytest.raises(OffloadError) as e:
        check_program(insns, Policy(allow_ktime=False))
    assert e.value.rule == "helpers.allow_ktime"


def test_kfunc_and_foreign_lddw_are_refused():
    with pytest.raises(OffloadError) as e:
        check_program([Insn(0x85, 0, PseudoCall.KFUNC, 0, 1234), *ret(2)], Policy())
    assert e.value.rule == "helpers.kfunc" and "BTF id 1234" in str(e.value)
    for src in (PseudoSrc.BTF_ID, PseudoSrc.FUNC, PseudoSrc.MAP_IDX, PseudoSrc.MAP_IDX_VALUE):
        with pytest.raises(OffloadError) as e:
            check_program([*lddw(1, 1, src), *ret(2)], Policy())
        assert e.value.rule == "insns.lddw" and src.name in str(e.value)


def test_instruction_limit_and_malformed_programs():
    p = Policy(quota=Quota(max_insns=4))
    check_program([Insn(MOV_K), Insn(MOV_K), *ret(2)], p)
    with pytest.raises(OffloadError) as e:
        check_program([Insn(MOV_K)] * 3 + ret(2), p)
    assert e.value.rule == "quota.max_insns" and "5 instructions" in str(e.value)
    with pytest.raises(OffloadError, match="no second slot"):
        check_program([lddw(1, 5)[0]], Policy())
    with pytest.raises(OffloadError, match="no instructions"):
        check_program([], Policy())
    with pytest.raises(OffloadError, match="jumps out"):
        check_program([Insn(0x85, 0, PseudoCall.CALL, 0, 10), *ret(2)], Policy())


def test_rewrite_map_handles_keeps_offsets_and_constants():
    a, b = lddw(1, 3, PseudoSrc.MAP_VALUE)
    insns = [a, b.replace(imm=24), *lddw(2, 4, PseudoSrc.MAP_FD), *lddw(3, 4), *ret(1)]
    out = rewrite_map_handles(insns, {3: 100, 4: 200}.__getitem__)
    assert out[0].imm == 100 and out[1].imm == 24
    assert out[2].imm == 200 and out[3].imm == 0
    assert out[4].imm == 4  # a plain constant 4 is not a handle
    assert out[6:] == insns[6:]


# -- the counting epilogue: structure -----------------------------------------------------------

def _with_subprog() -> list[Insn]:
    """main: if r1 (ctx) ... r0 = sub(); exit, with a second exit; sub: two exits of its own."""
    return [
        Insn(0x85, 0, PseudoCall.CALL, 0, 4),  # 0: call sub (slot 5)
        Insn(0x55, 0, 0, 1, 2),  # 1: if r0 != 2 goto 3
        Insn(EXIT),  # 2: exit (PASS)
        Insn(MOV_K, 0, 0, 0, 1),  # 3: r0 = DROP
        Insn(EXIT),  # 4: exit
        Insn(0x61, 2, 1, 0, 0),  # 5 sub: r2 = ctx->data
        Insn(0x61, 3, 1, 4, 0),  # 6: r3 = ctx->data_end
        Insn(MOV_K, 0, 0, 0, 2),  # 7: r0 = PASS
        Insn(0xBF, 4, 2),  # 8: r4 = r2
        Insn(0x07, 4, 0, 0, 1),  # 9: r4 += 1
        Insn(0x2D, 4, 3, 2, 0),  # 10: if r4 > r3 goto 13
        Insn(0x71, 0, 2, 0, 0),  # 11: r0 = *(u8 *)(r2 + 0): the first byte is the verdict
        Insn(EXIT),  # 12
        Insn(EXIT),  # 13
    ]


def test_epilogue_goes_at_the_end_of_main_and_only_main_exits_change():
    insns = _with_subprog()
    assert function_starts(insns) == [0, 5]
    fi = [FuncInfo(0, 10), FuncInfo(5, 11)]
    li = [LineInfo(0, 0, 0, 1, 0), LineInfo(4, 0, 0, 2, 0), LineInfo(5, 0, 0, 3, 0), LineInfo(12, 0, 0, 4, 0)]
    c = add_action_counters(insns, 42, func_info=fi, line_info=li)
    n = len(counter_epilogue(42))
    assert c.epilogue_start == 5 and c.exits_rewritten == 2 and len(c.insns) == len(insns) + n
    assert c.insns[2] == Insn(0x05, 0, 0, 5 - 3, 0) and c.insns[4] == Insn(0x05, 0, 0, 0, 0)
    assert c.insns[0].imm == 4 + n  # the call follows its callee
    assert c.insns[5:5 + n] == counter_epilogue(42)
    assert c.insns[5 + n:] == insns[5:]  # the subprogram, exits and all, unchanged
    assert [f.insn for f in c.func_info] == [0, 5 + n]
    assert [x.insn for x in c.line_info] == [0, 4, 5 + n, 12 + n]


def test_far_exits_use_a_32_bit_jump():
    insns = [Insn(EXIT)] + [Insn(MOV_K)] * 40000 + ret(2)
    c = add_action_counters(insns, 1)
    assert c.insns[0] == Insn(0x06, 0, 0, 0, 40002)  # gotol
    assert c.insns[40002] == Insn(0x05, 0, 0, 0, 0)


# -- the counting epilogue against the kernel ---------------------------------------------------

def _counts(m: KernelMap) -> dict[str, int]:
    out = {}
    for slot, label in enumerate(ACTION_SLOTS):
        raw = m.lookup(struct.pack("<I", slot))
        out[label] = sum(struct.unpack(f"<{possible_cpus()}Q", raw))
    return out


def _counter_map() -> KernelMap:
    return KernelMap.create(MapSpec("t_act", MapType.PERCPU_ARRAY, 4, 8, len(ACTION_SLOTS)))


@pytest.mark.privileged
def test_counts_equal_what_test_run_returned():
    with _counter_map() as m:
        c = add_action_counters(_with_subprog(), m.fd)
        with KernelProgram.load(c.insns, name="t_counted") as p:
            expected = dict.fromkeys(ACTION_SLOTS, 0)
            packets = [bytes([0]) + bytes(63), bytes([2]) + bytes(63), bytes([3]) + bytes(63),
                       bytes([4]) + bytes(63), bytes([9]) + bytes(63), bytes([1]) + bytes(63)]
            for i, pkt in enumerate(packets):
                r = p.test_run(pkt, repeat=i + 3)
                # sub returns the first byte; main turns anything but PASS into DROP
                assert r.retval == (2 if pkt[0] == 2 else 1)
                expected[ACTION_SLOTS[min(r.retval, 5)]] += i + 3
            assert _counts(m) == expected


@pytest.mark.privileged
@pytest.mark.parametrize("value, label", [(0, "aborted"), (3, "tx"), (4, "redirect"), (7, "other"),
                                          (0x100000002, "pass")])
def test_each_verdict_has_its_slot(value, label):
    with _counter_map() as m:
        insns = [*lddw(0, value), Insn(EXIT)]
        c = add_action_counters(insns, m.fd)
        with KernelProgram.load(c.insns, name="t_verdict") as p:
            p.test_run(bytes(64), repeat=5)
        counts = _counts(m)
        assert counts[label] == 5 and sum(counts.values()) == 5


@pytest.mark.privileged
def test_compiled_program_with_subprograms_and_btf_still_loads_and_counts():
    obj = elf.load_object(SAMPLES_BUILD / "corpus" / "bpf2bpf.o")
    linked = link.link(obj, "xdp_calls")
    maps = {name: KernelMap.create(spec) for name, spec in obj.maps.items()}
    try:
        with _counter_map() as m, KernelBtf.load(obj.btf_raw) as btf:
            plain = link.resolve_maps(linked, {n: x.fd for n, x in maps.items()})
            assert len(function_starts(plain, linked.func_info)) > 2  # really has subprograms
            c = add_action_counters(plain, m.fd, func_info=linked.func_info, line_info=linked.line_info)
            frames = [frame(k) for k in ("ipv4/tcp", "ipv4/udp", "ipv6/udp", "arp", "ipv4/icmp")] + [bytes(20)]
            expected = dict.fromkeys(ACTION_SLOTS, 0)
            with KernelProgram.load(plain, name="t_plain") as ref, \
                    KernelProgram.load(c.insns, name="t_counted", btf_fd=btf.fd, func_info=c.func_info,
                                       line_info=c.line_info) as p:
                assert p.info().nr_func_info == len(linked.func_info)
                for f in frames:
                    want, got = ref.test_run(f), p.test_run(f)
                    assert (got.retval, got.data_out) == (want.retval, want.data_out)
                    expected[ACTION_SLOTS[min(got.retval, 5)]] += 1
            assert _counts(m) == expected
            assert len({k for k, v in expected.items() if v}) >= 2  # the frames gave several verdicts
    finally:
        for x in maps.values():
            x.close()


@pytest.mark.parametrize("func_info, line_info, field", [
    ([FuncInfo(0, 1), FuncInfo(0x80000001, 2)], [], "func_info"),  # found by the damaged-import fuzz: a crash
    ([FuncInfo(1, 1)], [], "func_info"),
    ([FuncInfo(0, 1), FuncInfo(0, 2)], [], "func_info"),
    ([FuncInfo(0, 1)], [LineInfo(5, 0, 0, 1, 1)], "line_info"),
])
def test_ext_info_outside_the_program_is_refused_by_field(func_info, line_info, field):
    insns = [Insn(0xB7, 0, 0, 0, 2), Insn(EXIT, 0, 0, 0, 0)]
    with pytest.raises(OffloadError) as e:
        check_ext_info(insns, func_info, line_info, name="p")
    assert e.value.errno == errno.EINVAL and e.value.rule == field
    check_ext_info(insns, [FuncInfo(0, 1)], [LineInfo(1, 0, 0, 1, 1)], name="p")  # a good one passes
