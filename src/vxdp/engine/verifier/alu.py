"""ALU and ALU64 instructions on abstract registers: encoding rules, scalar arithmetic, pointer arithmetic.

The rules are the kernel's (``check_alu_op``, ``adjust_ptr_min_max_vals``):
reserved fields must be zero, ``r10`` is read-only, a constant division by
zero and a constant shift past the width are refused, and a pointer takes only
64-bit ``+=``/``-=`` of a scalar (and ``ptr - ptr`` of the same region gives a
scalar); packet_end, map pointers and maybe-null map values take none at all.
"""

from __future__ import annotations

from ...bpf.disasm import ALU_OP_TEXT
from ...bpf.isa import Cls, Insn
from .access import Refuse, add_offset
from .scalar import Scalar, alu32, alu64, endian, neg
from .state import NOT_INIT, UNKNOWN, Reg, RegType, State, scalar
from .tnum import M32

NO_ARITH = {RegType.PACKET_END: "pkt_end", RegType.MAP_PTR: "map_ptr",
            RegType.MAP_VALUE_OR_NULL: "map_value_or_null", RegType.FUNC: "func"}


def read(st: State, regno: int) -> Reg:
    r = st.regs[regno]
    if r.type is RegType.NOT_INIT:
        raise Refuse(f"R{regno} !read_ok: register read before it was written")
    return r


def check_encoding(insn: Insn) -> None:
    op, wide, is_x = insn.code & 0xF0, insn.cls is Cls.ALU64, bool(insn.code & 0x08)
    if op > 0xD0:
        raise Refuse(f"unknown opcode {insn.code:02x}")
    if op == 0xD0:  # le / be / bswap
        if wide and is_x:
            raise Refuse(f"unknown opcode {insn.code:02x}")
        if insn.src or insn.off or insn.imm not in (16, 32, 64):
            raise Refuse("BPF_END uses reserved fields")
        return
    if op == 0x80:
        if is_x or insn.src or insn.off or insn.imm:
            raise Refuse("BPF_NEG uses reserved fields")
        return
    if op == 0xB0:
        if is_x:
            allowed = (0, 8, 16, 32) if wide else (0, 8, 16)
            if wide and insn.off == 1:
                raise Refuse("addr_space_cast insn can only be used in a program that has an associated arena")
            if insn.imm or insn.off not in allowed:
                raise Refuse("BPF_MOV uses reserved fields")
        elif insn.src or insn.off:
            raise Refuse("BPF_MOV uses reserved fields")
        return
    if (insn.off not in ((0, 1) if op in (0x30, 0x90) else (0,))) or (is_x and insn.imm) or (not is_x and insn.src):
        raise Refuse("BPF_ALU uses reserved fields")
    if not is_x and op in (0x30, 0x90) and insn.imm == 0:
        raise Refuse("div by zero")
    if not is_x and op in (0x60, 0x70, 0xC0) and not 0 <= insn.imm < (64 if wide else 32):
        raise Refuse(f"invalid shift {insn.imm}")


def step(st: State, insn: Insn, next_id) -> None:
    """Apply one ALU instruction to ``st`` (the current frame's registers)."""
    check_encoding(insn)
    op, wide, is_x = insn.code & 0xF0, insn.cls is Cls.ALU64, bool(insn.code & 0x08)
    if insn.dst == 10:
        raise Refuse("frame pointer is read only")
    regs = st.regs
    if op == 0xB0:
        if is_x:
            src = read(st, insn.src)
            if insn.off:
                if src.is_pointer:
                    regs[insn.dst] = scalar(Scalar.unknown().sign_extend(insn.off) if wide else Scalar.urange(0, M32))
                    return
                s = src.scalar.sign_extend(insn.off)
                regs[insn.dst] = scalar(s if wide else s.truncate(4))
            elif wide:
                regs[insn.dst] = src
            else:
                regs[insn.dst] = scalar(src.scalar.truncate(4) if not src.is_pointer else Scalar.urange(0, M32))
        else:
            regs[insn.dst] = scalar(Scalar.const(insn.imm if wide else insn.imm & M32))
        return
    dst = read(st, insn.dst)
    if op in (0xD0, 0x80) and dst.is_pointer:
        regs[insn.dst] = UNKNOWN  # privileged: a swapped or negated address is just a number
        return
    if op == 0xD0:
        regs[insn.dst] = scalar(endian(dst.scalar, insn.imm, wide or bool(insn.code & 0x08)))
        return
    if op == 0x80:
        regs[insn.dst] = scalar(neg(dst.scalar, wide))
        return
    src = read(st, insn.src) if is_x else scalar(Scalar.const(insn.imm))
    if dst.is_pointer or src.is_pointer:
        regs[insn.dst] = _pointer_op(insn, op, wide, dst, src, next_id)
        return
    fn = alu64 if wide else alu32
    regs[insn.dst] = scalar(fn(op, dst.scalar, src.scalar, insn.off == 1))


def _pointer_op(insn: Insn, op: int, wide: bool, dst: Reg, src: Reg, next_id) -> Reg:
    text = ALU_OP_TEXT[op]
    ptr_no = insn.dst if dst.is_pointer else insn.src
    if not wide:
        if op == 0x10:
            return UNKNOWN  # privileged: a 32-bit difference involving an address is a number
        raise Refuse(f"R{ptr_no} 32-bit pointer arithmetic prohibited")
    if dst.is_pointer and src.is_pointer:
        if op == 0x10:
            return scalar(Scalar.unknown())  # privileged: the difference of two pointers is a number
        raise Refuse(f"R{insn.dst} pointer {text} pointer prohibited")
    if op in (0x40, 0x50, 0xA0):
        raise Refuse(f"R{ptr_no} bitwise operator {text} on pointer prohibited")
    if op not in (0x00, 0x10):
        raise Refuse(f"R{ptr_no} pointer arithmetic with {text} operator prohibited")
    ptr, off = (dst, src) if dst.is_pointer else (src, dst)
    if not dst.is_pointer and op == 0x10:
        raise Refuse(f"R{insn.dst} tried to subtract pointer from scalar")
    if op == 0x10 and ptr.type is RegType.STACK:
        raise Refuse(f"R{insn.dst} subtraction from stack pointer prohibited (add a negative number instead)")
    if ptr.type in NO_ARITH:
        raise Refuse(f"R{ptr_no} pointer arithmetic on {NO_ARITH[ptr.type]} prohibited")
    return add_offset(ptr, off.scalar, ptr_no, op == 0x10, next_id)


def clobber_caller_saved(st: State) -> None:
    for r in range(1, 6):
        st.regs[r] = NOT_INIT
