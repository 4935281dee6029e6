"""The eBPF instruction set: opcode fields, one instruction slot, decode and encode.

Follows the kernel's ``Documentation/bpf/standardization/instruction-set.rst``.
An instruction is one 8-byte slot, little-endian on the hosts we run on:

    code:8  dst:4 src:4  off:16 (signed)  imm:32 (signed)

The 64-bit immediate load (``lddw``) takes two slots; we keep it as two `Insn`
values, the second with ``code == 0`` carrying the upper 32 bits in ``imm``.
Keeping one list entry per slot means that instruction indexes, jump offsets,
relocation offsets and ``func_info``/``line_info`` offsets all count the same
thing, exactly as the kernel and the ELF file do.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

INSN_SIZE = 8
_SLOT = struct.Struct("<BBhi")


class Cls(IntEnum):
    """Instruction class: the low three bits of ``code``."""

    LD = 0x00
    LDX = 0x01
    ST = 0x02
    STX = 0x03
    ALU = 0x04
    JMP = 0x05
    JMP32 = 0x06
    ALU64 = 0x07


class Size(IntEnum):
    """Access width for load and store classes (bits 3-4)."""

    W = 0x00
    H = 0x08
    B = 0x10
    DW = 0x18


SIZE_BYTES = {Size.B: 1, Size.H: 2, Size.W: 4, Size.DW: 8}


class Mode(IntEnum):
    """Addressing mode for load and store classes (bits 5-7)."""

    IMM = 0x00
    ABS = 0x20
    IND = 0x40
    MEM = 0x60
    MEMSX = 0x80
    ATOMIC = 0xC0


class Src(IntEnum):
    """Operand source for ALU and JMP classes (bit 3)."""

    K = 0x00  # the immediate
    X = 0x08  # the source register


class AluOp(IntEnum):
    """ALU operation (bits 4-7) for the ALU and ALU64 classes."""

    ADD = 0x00
    SUB = 0x10
    MUL = 0x20
    DIV = 0x30
    OR = 0x40
    AND = 0x50
    LSH = 0x60
    RSH = 0x70
    NEG = 0x80
    MOD = 0x90
    XOR = 0xA0
    MOV = 0xB0
    ARSH = 0xC0
    END = 0xD0


class JmpOp(IntEnum):
    """Jump operation (bits 4-7) for the JMP and JMP32 classes."""

    JA = 0x00
    JEQ = 0x10
    JGT = 0x20
    JGE = 0x30
    JSET = 0x40
    JNE = 0x50
    JSGT = 0x60
    JSGE = 0x70
    CALL = 0x80
    EXIT = 0x90
    JLT = 0xA0
    JLE = 0xB0
    JSLT = 0xC0
    JSLE = 0xD0
    JCOND = 0xE0  # ``may_goto`` (src 0): kernel 6.9+


class AtomicOp(IntEnum):
    """Atomic operation, carried in ``imm`` of ``STX | ATOMIC`` instructions."""

    ADD = 0x00
    OR = 0x40
    AND = 0x50
    XOR = 0xA0
    FETCH = 0x01
    XCHG = 0xE0 | 0x01
    CMPXCHG = 0xF0 | 0x01


class PseudoSrc(IntEnum):
    """``src`` of a ``lddw`` slot: what the 64-bit immediate refers to."""

    IMM = 0
    MAP_FD = 1
    MAP_VALUE = 2
    BTF_ID = 3
    FUNC = 4
    MAP_IDX = 5
    MAP_IDX_VALUE = 6


class PseudoCall(IntEnum):
    """``src`` of a ``call`` instruction: what ``imm`` names."""

    HELPER = 0
    CALL = 1  # bpf-to-bpf: imm is the relative offset of the callee
    KFUNC = 2  # imm is a BTF id


class XdpAction(IntEnum):
    """Return codes of an XDP program (``enum xdp_action``)."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


ACTION_NAMES = tuple(a.name.lower() for a in XdpAction)
"""XDP verdicts by their value, as every view names them (PROG_QUERY counts them in this order)."""


LDDW = Cls.LD | Size.DW | Mode.IMM  # 0x18
CALL = Cls.JMP | JmpOp.CALL  # 0x85
EXIT = Cls.JMP | JmpOp.EXIT  # 0x95
MOV64_IMM = Cls.ALU64 | AluOp.MOV | Src.K  # 0xb7


class InsnError(ValueError):
    """Instruction bytes that cannot be decoded (wrong length)."""


@dataclass(frozen=True, slots=True)
class Insn:
    """One 8-byte instruction slot, fields as the kernel's ``struct bpf_insn``."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    @property
    def cls(self) -> Cls:
        return Cls(self.code & 0x07)

    @property
    def is_lddw(self) -> bool:
        return self.code == LDDW

    @property
    def is_call(self) -> bool:
        return self.code == CALL

    @property
    def is_subprog_call(self) -> bool:
        return self.code == CALL and self.src == PseudoCall.CALL

    @property
    def is_exit(self) -> bool:
        return self.code == EXIT

    def encode(self) -> bytes:
        return _SLOT.pack(self.code, (self.src << 4) | (self.dst & 0x0F), self.off, self.imm)

    def replace(self, **fields: int) -> Insn:
        """A copy with some fields changed (relocation patches instructions this way)."""
        values = {name: getattr(self, name) for name in ("code", "dst", "src", "off", "imm")}
        values.update(fields)
        return Insn(**values)


def verdict_program(action: int) -> list[Insn]:
    """``r0 = action; exit``: the smallest XDP program, for generators, sinks and placeholders."""
    return [Insn(MOV64_IMM, 0, 0, 0, int(action)), Insn(EXIT)]


def decode(data: bytes) -> list[Insn]:
    """Split raw program bytes into slots. Raises `InsnError` if not a whole number of slots."""
    if len(data) % INSN_SIZE:
        raise InsnError(f"program of {len(data)} bytes is not a whole number of 8-byte instructions")
    out = []
    for code, regs, off, imm in _SLOT.iter_unpack(data):
        out.append(Insn(code, regs & 0x0F, regs >> 4, off, imm))
    return out


def encode(insns: list[Insn]) -> bytes:
    """Join slots back into the bytes the kernel takes."""
    return b"".join(insn.encode() for insn in insns)


def lddw_value(first: Insn, second: Insn) -> int:
    """The unsigned 64-bit immediate of a two-slot ``lddw``."""
    return (first.imm & 0xFFFFFFFF) | ((second.imm & 0xFFFFFFFF) << 32)


def lddw(dst: int, value: int, src: int = PseudoSrc.IMM) -> tuple[Insn, Insn]:
    """The two slots of ``dst = value`` (``value`` as unsigned 64-bit)."""
    value &= 0xFFFFFFFFFFFFFFFF
    lo, hi = value & 0xFFFFFFFF, value >> 32
    as_s32 = lambda v: v - (1 << 32) if v & 0x80000000 else v
    return Insn(LDDW, dst, src, 0, as_s32(lo)), Insn(0, 0, 0, 0, as_s32(hi))
