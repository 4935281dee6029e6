"""Helpers against the kernel: csum_diff on random data, the xdp_adjust_* limits, tail calls, calls."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from interp_asm import alu, call, call_local, exit_, jmp, ld64, ldx, mov, packet_guard, prog, stx
from interp_asm import st as st_imm
from interp_oracle import run_both

from vxdp.bpf.helpers import Helper
from vxdp.bpf.isa import AluOp, JmpOp, PseudoSrc
from vxdp.bpf.kernel.maps import KernelMap
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.mapspec import MapSpec, MapType
from vxdp.engine.interp.helpers import csum_diff


def _csum_program(from_size: int, to_size: int, seed: int) -> list:
    """csum_diff(packet[0:from_size], packet[64:64+to_size], seed), result stored at packet[128]."""
    return prog(
        mov(9, 1), packet_guard(136, 1), mov(6, 2),
        mov(1, 2), mov(2, imm=from_size), mov(3, 6), alu(AluOp.ADD, 3, imm=64), mov(4, imm=to_size),
        ld64(5, seed), call(Helper.csum_diff), mov(7, 0),
        mov(1, 9), packet_guard(136, 1), stx(8, 2, 7, 128), mov(0, imm=2), exit_(),
    )


@pytest.mark.privileged
@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 16), st.integers(0, 16), st.one_of(st.sampled_from([0, 0xFFFFFFFF, 0xFFFF, 1 << 63]),
                                                          st.integers(0, 2**64 - 1)),
       st.one_of(st.binary(min_size=136, max_size=136), st.just(bytes(136)), st.just(b"\xff" * 136)))
def test_csum_diff_matches_kernel(from_words, to_words, seed, packet):
    both = run_both(_csum_program(4 * from_words, 4 * to_words, seed), packet)
    assert both.interp.fault is None
    assert both.interp.packet == both.kernel_packet
    got = struct.unpack_from("<Q", both.interp.packet, 128)[0]
    assert got == csum_diff(packet[:4 * from_words], packet[64:64 + 4 * to_words], seed)


def test_csum_diff_by_hand():
    # the kernel selftest's push case: 0xdeadbeefdeadbeef, seed 0 -> 0x3b3b
    assert csum_diff(b"", (0xDEADBEEFDEADBEEF).to_bytes(8, "little"), 0) == 0x3B3B
    assert csum_diff(b"", b"", 0x12345678) == csum_diff(b"", b"", 0x12345678)  # seed only, folded
    assert csum_diff(b"\x01\x00\x00\x00", b"\x01\x00\x00\x00", 0) in (0, 0xFFFF)


def _adjust_program(helper: Helper, delta: int) -> list:
    """Call the adjust helper, then store its return value at the (new) data[0:8]; XDP_PASS."""
    return prog(mov(6, 1), mov(2, imm=delta), call(helper), mov(7, 0), mov(1, 6),
                packet_guard(8, 2), stx(8, 2, 7, 0), mov(0, imm=2), exit_())


ADJUSTS = ([(Helper.xdp_adjust_head, d) for d in (-300, -217, -216, -215, -4, 0, 49, 50, 51)]
           + [(Helper.xdp_adjust_tail, d) for d in (-51, -50, 0, 100, 3456, 3457, 4000)]
           + [(Helper.xdp_adjust_meta, d) for d in (4, -2, -4, -32, -36, -216, -220, -252)])


@pytest.mark.privileged
@pytest.mark.parametrize("helper,delta", ADJUSTS)
def test_adjust_limits_match_kernel(helper, delta):
    both = run_both(_adjust_program(helper, delta), bytes(range(64)))
    assert both.interp.fault is None
    assert both.interp.packet == both.kernel_packet
    assert both.interp.action == both.kernel_action


@pytest.mark.privileged
def test_adjust_head_accumulates_over_repeats_like_kernel():
    """The kernel's repeated test runs share one buffer: each run moves the head again."""
    both = run_both(_adjust_program(Helper.xdp_adjust_head, -20), bytes(range(64)), repeat=5)
    assert both.interp.packet == both.kernel_packet
    assert len(both.interp.packet) == 64 + 100


def test_adjust_head_keeps_metadata(interp):
    """Metadata moves with the head (the kernel memmoves it)."""
    insns = prog(mov(6, 1), mov(2, imm=-8), call(Helper.xdp_adjust_meta),
                 ldx(4, 2, 6, 8), ldx(4, 3, 6, 0), mov(4, 2), alu(AluOp.ADD, 4, imm=8),
                 jmp(JmpOp.JLE, 4, 2, src=3), mov(0, imm=1), exit_(),
                 st_imm(8, 2, 0, 0x1122334455667788 & 0x7FFFFFFF),
                 mov(1, 6), mov(2, imm=-10), call(Helper.xdp_adjust_head), mov(0, imm=2), exit_())
    res = interp.run(interp.load_program("meta", insns), bytes(range(64)))
    assert res.fault is None
    assert res.packet[:8] == (0x55667788).to_bytes(8, "little")
    assert len(res.packet) == 8 + 10 + 64 and res.packet[18:] == bytes(range(64))


def _counting_tail_call(map_ref: int, counter_ref: int) -> list:
    """Increment counter[0], then tail-call prog_array[0] (itself); when that fails return XDP_PASS."""
    return prog(
        mov(6, 1),
        st_imm(4, 10, -4, 0), ld64(1, counter_ref, PseudoSrc.MAP_FD), mov(2, 10), alu(AluOp.ADD, 2, imm=-4),
        call(Helper.map_lookup_elem), jmp(JmpOp.JNE, 0, 2, imm=0), mov(0, imm=1), exit_(),
        mov(1, imm=1), atomic_add(0, 1),
        mov(1, 6), ld64(2, map_ref, PseudoSrc.MAP_FD), mov(3, imm=0), call(Helper.tail_call),
        mov(0, imm=2), exit_(),
    )


def atomic_add(dst: int, src: int):
    from interp_asm import atomic
    return atomic(8, dst, src, 0, 0)


@pytest.mark.privileged
def test_tail_call_limit_matches_kernel(interp):
    counter = MapSpec("counter", MapType.ARRAY, 4, 8, 1)
    pa = MapSpec("jmp", MapType.PROG_ARRAY, 4, 4, 4)
    with (KernelMap.create(counter) as kc, KernelMap.create(pa) as kp,
          KernelProgram.load(_counting_tail_call(kp.fd, kc.fd), name="tc") as prog_k):
        kp.update(b"\0" * 4, prog_k.fd.to_bytes(4, "little"))
        assert prog_k.test_run(bytes(64)).retval == 2
        kernel_count = kc.lookup(b"\0" * 4)
        kp.delete(b"\0" * 4)
    ic, ip = interp.create_map(counter), interp.create_map(pa)
    h = interp.load_program("tc", _counting_tail_call(ip.handle, ic.handle))
    ip.update(b"\0" * 4, h.to_bytes(4, "little"))
    res = interp.run(h, bytes(64))
    assert res.fault is None and res.action == 2
    assert ic.lookup(b"\0" * 4) == kernel_count == (34).to_bytes(8, "little")


def test_tail_call_empty_slot_and_out_of_range_fall_through(interp):
    pa = interp.create_map(MapSpec("jmp", MapType.PROG_ARRAY, 4, 4, 2))
    target = interp.load_program("t", prog(mov(0, imm=3), exit_()))
    for index, expect in ((1, 2), (7, 2), (0, 3)):
        insns = prog(ld64(2, pa.handle, PseudoSrc.MAP_FD), mov(3, imm=index), call(Helper.tail_call),
                     mov(0, imm=2), exit_())
        if index == 0:
            pa.update(b"\0" * 4, target.to_bytes(4, "little"))
        assert interp.run(interp.load_program("tc", insns), bytes(64)).action == expect
    assert pa.lookup(b"\0" * 4) == target.to_bytes(4, "little")  # prog id == handle


@pytest.mark.privileged
def test_bpf_to_bpf_calls_match_kernel():
    """main calls f(7), f calls g(3); r6-r9 survive calls and each frame has its own stack."""
    main = prog(
        mov(9, 1), mov(6, imm=100), st_imm(8, 10, -8, 5),
        mov(1, imm=7), call_local(0),  # -> f, patched below
        ldx(8, 3, 10, -8), alu(AluOp.ADD, 0, 3), alu(AluOp.ADD, 0, 6), mov(7, 0),
        mov(1, 9), packet_guard(8, 1), stx(8, 2, 7, 0), mov(0, imm=2), exit_(),
    )
    f = prog(mov(6, 1), st_imm(8, 10, -8, 1000), mov(1, imm=3), call_local(0),  # -> g
             ldx(8, 3, 10, -8), alu(AluOp.ADD, 0, 3), alu(AluOp.ADD, 0, 6), exit_())
    g = prog(mov(0, 1), alu(AluOp.MUL, 0, imm=2), exit_())
    call_main, call_f = 4, len(main) + 3
    insns = main + f + g
    insns[call_main] = insns[call_main].replace(imm=len(main) - call_main - 1)
    insns[call_f] = insns[call_f].replace(imm=len(main) + len(f) - call_f - 1)
    both = run_both(insns, bytes(64))
    assert both.interp.fault is None
    assert both.interp.packet == both.kernel_packet
    assert int.from_bytes(both.interp.packet[:8], "little") == 5 + 100 + (6 + 1000 + 7)


def test_call_depth_limit_faults(interp):
    insns = prog(call_local(-1), exit_())  # calls itself forever
    res = interp.run(interp.load_program("rec", insns), bytes(64))
    assert res.action == 0 and "call depth" in res.fault


def test_unknown_helper_faults_with_its_name(interp):
    res = interp.run(interp.load_program("h", prog(call(Helper.fib_lookup), exit_())), bytes(64))
    assert res.action == 0
    assert "fib_lookup" in res.fault and interp.last_fault == res.fault


def test_helpers_with_bad_pointers_fault(interp):
    m = interp.create_map(MapSpec("h", MapType.HASH, 4, 4, 4))
    insns = prog(ld64(1, m.handle, PseudoSrc.MAP_FD), mov(2, imm=16), call(Helper.map_lookup_elem), exit_())
    res = interp.run(interp.load_program("bad", insns), bytes(64))
    assert res.action == 0 and "not in any region" in res.fault
    insns = prog(mov(1, imm=5), mov(2, 10), call(Helper.map_lookup_elem), exit_())
    res = interp.run(interp.load_program("bad2", insns), bytes(64))
    assert "not a map pointer" in res.fault
    insns = prog(mov(1, 10), mov(2, imm=4), call(Helper.xdp_adjust_head), exit_())
    assert "ctx pointer" in interp.run(interp.load_program("bad3", insns), bytes(64)).fault


def test_simple_helpers(interp):
    interp.cpu = 1
    insns = prog(call(Helper.get_smp_processor_id), exit_())
    assert interp.run(interp.load_program("cpu", insns), bytes(64)).action == 1
    insns = prog(mov(6, 1), call(Helper.xdp_get_buff_len), exit_())
    assert interp.run(interp.load_program("len", insns), bytes(77)).action == 77
