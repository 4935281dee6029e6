"""ALU, ALU64, byte swaps, MOVSX, div/mod and shifts, JMP/JMP32: the interpreter against the kernel.

Random straight-line programs (with forward conditional jumps) over r0-r5,
every register first loaded with a random 64-bit value by ``lddw``; at the end
all six registers are stored into the packet, so the kernel's data_out carries
all 64 bits of each, and the whole packet must match the interpreter's.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from interp_asm import alu, exit_, jmp, ld64, ldx, mov, packet_guard, prog, stx
from interp_oracle import run_both

from vxdp.bpf.isa import AluOp, Cls, Insn, JmpOp
from vxdp.engine.interp import alu as sem

CORNER64 = [0, 1, 2, 7, 31, 32, 63, 64, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 0x100000000,
            1 << 63, (1 << 63) - 1, (1 << 64) - 1, (1 << 64) - 2, 0xFFFFFFFF80000000]
CORNER32 = [0, 1, -1, 2, -2, 7, 31, 32, 63, 64, -2**31, 2**31 - 1, 0x10000, -0x10000]

values64 = st.one_of(st.sampled_from(CORNER64), st.integers(0, 2**64 - 1))
imm32 = st.one_of(st.sampled_from(CORNER32), st.integers(-2**31, 2**31 - 1))
reg = st.integers(0, 5)

BINOPS = [AluOp.ADD, AluOp.SUB, AluOp.MUL, AluOp.DIV, AluOp.OR, AluOp.AND, AluOp.LSH, AluOp.RSH,
          AluOp.MOD, AluOp.XOR, AluOp.MOV, AluOp.ARSH]
JMPOPS = [JmpOp.JEQ, JmpOp.JGT, JmpOp.JGE, JmpOp.JSET, JmpOp.JNE, JmpOp.JSGT, JmpOp.JSGE,
          JmpOp.JLT, JmpOp.JLE, JmpOp.JSLT, JmpOp.JSLE]


@st.composite
def alu_insn(draw) -> Insn:
    kind = draw(st.sampled_from(["bin", "bin", "bin", "neg", "end", "bswap", "movsx", "sdiv"]))
    wide = draw(st.booleans())
    d = draw(reg)
    if kind == "neg":
        return alu(AluOp.NEG, d, wide=wide)
    if kind == "end":
        return Insn(Cls.ALU | AluOp.END | draw(st.sampled_from([0, 8])), d, 0, 0, draw(st.sampled_from([16, 32, 64])))
    if kind == "bswap":
        return Insn(Cls.ALU64 | AluOp.END, d, 0, 0, draw(st.sampled_from([16, 32, 64])))
    if kind == "movsx":
        return alu(AluOp.MOV, d, draw(reg), wide=wide, off=draw(st.sampled_from([8, 16, 32] if wide else [8, 16])))
    op = draw(st.sampled_from([AluOp.DIV, AluOp.MOD] if kind == "sdiv" else BINOPS))
    off = 1 if kind == "sdiv" else 0
    if draw(st.booleans()):
        return alu(op, d, draw(reg), wide=wide, off=off)
    imm = draw(imm32)
    if op in (AluOp.LSH, AluOp.RSH, AluOp.ARSH):
        imm &= 63 if wide else 31  # the verifier refuses constant shifts >= width
    if op in (AluOp.DIV, AluOp.MOD) and imm == 0:
        imm = -1  # and constant division by zero
    return alu(op, d, imm=imm, wide=wide, off=off)


@st.composite
def alu_program(draw) -> list[Insn]:
    body = draw(st.lists(alu_insn(), min_size=1, max_size=24))
    # sprinkle forward conditional jumps, each landing inside the body
    out: list[Insn] = []
    for i, insn in enumerate(body):
        if draw(st.integers(0, 4)) == 0:
            op = draw(st.sampled_from(JMPOPS))
            wide = draw(st.booleans())
            skip = draw(st.integers(0, len(body) - i))
            if draw(st.booleans()):
                out.append(jmp(op, draw(reg), skip, src=draw(reg), wide=wide))
            else:
                out.append(jmp(op, draw(reg), skip, imm=draw(imm32), wide=wide))
        out.append(insn)
    inits = prog(*[ld64(r, draw(values64)) for r in range(6)])
    return _program_with_stores(prog(inits, out))


def _program_with_stores(body: list[Insn]) -> list[Insn]:
    """ctx to r9; ``body``; then store r0-r5 into the packet (r3-r5 via the stack) and return XDP_PASS."""
    return prog(
        mov(9, 1),
        body,
        stx(8, 10, 3, -8), stx(8, 10, 4, -16), stx(8, 10, 5, -24),
        mov(6, 0), mov(7, 1), mov(8, 2), mov(1, 9),
        packet_guard(48, 1),
        stx(8, 2, 6, 0), stx(8, 2, 7, 8), stx(8, 2, 8, 16),
        ldx(8, 4, 10, -8), stx(8, 2, 4, 24), ldx(8, 4, 10, -16), stx(8, 2, 4, 32),
        ldx(8, 4, 10, -24), stx(8, 2, 4, 40),
        mov(0, imm=2), exit_(),
    )


PACKET = bytes(range(64))


@pytest.mark.privileged
@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alu_program())
def test_random_alu_programs_match_kernel(insns):
    both = run_both(insns, PACKET)
    assert both.interp.fault is None
    assert both.interp.action == both.kernel_action == 2
    assert both.interp.packet == both.kernel_packet


def _one_op(insn: Insn, a: int, b: int) -> list[Insn]:
    """r0 = a; r1 = b (via r1 after saving ctx); insn; store r0 and r1."""
    return _program_with_stores(prog(ld64(0, a), ld64(1, b), ld64(2, 0), ld64(3, 0), ld64(4, 0), ld64(5, 0), insn))


CORNERS = [
    (alu(AluOp.DIV, 0, 1), 123, 0),  # div by zero register -> 0
    (alu(AluOp.MOD, 0, 1), 123, 0),  # mod by zero -> dst unchanged
    (alu(AluOp.MOD, 0, 1, wide=False), 0xAAAAAAAA_12345678, 0),  # 32-bit: dst zero-extended
    (alu(AluOp.DIV, 0, 1, wide=False), 0xAAAAAAAA_12345678, 0xFFFFFFFF_00000000),  # low half of src is 0
    (alu(AluOp.DIV, 0, 1, off=1), 1 << 63, (1 << 64) - 1),  # INT64_MIN / -1
    (alu(AluOp.MOD, 0, 1, off=1), 1 << 63, (1 << 64) - 1),
    (alu(AluOp.DIV, 0, 1, wide=False, off=1), 0x80000000, 0xFFFFFFFF),  # INT32_MIN / -1
    (alu(AluOp.MOD, 0, 1, wide=False, off=1), 0x80000000, 0xFFFFFFFF),
    (alu(AluOp.MOD, 0, 1, off=1), (1 << 64) - 7, 2),  # -7 % 2 = -1
    (alu(AluOp.DIV, 0, 1, off=1), (1 << 64) - 7, 2),  # -7 / 2 = -3
    (alu(AluOp.MOD, 0, 1, wide=False, off=1), 0xFFFFFFF9, 0),  # signed mod by zero, 32-bit
    (alu(AluOp.LSH, 0, 1), 0x1234, 65),  # shift counts masked to the width
    (alu(AluOp.RSH, 0, 1, wide=False), 0xFFFF_FFFF_8000_0000, 33),
    (alu(AluOp.ARSH, 0, 1, wide=False), 0x8000_0000, 63),
    (alu(AluOp.ARSH, 0, 1), 1 << 63, 200),
    (alu(AluOp.DIV, 0, imm=-1), 1 << 63, 0),  # imm sign-extended, then unsigned
    (alu(AluOp.MOD, 0, imm=-2, wide=False), 0xFFFFFFFF, 0),
    (alu(AluOp.MOV, 0, imm=-1, wide=False), 0, 0),
    (alu(AluOp.MOV, 0, 1, off=32), 0, 0x80000000),
    (alu(AluOp.MOV, 0, 1, wide=False, off=8), 0, 0x80),
    (Insn(Cls.ALU | AluOp.END | 8, 0, 0, 0, 16), 0x1122334455667788, 0),
    (Insn(Cls.ALU | AluOp.END, 0, 0, 0, 32), 0x1122334455667788, 0),
    (Insn(Cls.ALU64 | AluOp.END, 0, 0, 0, 64), 0x1122334455667788, 0),
]


@pytest.mark.privileged
@pytest.mark.parametrize("insn,a,b", CORNERS)
def test_corner_cases_match_kernel(insn, a, b):
    both = run_both(_one_op(insn, a, b), PACKET)
    assert both.interp.packet == both.kernel_packet
    assert both.interp.action == both.kernel_action == 2


def test_alu_semantics_by_hand():
    """Values checked by hand against the ISA document, no kernel needed."""
    M64 = (1 << 64) - 1
    assert sem.ALU64[AluOp.DIV](5, 0) == 0
    assert sem.ALU64[AluOp.MOD](5, 0) == 5
    assert sem.ALU32[AluOp.MOD](0x1_0000_0005, 0) == 5
    assert sem.SIGNED64[AluOp.DIV](1 << 63, M64) == 1 << 63
    assert sem.SIGNED64[AluOp.MOD](1 << 63, M64) == 0
    assert sem.SIGNED64[AluOp.MOD]((-7) & M64, 2) == (-1) & M64
    assert sem.SIGNED32[AluOp.DIV](0xFFFFFFF9, 2) == (-3) & 0xFFFFFFFF
    assert sem.ALU64[AluOp.LSH](1, 64) == 1
    assert sem.ALU32[AluOp.ARSH](0x80000000, 31) == 0xFFFFFFFF
    assert sem.bswap(16)(0x11223344, 0) == 0x4433
    assert sem.truncate(32)(0x1122334455667788, 0) == 0x55667788
    assert sem.movsx64(8)(0, 0xFF) == M64
    assert sem.movsx32(16)(0, 0x8000) == 0xFFFF8000


def test_conditional_jumps_by_hand(interp):
    """jslt (signed) vs jlt (unsigned) on -1 and 1, in both widths, and gotol."""
    def run(insns):
        return interp.run(interp.load_program("j", insns), PACKET).action

    minus1 = ld64(2, (1 << 64) - 1)
    assert run(prog(minus1, mov(0, imm=1), jmp(JmpOp.JSLT, 2, 1, imm=1), exit_(), mov(0, imm=2), exit_())) == 2
    assert run(prog(minus1, mov(0, imm=1), jmp(JmpOp.JLT, 2, 1, imm=1), exit_(), mov(0, imm=2), exit_())) == 1
    # JMP32 compares the low halves only: 0x1_00000000 == 0
    assert run(prog(ld64(2, 1 << 32), mov(0, imm=1), jmp(JmpOp.JEQ, 2, 1, imm=0, wide=False), exit_(),
                    mov(0, imm=3), exit_())) == 3
    gotol = Insn(Cls.JMP32 | JmpOp.JA, 0, 0, 0, 1)
    assert run(prog(mov(0, imm=1), gotol, exit_(), mov(0, imm=2), exit_())) == 2
