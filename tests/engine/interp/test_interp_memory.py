"""Loads, stores and atomics of every width, packet and stack, against the kernel.

The program copies the first 64 packet bytes to the stack, runs random memory
operations on both areas (atomics only on the stack: the verifier forbids them
on packet memory), then writes the stack copy and the value registers back into
the packet, so the kernel's data_out shows every byte and every register.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from interp_asm import atomic, exit_, ld64, ldx, mov, packet_guard, prog, stx
from interp_asm import st as st_imm
from interp_oracle import run_both

from vxdp.bpf.isa import AtomicOp, Insn

VALUE_REGS = [0, 3, 4, 5]
ATOMIC_OPS = [AtomicOp.ADD, AtomicOp.OR, AtomicOp.AND, AtomicOp.XOR,
              AtomicOp.ADD | AtomicOp.FETCH, AtomicOp.OR | AtomicOp.FETCH, AtomicOp.AND | AtomicOp.FETCH,
              AtomicOp.XOR | AtomicOp.FETCH, AtomicOp.XCHG, AtomicOp.CMPXCHG]


@st.composite
def mem_op(draw) -> Insn:
    kind = draw(st.sampled_from(["ldx", "ldsx", "stx", "st", "atomic"]))
    size = draw(st.sampled_from([4, 8] if kind == "atomic" else [1, 2, 4, 8]))
    on_stack = kind == "atomic" or draw(st.booleans())
    off = draw(st.integers(0, 64 - size))
    if on_stack:
        off -= off % size  # the verifier wants aligned stack access; packets may be unaligned
    base, off = (10, off - 64) if on_stack else (2, off)
    if kind in ("ldx", "ldsx"):
        if kind == "ldsx" and size == 8:
            size = 4  # no 8-byte sign-extending load; off stays aligned to 8, hence to 4
        return ldx(size, draw(st.sampled_from(VALUE_REGS)), base, off, signed=kind == "ldsx")
    if kind == "stx":
        return stx(size, base, draw(st.sampled_from(VALUE_REGS)), off)
    if kind == "st":
        return st_imm(size, base, off, draw(st.integers(-2**31, 2**31 - 1)))
    src = draw(st.sampled_from([3, 4, 5]))
    return atomic(size, base, src, off, int(draw(st.sampled_from(ATOMIC_OPS))))


def _program(values: list[int], ops: list[Insn]) -> list[Insn]:
    copy_in = [i for k in range(8) for i in (ldx(8, 6, 2, 8 * k), stx(8, 10, 6, -64 + 8 * k))]
    copy_out = [i for k in range(8) for i in (ldx(8, 6, 10, -64 + 8 * k), stx(8, 2, 6, 64 + 8 * k))]
    regs_out = [stx(8, 2, r, 128 + 8 * i) for i, r in enumerate(VALUE_REGS)]
    return prog(
        packet_guard(160, 1), copy_in,
        *[ld64(r, v) for r, v in zip(VALUE_REGS, values)],
        ops, copy_out, regs_out, mov(0, imm=2), exit_(),
    )


@pytest.mark.privileged
@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 2**64 - 1), min_size=4, max_size=4), st.lists(mem_op(), min_size=1, max_size=30),
       st.binary(min_size=160, max_size=160))
def test_random_memory_programs_match_kernel(values, ops, packet):
    both = run_both(_program(values, ops), packet)
    assert both.interp.fault is None
    assert both.interp.action == both.kernel_action == 2
    assert both.interp.packet == both.kernel_packet


@pytest.mark.privileged
@pytest.mark.parametrize("op", ATOMIC_OPS)
@pytest.mark.parametrize("size", [4, 8])
def test_each_atomic_matches_kernel(op, size):
    """cmpxchg both hitting and missing (r0 equal / not equal to memory), fetch into src, 32-bit zero-extension."""
    packet = bytes((0x80 + i) & 0xFF for i in range(160))
    for r0 in (0x8786858483828180, 0xFFFF_FFFF_8382_8180, 0):
        ops = [atomic(size, 10, 3, -64, int(op)), atomic(size, 10, 4, -56, int(op))]
        insns = _program([r0, 0xFEDCBA98_76543210, 0x8382_8180, 0], ops)
        both = run_both(insns, packet)
        assert both.interp.packet == both.kernel_packet, (hex(r0), op, size)


def test_sign_extending_loads_by_hand(interp):
    packet = bytes([0x80, 0xFF, 0x7F, 0x01]) + bytes(60)
    insns = prog(packet_guard(8, 1), ldx(1, 3, 2, 0, signed=True), ldx(2, 4, 2, 0, signed=True),
                 ldx(4, 5, 2, 0, signed=True), stx(8, 2, 3, 8), stx(8, 2, 4, 16), stx(8, 2, 5, 24),
                 mov(0, imm=2), exit_())
    out = interp.run(interp.load_program("sx", insns), packet).packet
    assert int.from_bytes(out[8:16], "little") == 0xFFFF_FFFF_FFFF_FF80
    assert int.from_bytes(out[16:24], "little") == 0xFFFF_FFFF_FFFF_FF80
    assert int.from_bytes(out[24:32], "little") == 0x017F_FF80
