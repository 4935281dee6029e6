"""Assembler: the text `vxdp.bpf.disasm` prints, back to instruction slots.

Why: tests and tools want to write small programs as text and to check that what
we print says everything the bytes say. The grammar is exactly the disassembler's
(bpftool's ``prog dump xlated`` style), so ``assemble(disassemble(p)) == p`` for every
program, including slots printed as ``raw(...)``. We also take a few spellings
bpftool prints for loaded programs (``map[id:N]``, ``subprog[+N]``,
``call kernel-function#N``, a lddw without ``ll``, helper calls by name alone such as
``call bpf_ktime_get_ns``). So the text bpftool prints for a loaded program assembles
back to the kernel's xlated bytes, except subprogram calls (there the kernel keeps the pc
offset in ``off`` and bpftool prints no ``imm``).

Immediates: ``rN = 0x..`` without ``ll`` is a lddw, as in bpftool, which prints lddw
values in hex and ``mov`` immediates in decimal (``r1 = 16``); ``w1 = 0x10`` and every
other operator take hex as a plain 32-bit immediate.

Input: one instruction per line (a string is split on newlines). Blank lines and
everything after ``;`` are ignored. A line may start with ``N:`` (ignored) and
``(xx)`` (the opcode byte, checked against the instruction). Optional labels: a line
``name:`` marks the next instruction, and ``goto name`` / ``if ... goto name`` /
``call name`` / ``func[name]`` use it (plain pc-relative text is what we print).

Errors raise `AsmError`, which names the 1-based line number and the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from .disasm import (
    ADDR_SPACE_CAST_OFF,
    ALU_OP_TEXT,
    ALU_SIGNED_TEXT,
    ATOMIC_CMPXCHG,
    ATOMIC_FETCH,
    ATOMIC_LOAD_ACQ,
    ATOMIC_RMW_NAME,
    ATOMIC_RMW_TEXT,
    ATOMIC_STORE_REL,
    ATOMIC_XCHG,
    JCOND,
    JMP_OP_TEXT,
    SIZE_NAME,
    SIZE_SX_NAME,
)
from .helpers import Helper
from .isa import LDDW, AluOp, Cls, Insn, JmpOp, Mode, PseudoCall, PseudoSrc, Src, lddw


class AsmError(ValueError):
    """Text that is not an instruction we know; the message names the line and its text."""

    def __init__(self, lineno: int, text: str, reason: str) -> None:
        super().__init__(f"line {lineno}: {reason}: {text!r}")
        self.lineno = lineno
        self.text = text
        self.reason = reason


class _Bad(Exception):
    """Raised by the line parsers; `assemble` adds the line number."""


# --- lexical pieces ------------------------------------------------------------------

_NUM = r"[+-]?\s*(?:0[xX][0-9a-fA-F]+|\d+)"
_REG = r"([rw])(\d+)"
_R = r"r(\d+)"
_LABEL = r"[A-Za-z_.$][\w.$]*"
_SIZES = {name: size for size, name in SIZE_NAME.items()}
_SX_SIZES = {name: size for size, name in SIZE_SX_NAME.items()}
_ALU_OPS = {text: op for op, text in ALU_OP_TEXT.items()}
_ALU_SIGNED = {text: op for op, text in ALU_SIGNED_TEXT.items()}
_JMP_OPS = {text: op for op, text in JMP_OP_TEXT.items()}
_RMW_OPS = {text: op for op, text in ATOMIC_RMW_TEXT.items()}
_RMW_NAMES = {name: op for op, name in ATOMIC_RMW_NAME.items()}
_HELPERS = {"bpf_" + h.name: int(h) for h in Helper}


def _int(text: str) -> int:
    return int(text.replace(" ", ""), 0)


def _s32(text: str | int, what: str = "immediate") -> int:
    """A 32-bit field: accepts signed and unsigned spellings, stores signed."""
    v = _int(text) if isinstance(text, str) else text
    if not -(1 << 31) <= v < (1 << 32):
        raise _Bad(f"{what} {v} does not fit 32 bits")
    return v - (1 << 32) if v >= (1 << 31) else v


def _s16(text: str, what: str = "offset") -> int:
    v = _int(text)
    if not -(1 << 15) <= v < (1 << 15):
        raise _Bad(f"{what} {v} does not fit a signed 16-bit field")
    return v


def _u16(text: str, what: str) -> int:
    v = _int(text)
    if not 0 <= v < (1 << 16):
        raise _Bad(f"{what} {v} does not fit 16 bits")
    return v


def _regno(text: str) -> int:
    n = int(text)
    if n > 15:
        raise _Bad(f"register number {n} does not fit 4 bits")
    return n


def _same_width(*prefixes: str) -> str:
    if len(set(prefixes)) != 1:
        raise _Bad("mixes 32-bit (w) and 64-bit (r) registers")
    return prefixes[0]


# --- forms: (compiled regex, builder(match, ctx) -> list[Insn]) ----------------------


class _Ctx:
    """Where the line sits, for labels: ``pc`` is its slot index."""

    def __init__(self, pc: int, labels: dict[str, int] | None) -> None:
        self.pc = pc
        self.labels = labels

    def rel(self, target: str, width: int = 1) -> int:
        """A ``pc+N`` / ``pc-N`` / label target as the offset from the next slot."""
        m = re.fullmatch(r"pc\s*(" + _NUM + ")", target) or re.fullmatch(r"(" + _NUM + ")", target)
        if m:
            return _int(m.group(1))
        if self.labels is None:
            return 0  # first pass: only sizes matter
        if target not in self.labels:
            raise _Bad(f"unknown label {target!r}")
        return self.labels[target] - (self.pc + width)


_FORMS: list[tuple[re.Pattern[str], Callable[..., list[Insn]]]] = []


def _re(pattern: str) -> str:
    """In our patterns a space means optional whitespace and '~' required whitespace."""
    return pattern.replace(" ", r"\s*").replace("~", r"\s+")


def _form(pattern: str) -> Callable[[Callable[..., list[Insn]]], Callable[..., list[Insn]]]:
    def register(fn: Callable[..., list[Insn]]) -> Callable[..., list[Insn]]:
        _FORMS.append((re.compile(_re(pattern)), fn))
        return fn

    return register


@_form(r"exit")
def _exit(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    return [Insn(Cls.JMP | JmpOp.EXIT)]


@_form(r"raw\( code = (" + _NUM + r") , dst = (" + _NUM + r") , src = (" + _NUM + r") , off = ("
       + _NUM + r") , imm = (" + _NUM + r") \)")
def _raw(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    code, dst, src = (_int(g) for g in m.group(1, 2, 3))
    if not 0 <= code <= 0xFF or not 0 <= dst <= 15 or not 0 <= src <= 15:
        raise _Bad("raw code must fit 8 bits and dst/src 4 bits")
    return [Insn(code, dst, src, _s16(m.group(4)), _s32(m.group(5)))]


@_form(r"(goto|gotol|may_goto)~(\S+)")
def _goto(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    kind, rel = m.group(1), ctx.rel(m.group(2))
    if kind == "gotol":
        return [Insn(Cls.JMP32 | JmpOp.JA, imm=_s32(rel, "jump offset"))]
    off = _s16(str(rel), "jump offset")
    return [Insn(Cls.JMP | (JmpOp.JA if kind == "goto" else JCOND), off=off)]


@_form(r"call~kfunc#(" + _NUM + r")(?:\[ btf : (" + _NUM + r") \])?")
def _kfunc(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    off = _s16(m.group(2), "kfunc BTF slot") if m.group(2) else 0
    return [Insn(Cls.JMP | JmpOp.CALL, src=PseudoCall.KFUNC, off=off, imm=_s32(m.group(1)))]


@_form(r"call~kernel-function#(" + _NUM + r")")
def _kfunc_bpftool(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    return [Insn(Cls.JMP | JmpOp.CALL, src=PseudoCall.KFUNC, imm=_s32(m.group(1)))]


@_form(r"call~pc ([+-] ?(?:0[xX][0-9a-fA-F]+|\d+))(?:#\S*)?")
def _call_pc(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    return [Insn(Cls.JMP | JmpOp.CALL, src=PseudoCall.CALL, imm=_s32(m.group(1), "call offset"))]


@_form(r"call~([\w.$-]+)(?:#(" + _NUM + r"))?")
def _call_named(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    name, num = m.group(1), m.group(2)
    if num is None and re.fullmatch(_NUM, name):
        raise _Bad("a call names a helper (bpf_x or bpf_x#N), kfunc#N, pc+N or a label")
    if num is not None:  # bpftool: the number after '#' is the helper id; the name is a hint
        return [Insn(Cls.JMP | JmpOp.CALL, imm=_s32(num, "helper id"))]
    if name in _HELPERS:
        return [Insn(Cls.JMP | JmpOp.CALL, imm=_HELPERS[name])]
    if ctx.labels is None or name in ctx.labels:
        return [Insn(Cls.JMP | JmpOp.CALL, src=PseudoCall.CALL, imm=_s32(ctx.rel(name), "call offset"))]
    raise _Bad(f"unknown helper or label {name!r}")


@_form(r"if~" + _REG + r"~(s?[<>=!&|^%*/+-]+)~(?:" + _REG + r"|(" + _NUM + r"))~goto~(\S+)")
def _cond(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    w, dst, op = m.group(1), _regno(m.group(2)), m.group(3)
    if op not in _JMP_OPS:
        raise _Bad(f"unknown comparison {op!r}")
    cls = Cls.JMP32 if w == "w" else Cls.JMP
    off = _s16(str(ctx.rel(m.group(7))), "jump offset")
    code = cls | _JMP_OPS[op]
    if m.group(4):
        _same_width(w, m.group(4))
        return [Insn(code | Src.X, dst, _regno(m.group(5)), off)]
    return [Insn(code, dst, 0, off, _s32(m.group(6)))]


_ADDR = r"\( (u8|u16|u32|u64) \* \) \( r(\d+) (" + _NUM + r") \)"  # (u64 *)(r1 +0)


def _stx_atomic(size_name: str, dst: str, off: str, src: int, imm: int) -> list[Insn]:
    size = _SIZES[size_name]
    return [Insn(Cls.STX | size | Mode.ATOMIC, _regno(dst), src, _s16(off), imm)]


@_form(r"lock~\*" + _ADDR + r" ([+|&^]=) " + _R)
def _lock(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    return _stx_atomic(m.group(1), m.group(2), m.group(3), _regno(m.group(5)), _RMW_OPS[m.group(4)])


@_form(_R + r" = atomic(64)?_(fetch_(?:add|or|and|xor)|xchg) \( " + _ADDR + r" , " + _R + r" \)")
def _fetch(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    out, bits, what, size_name = m.group(1), m.group(2), m.group(3), m.group(4)
    if out != m.group(7):
        raise _Bad("the result register of an atomic fetch/xchg is its source register")
    _check_atomic_size(bits, size_name)
    imm = ATOMIC_XCHG if what == "xchg" else _RMW_NAMES[what[6:]] | ATOMIC_FETCH
    return _stx_atomic(size_name, m.group(5), m.group(6), _regno(out), imm)


@_form(r"r0 = atomic(64)?_cmpxchg \( " + _ADDR + r" , r0 , " + _R + r" \)")
def _cmpxchg(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    _check_atomic_size(m.group(1), m.group(2))
    return _stx_atomic(m.group(2), m.group(3), m.group(4), _regno(m.group(5)), ATOMIC_CMPXCHG)


def _check_atomic_size(bits: str | None, size_name: str) -> None:
    if size_name != ("u64" if bits else "u32"):
        raise _Bad(f"atomic{bits or ''} does not operate on {size_name}")


@_form(_R + r" = load_acquire \( " + _ADDR + r" \)")
def _load_acq(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    size = _SIZES[m.group(2)]
    code = Cls.STX | size | Mode.ATOMIC
    return [Insn(code, _regno(m.group(1)), _regno(m.group(3)), _s16(m.group(4)), ATOMIC_LOAD_ACQ)]


@_form(r"store_release \( " + _ADDR + r" , " + _R + r" \)")
def _store_rel(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    return _stx_atomic(m.group(1), m.group(2), m.group(3), _regno(m.group(4)), ATOMIC_STORE_REL)


@_form(r"\*" + _ADDR + r" = (?:" + _R + r"|(" + _NUM + r"))")
def _store(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    size, dst, off = _SIZES[m.group(1)], _regno(m.group(2)), _s16(m.group(3))
    if m.group(4) is not None:
        return [Insn(Cls.STX | size | Mode.MEM, dst, _regno(m.group(4)), off)]
    return [Insn(Cls.ST | size | Mode.MEM, dst, 0, off, _s32(m.group(5)))]


@_form(_R + r" = \* \( (u8|u16|u32|u64|s8|s16|s32) \* \) \( r(\d+) (" + _NUM + r") \)")
def _load(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    name = m.group(2)
    mode, size = (Mode.MEM, _SIZES[name]) if name in _SIZES else (Mode.MEMSX, _SX_SIZES[name])
    return [Insn(Cls.LDX | size | mode, _regno(m.group(1)), _regno(m.group(3)), _s16(m.group(4)))]


@_form(r"r0 = \* \( (u8|u16|u32) \* \) skb \[ (?:r(\d+) \+ )?(" + _NUM + r") \]")
def _ld_skb(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    size = _SIZES[m.group(1)]
    if m.group(2) is None:
        return [Insn(Cls.LD | size | Mode.ABS, imm=_s32(m.group(3)))]
    return [Insn(Cls.LD | size | Mode.IND, src=_regno(m.group(2)), imm=_s32(m.group(3)))]


@_form(_R + r" = (bswap|be|le)(16|32|64)~" + _R)
def _endian(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    if m.group(1) != m.group(4):
        raise _Bad("a byte-swap writes the register it reads")
    kind, dst = m.group(2), _regno(m.group(1))
    code = {"bswap": Cls.ALU64 | AluOp.END, "le": Cls.ALU | AluOp.END, "be": Cls.ALU | AluOp.END | Src.X}
    return [Insn(code[kind], dst, imm=int(m.group(3)))]


@_form(_R + r" = addr_space_cast \( " + _R + r" , (" + _NUM + r") , (" + _NUM + r") \)")
def _addr_space_cast(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    imm = (_u16(m.group(3), "address space") << 16) | _u16(m.group(4), "address space")
    code = Cls.ALU64 | AluOp.MOV | Src.X
    return [Insn(code, _regno(m.group(1)), _regno(m.group(2)), ADDR_SPACE_CAST_OFF, _s32(imm))]


@_form(_R + r" = (.*?)(~ll)?")
def _lddw(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    """The 64-bit load forms.

    A number with ``ll`` is a lddw. Without ``ll``, bpftool's rule decides: it prints a
    ``mov`` immediate in decimal and a lddw value in hex, so ``r1 = 0x10`` is a lddw and
    ``r1 = 16`` a ``mov``.
    """
    dst, value, ll = _regno(m.group(1)), m.group(2).strip(), m.group(3)
    if re.fullmatch(_NUM, value) and (ll or re.fullmatch(r"[+-]?\s*0[xX][0-9a-fA-F]+", value)):
        n = _int(value)
        if not -(1 << 63) <= n < (1 << 64):
            raise _Bad(f"value {n} does not fit 64 bits")
        return list(lddw(dst, n))
    if v := re.fullmatch(_re(r"map \[ (fd|id) : (" + _NUM + r") \]"), value):
        return _pair(dst, PseudoSrc.MAP_FD, v.group(2), "0")
    if v := re.fullmatch(_re(r"map \[ (fd|id) : (" + _NUM + r") \] \[ 0 \] \+ (" + _NUM + ")"), value
    ):
        return _pair(dst, PseudoSrc.MAP_VALUE, v.group(2), v.group(3))
    if v := re.fullmatch(_re(r"map \[ idx : (" + _NUM + r") \]"), value):
        return _pair(dst, PseudoSrc.MAP_IDX, v.group(1), "0")
    if v := re.fullmatch(_re(r"map \[ idx : (" + _NUM + r") \] (?:\[ 0 \])? \+ (" + _NUM + ")"), value
    ):
        return _pair(dst, PseudoSrc.MAP_IDX_VALUE, v.group(1), v.group(2))
    if v := re.fullmatch(_re(r"btf_id \[ (" + _NUM + r") \] (?:\[ btf : (" + _NUM + r") \])?"), value
    ):
        return _pair(dst, PseudoSrc.BTF_ID, v.group(1), v.group(2) or "0")
    if v := re.fullmatch(_re(r"(?:func \[ (\S+?) \]|subprog \[ (" + _NUM + r") \])"), value):
        rel = ctx.rel(v.group(1)) if v.group(1) else _int(v.group(2))
        return _pair(dst, PseudoSrc.FUNC, str(rel), "0")
    raise _NoForm


def _pair(dst: int, src: PseudoSrc, lo: str, hi: str) -> list[Insn]:
    return [Insn(LDDW, dst, src, 0, _s32(lo)), Insn(0, imm=_s32(hi))]


class _NoForm(Exception):
    """A builder's pattern matched loosely but the text is not its form: try the next."""


@_form(_REG + r" = -" + _REG)
def _neg(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    w = _same_width(m.group(1), m.group(3))
    if m.group(2) != m.group(4):
        raise _Bad("neg writes the register it reads")
    return [Insn((Cls.ALU if w == "w" else Cls.ALU64) | AluOp.NEG, _regno(m.group(2)))]


@_form(_REG + r" = \( s(8|16|32) \) " + _REG)
def _movsx(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    w = _same_width(m.group(1), m.group(4))
    cls = Cls.ALU if w == "w" else Cls.ALU64
    return [Insn(cls | AluOp.MOV | Src.X, _regno(m.group(2)), _regno(m.group(5)), int(m.group(3)))]


@_form(_REG + r"~(s?[<>=!&|^%*/+-]*=)~(?:" + _REG + r"|(" + _NUM + r"))")
def _alu(m: re.Match[str], ctx: _Ctx) -> list[Insn]:
    w, dst, text = m.group(1), _regno(m.group(2)), m.group(3)
    cls = Cls.ALU if w == "w" else Cls.ALU64
    if text in _ALU_SIGNED:
        op, off = _ALU_SIGNED[text], 1
    elif text in _ALU_OPS:
        op, off = _ALU_OPS[text], 0
    else:
        raise _Bad(f"unknown operator {text!r}")
    if m.group(4):
        _same_width(w, m.group(4))
        return [Insn(cls | op | Src.X, dst, _regno(m.group(5)), off)]
    return [Insn(cls | op, dst, 0, off, _s32(m.group(6)))]


# --- driver ----------------------------------------------------------------------------

_PREFIX = re.compile(r"\s*(?:\d+\s*:)?\s*(?:\(([0-9a-fA-F]{2})\))?\s*")
_LABEL_LINE = re.compile(r"(" + _LABEL + r")\s*:")


def _parse(text: str, ctx: _Ctx) -> list[Insn]:
    for pattern, build in _FORMS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        try:
            return build(m, ctx)
        except _NoForm:
            continue
    raise _Bad("not an instruction")


def _lines(text: str | Iterable[str]) -> list[str]:
    return text.splitlines() if isinstance(text, str) else [line for chunk in text for line in chunk.splitlines() or [""]]


def assemble(text: str | Iterable[str]) -> list[Insn]:
    """Instruction slots (a lddw gives two) from text; raises `AsmError` on any bad line."""
    items: list[tuple[int, str, str | None, str | None]] = []  # lineno, raw line, body, opcode
    for lineno, line in enumerate(_lines(text), 1):
        body = line.split(";", 1)[0]
        if not body.strip():
            continue
        if m := _LABEL_LINE.fullmatch(body.strip()):
            items.append((lineno, line, None, m.group(1)))
            continue
        prefix = _PREFIX.match(body)
        assert prefix is not None  # every part of it is optional
        items.append((lineno, line, body[prefix.end():].strip(), prefix.group(1)))

    # Pass 1: slot index of every line and label (label references do not change sizes).
    labels: dict[str, int] = {}
    pc = 0
    for lineno, line, body, extra in items:
        if body is None:
            assert extra is not None
            if extra in labels:
                raise AsmError(lineno, line, f"label {extra!r} defined twice")
            labels[extra] = pc
            continue
        try:
            pc += len(_parse(body, _Ctx(pc, None)))
        except _Bad as e:
            raise AsmError(lineno, line, str(e)) from None

    # Pass 2: the instructions, with labels resolved.
    out: list[Insn] = []
    for lineno, line, body, opcode in items:
        if body is None:
            continue
        try:
            insns = _parse(body, _Ctx(len(out), labels))
        except _Bad as e:
            raise AsmError(lineno, line, str(e)) from None
        if opcode is not None and int(opcode, 16) != insns[0].code:
            raise AsmError(lineno, line, f"opcode ({opcode}) does not match the instruction ({insns[0].code:02x})")
        out.extend(insns)
    return out
