"""Disassembler: instruction slots to text in the style of ``bpftool prog dump xlated``.

Why bpftool's style: it is what the kernel's verifier log and every eBPF engineer
read (``kernel/bpf/disasm.c``), so a line we print can be pasted next to a line the
kernel printed and compared character for character. `vxdp.bpf.asm` reads back
exactly what this module prints, so ``assemble(disassemble(p)) == p`` for any
program, byte for byte. Where bpftool's text loses information we extend it
minimally:

- ``lddw`` always carries the ``ll`` suffix (``r1 = 0x1122334455667788 ll``), since
  ``r1 = 5`` is a 32-bit-immediate ``mov``;
- map references before load print the fd (``map[fd:5]``, ``map[fd:5][0]+16``);
  bpftool prints ``map[id:N]`` for loaded programs, and the assembler takes both;
- map by index ``map[idx:2]`` / ``map[idx:2]+16`` (bpftool's spelling), BTF id
  ``btf_id[123]`` (``btf_id[123][btf:4]`` when the second slot names a module BTF fd),
  function address ``func[pc+4]``;
- calls: helper ``call bpf_map_lookup_elem#1`` (``call unknown#N`` for ids we do not
  know), subprogram ``call pc+12``, kfunc ``call kfunc#1234`` (``call kfunc#1234[btf:3]``
  when ``off`` selects a module BTF);
- any slot that is not exactly one known form (an unknown opcode, a reserved field
  that is not zero, a ``lddw`` without a proper second slot) prints as
  ``raw(code=0x.., dst=.., src=.., off=.., imm=..)``, which assembles back to the
  same 8 bytes. So a program never fails to disassemble, and nothing is hidden.

Annotations: ``annotate(i, insn)`` may return a comment for slot ``i`` (a map name,
a callee, a source line); it is appended to the instruction's line as ``  ; text``
(one line per instruction keeps line counts and greps simple; the assembler drops
everything after ``;``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .helpers import Helper
from .isa import LDDW, AluOp, Cls, Insn, JmpOp, Mode, PseudoCall, PseudoSrc, Size

Annotate = Callable[[int, Insn], "str | None"]

# --- spelling tables, shared with the assembler -----------------------------------

SIZE_NAME = {Size.W: "u32", Size.H: "u16", Size.B: "u8", Size.DW: "u64"}
SIZE_SX_NAME = {Size.W: "s32", Size.H: "s16", Size.B: "s8"}

ALU_OP_TEXT = {
    AluOp.ADD: "+=",
    AluOp.SUB: "-=",
    AluOp.MUL: "*=",
    AluOp.DIV: "/=",
    AluOp.OR: "|=",
    AluOp.AND: "&=",
    AluOp.LSH: "<<=",
    AluOp.RSH: ">>=",
    AluOp.MOD: "%=",
    AluOp.XOR: "^=",
    AluOp.MOV: "=",
    AluOp.ARSH: "s>>=",
}
# DIV and MOD with off == 1 are the signed forms (ISA v4).
ALU_SIGNED_TEXT = {AluOp.DIV: "s/=", AluOp.MOD: "s%="}

JMP_OP_TEXT = {
    JmpOp.JEQ: "==",
    JmpOp.JGT: ">",
    JmpOp.JGE: ">=",
    JmpOp.JSET: "&",
    JmpOp.JNE: "!=",
    JmpOp.JSGT: "s>",
    JmpOp.JSGE: "s>=",
    JmpOp.JLT: "<",
    JmpOp.JLE: "<=",
    JmpOp.JSLT: "s<",
    JmpOp.JSLE: "s<=",
}

JCOND = JmpOp.JCOND  # ``may_goto`` when src == 0 (kernel 6.9+)
MOVSX_OFFSETS_ALU64 = (8, 16, 32)
MOVSX_OFFSETS_ALU = (8, 16)
ADDR_SPACE_CAST_OFF = 1  # ALU64 | MOV | X with off == 1: arena address-space cast

# Atomic operations in ``imm`` (isa.AtomicOp holds the base values).
ATOMIC_FETCH = 0x01
ATOMIC_RMW_TEXT = {0x00: "+=", 0x40: "|=", 0x50: "&=", 0xA0: "^="}
ATOMIC_RMW_NAME = {0x00: "add", 0x40: "or", 0x50: "and", 0xA0: "xor"}
ATOMIC_XCHG = 0xE1
ATOMIC_CMPXCHG = 0xF1
ATOMIC_LOAD_ACQ = 0x100  # kernel 6.15+: load-acquire, any size
ATOMIC_STORE_REL = 0x110  # kernel 6.15+: store-release, any size

MAP_FD_TEXT = "map[fd:{}]"


def helper_name(helper_id: int) -> str | None:
    """``bpf_<name>`` of a helper id, or None for an id we do not know."""
    try:
        return "bpf_" + Helper(helper_id).name
    except ValueError:
        return None


def _reg(prefix: str, n: int) -> str:
    return f"{prefix}{n}"


def _mem(dst: int, off: int) -> str:
    """``(r1 +4)``: bpftool prints the offset with an explicit sign."""
    return f"(r{dst} {off:+d})"


def _u32(v: int) -> int:
    return v & 0xFFFFFFFF


# --- one slot ----------------------------------------------------------------------


def raw_text(insn: Insn) -> str:
    """The fallback spelling that names every field, for slots no form covers."""
    return f"raw(code=0x{insn.code:02x}, dst={insn.dst}, src={insn.src}, off={insn.off}, imm={insn.imm})"


def _alu(insn: Insn) -> str | None:
    cls, op, src_bit = insn.code & 0x07, insn.code & 0xF0, insn.code & 0x08
    w = "w" if cls == Cls.ALU else "r"
    d = _reg(w, insn.dst)
    if op == AluOp.END:
        if insn.src or insn.off or insn.imm not in (16, 32, 64):
            return None
        if cls == Cls.ALU64:
            if src_bit:
                return None
            return f"r{insn.dst} = bswap{insn.imm} r{insn.dst}"
        return f"r{insn.dst} = {'be' if src_bit else 'le'}{insn.imm} r{insn.dst}"
    if op == AluOp.NEG:
        if src_bit or insn.src or insn.off or insn.imm:
            return None
        return f"{d} = -{d}"
    if op not in ALU_OP_TEXT:
        return None
    text = ALU_OP_TEXT[AluOp(op)]
    if insn.off:
        if insn.off == 1 and op in ALU_SIGNED_TEXT:
            text = ALU_SIGNED_TEXT[AluOp(op)]
        elif not (op == AluOp.MOV and src_bit):
            return None
    if not src_bit:
        if insn.src:
            return None
        return f"{d} {text} {insn.imm}"
    s = _reg(w, insn.src)
    if op == AluOp.MOV and insn.off not in (0,):
        if cls == Cls.ALU64 and insn.off == ADDR_SPACE_CAST_OFF:
            return f"r{insn.dst} = addr_space_cast(r{insn.src}, {_u32(insn.imm) >> 16}, {insn.imm & 0xFFFF})"
        allowed = MOVSX_OFFSETS_ALU64 if cls == Cls.ALU64 else MOVSX_OFFSETS_ALU
        if insn.off not in allowed or insn.imm:
            return None
        return f"{d} = (s{insn.off}){s}"
    if insn.imm:
        return None
    return f"{d} {text} {s}"


def _jmp(insn: Insn) -> str | None:
    cls, op, src_bit = insn.code & 0x07, insn.code & 0xF0, insn.code & 0x08
    jmp64 = cls == Cls.JMP
    if op == JmpOp.JA:
        if src_bit or insn.dst or insn.src:
            return None
        if jmp64:
            return None if insn.imm else f"goto pc{insn.off:+d}"
        return None if insn.off else f"gotol pc{insn.imm:+d}"
    if op in (JmpOp.CALL, JmpOp.EXIT, JCOND):
        if not jmp64 or src_bit:
            return None
        if op == JmpOp.EXIT:
            return None if (insn.dst or insn.src or insn.off or insn.imm) else "exit"
        if op == JCOND:
            return None if (insn.dst or insn.src or insn.imm) else f"may_goto pc{insn.off:+d}"
        return _call(insn)
    if op not in JMP_OP_TEXT:
        return None
    w = "r" if jmp64 else "w"
    text = JMP_OP_TEXT[JmpOp(op)]
    if src_bit:
        if insn.imm:
            return None
        return f"if {w}{insn.dst} {text} {w}{insn.src} goto pc{insn.off:+d}"
    if insn.src:
        return None
    return f"if {w}{insn.dst} {text} 0x{_u32(insn.imm):x} goto pc{insn.off:+d}"


def _call(insn: Insn) -> str | None:
    if insn.dst:
        return None
    if insn.src == PseudoCall.HELPER:
        if insn.off:
            return None
        return f"call {helper_name(insn.imm) or 'unknown'}#{insn.imm}"
    if insn.src == PseudoCall.CALL:
        return None if insn.off else f"call pc{insn.imm:+d}"
    if insn.src == PseudoCall.KFUNC:
        btf = f"[btf:{insn.off}]" if insn.off else ""
        return f"call kfunc#{insn.imm}{btf}"
    return None


def _ld(insn: Insn) -> str | None:
    """LD class other than lddw: the legacy packet loads."""
    mode, size = insn.code & 0xE0, insn.code & 0x18
    if size == Size.DW or insn.dst or insn.off:
        return None
    if mode == Mode.ABS:
        return None if insn.src else f"r0 = *({SIZE_NAME[Size(size)]} *)skb[{insn.imm}]"
    if mode == Mode.IND:
        return f"r0 = *({SIZE_NAME[Size(size)]} *)skb[r{insn.src} + {insn.imm}]"
    return None


def _ldx(insn: Insn) -> str | None:
    mode, size = insn.code & 0xE0, Size(insn.code & 0x18)
    if insn.imm:
        return None
    if mode == Mode.MEM:
        name = SIZE_NAME[size]
    elif mode == Mode.MEMSX and size in SIZE_SX_NAME:
        name = SIZE_SX_NAME[size]
    else:
        return None
    return f"r{insn.dst} = *({name} *){_mem(insn.src, insn.off)}"


def _st(insn: Insn) -> str | None:
    if insn.code & 0xE0 != Mode.MEM or insn.src:
        return None
    return f"*({SIZE_NAME[Size(insn.code & 0x18)]} *){_mem(insn.dst, insn.off)} = {insn.imm}"


def _stx(insn: Insn) -> str | None:
    mode, size = insn.code & 0xE0, Size(insn.code & 0x18)
    sz = SIZE_NAME[size]
    where = _mem(insn.dst, insn.off)
    if mode == Mode.MEM:
        return None if insn.imm else f"*({sz} *){where} = r{insn.src}"
    if mode != Mode.ATOMIC:
        return None
    imm = insn.imm
    if imm == ATOMIC_LOAD_ACQ:
        return f"r{insn.dst} = load_acquire(({sz} *){_mem(insn.src, insn.off)})"
    if imm == ATOMIC_STORE_REL:
        return f"store_release(({sz} *){where}, r{insn.src})"
    if size not in (Size.W, Size.DW):
        return None
    bits = "64" if size == Size.DW else ""
    if imm in ATOMIC_RMW_TEXT:
        return f"lock *({sz} *){where} {ATOMIC_RMW_TEXT[imm]} r{insn.src}"
    if imm & ATOMIC_FETCH and (imm & ~ATOMIC_FETCH) in ATOMIC_RMW_NAME:
        name = ATOMIC_RMW_NAME[imm & ~ATOMIC_FETCH]
        return f"r{insn.src} = atomic{bits}_fetch_{name}(({sz} *){where}, r{insn.src})"
    if imm == ATOMIC_XCHG:
        return f"r{insn.src} = atomic{bits}_xchg(({sz} *){where}, r{insn.src})"
    if imm == ATOMIC_CMPXCHG:
        return f"r0 = atomic{bits}_cmpxchg(({sz} *){where}, r0, r{insn.src})"
    return None


def _lddw(first: Insn, second: Insn) -> str | None:
    """Text of a well-formed two-slot ``lddw``, or None when the pair is not one."""
    if first.off or second.code or second.dst or second.src or second.off:
        return None
    lo, hi = _u32(first.imm), _u32(second.imm)
    src = first.src
    if src == PseudoSrc.IMM:
        value = f"0x{(hi << 32) | lo:x}"
    elif src == PseudoSrc.MAP_FD:
        value = None if hi else f"map[fd:{lo}]"
    elif src == PseudoSrc.MAP_VALUE:
        value = f"map[fd:{lo}][0]+{hi}"
    elif src == PseudoSrc.BTF_ID:
        value = f"btf_id[{lo}]" + (f"[btf:{hi}]" if hi else "")
    elif src == PseudoSrc.FUNC:
        value = None if hi else f"func[pc{first.imm:+d}]"
    elif src == PseudoSrc.MAP_IDX:
        value = None if hi else f"map[idx:{lo}]"
    elif src == PseudoSrc.MAP_IDX_VALUE:
        value = f"map[idx:{lo}]+{hi}"
    else:
        value = None
    return None if value is None else f"r{first.dst} = {value} ll"


_BY_CLASS = {
    Cls.ALU: _alu,
    Cls.ALU64: _alu,
    Cls.JMP: _jmp,
    Cls.JMP32: _jmp,
    Cls.LD: _ld,
    Cls.LDX: _ldx,
    Cls.ST: _st,
    Cls.STX: _stx,
}


def insn_width(insns: Sequence[Insn], i: int) -> int:
    """How many slots the instruction starting at ``i`` takes: 2 for a well-formed lddw, else 1."""
    if insns[i].code == LDDW and i + 1 < len(insns) and _lddw(insns[i], insns[i + 1]) is not None:
        return 2
    return 1


def _text(insns: Sequence[Insn], i: int) -> str:
    insn = insns[i]
    if insn.code == LDDW:
        text = _lddw(insn, insns[i + 1]) if i + 1 < len(insns) else None
    else:
        text = _BY_CLASS[insn.cls](insn)
    return raw_text(insn) if text is None else text


def _annotated(text: str, note: str | None) -> str:
    if not note:
        return text
    return f"{text}  ; {' '.join(note.split())}"


def format_insn(insns: Sequence[Insn], i: int, annotate: Annotate | None = None) -> str:
    """Text of the instruction starting at slot ``i`` (a lddw reads slot ``i + 1`` too).

    No ``N: (xx)`` prefix; see `disassemble` for whole lines. A slot that is the
    second half of a lddw formats on its own as ``raw(...)`` (use `insn_width` to
    walk a program).
    """
    if not 0 <= i < len(insns):
        raise IndexError(f"instruction index {i} outside a program of {len(insns)} slots")
    return _annotated(_text(insns, i), annotate(i, insns[i]) if annotate else None)


def disassemble(
    insns: Sequence[Insn], *, annotate: Annotate | None = None, line_numbers: bool = True
) -> list[str]:
    """One line per instruction; the second slot of a lddw gets no line of its own.

    With ``line_numbers`` a line reads like bpftool's ``   0: (b7) r0 = 2`` (slot index,
    opcode byte in hex, text); without, just ``r0 = 2``. Both assemble back.
    """
    lines = []
    i = 0
    while i < len(insns):
        text = format_insn(insns, i, annotate)
        lines.append(f"{i:4d}: ({insns[i].code:02x}) {text}" if line_numbers else text)
        i += insn_width(insns, i)
    return lines
