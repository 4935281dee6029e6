"""A tiny assembler for hand-written test programs (one `Insn` per slot, lddw as two).

Shared by the interpreter's tests; each function returns a list of slots so
programs are written as ``[*mov(0, 2), *exit_()]``-free flat lists via `prog`.
"""

from __future__ import annotations

from vxdp.bpf.isa import AluOp, Cls, Insn, JmpOp, Mode, PseudoSrc, Size, Src, lddw

SIZES = {1: Size.B, 2: Size.H, 4: Size.W, 8: Size.DW}


def alu(op: AluOp | int, dst: int, src: int | None = None, imm: int = 0, *, wide: bool = True, off: int = 0) -> Insn:
    """``dst op= src`` (register when ``src`` is given) or ``dst op= imm``."""
    cls = Cls.ALU64 if wide else Cls.ALU
    if src is None:
        return Insn(cls | Src.K | op, dst, 0, off, imm)
    return Insn(cls | Src.X | op, dst, src, off, 0)


def mov(dst: int, src: int | None = None, imm: int = 0, *, wide: bool = True) -> Insn:
    return alu(AluOp.MOV, dst, src, imm, wide=wide)


def ld64(dst: int, value: int, src: int = PseudoSrc.IMM) -> list[Insn]:
    return list(lddw(dst, value, src))


def ldx(size: int, dst: int, src: int, off: int = 0, *, signed: bool = False) -> Insn:
    return Insn(Cls.LDX | (Mode.MEMSX if signed else Mode.MEM) | SIZES[size], dst, src, off, 0)


def stx(size: int, dst: int, src: int, off: int = 0) -> Insn:
    return Insn(Cls.STX | Mode.MEM | SIZES[size], dst, src, off, 0)


def st(size: int, dst: int, off: int, imm: int) -> Insn:
    return Insn(Cls.ST | Mode.MEM | SIZES[size], dst, 0, off, imm)


def atomic(size: int, dst: int, src: int, off: int, op: int) -> Insn:
    return Insn(Cls.STX | Mode.ATOMIC | SIZES[size], dst, src, off, op)


def jmp(op: JmpOp | int, dst: int, off: int, src: int | None = None, imm: int = 0, *, wide: bool = True) -> Insn:
    cls = Cls.JMP if wide else Cls.JMP32
    if src is None:
        return Insn(cls | Src.K | op, dst, 0, off, imm)
    return Insn(cls | Src.X | op, dst, src, off, 0)


def ja(off: int) -> Insn:
    return Insn(Cls.JMP | JmpOp.JA, 0, 0, off, 0)


def call(helper: int) -> Insn:
    return Insn(Cls.JMP | JmpOp.CALL, 0, 0, 0, int(helper))


def call_local(rel: int) -> Insn:
    return Insn(Cls.JMP | JmpOp.CALL, 0, 1, 0, rel)


def exit_() -> Insn:
    return Insn(Cls.JMP | JmpOp.EXIT)


def prog(*parts: Insn | list[Insn]) -> list[Insn]:
    """Flatten instructions and lddw pairs into one list of slots."""
    out: list[Insn] = []
    for p in parts:
        out.extend(p if isinstance(p, list) else [p])
    return out


def packet_guard(length: int, fail_action: int = 0) -> list[Insn]:
    """r2 = data, r3 = data_end; return ``fail_action`` unless ``length`` bytes are there. Keeps r1."""
    return prog(
        ldx(4, 2, 1, 0), ldx(4, 3, 1, 4),
        mov(4, 2), alu(AluOp.ADD, 4, imm=length),
        jmp(JmpOp.JLE, 4, 2, src=3),
        mov(0, imm=fail_action), exit_(),
    )
