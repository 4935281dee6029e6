"""The ISA corpus: one small program per instruction and operands, written in `vxdp.bpf.asm` text.

Every case is the same frame around a body:

    r8 = map[fd:{args}][0]+0 ll      ; the operands, as the map's initial value
    <body>                           ; computes its outputs into registers
    r9 = map[fd:{out}][0]+0 ll
    *(u64 *)(r9 +0) = <output 0>     ; all 64 bits of each output register
    ...
    r0 = 2
    exit
    <tail>                           ; subprograms, if any

Operands come from a writable map (not ``lddw`` constants) so that the kernel's verifier
cannot fold them: the kernel computes every result at run time, in its JIT, which is the
oracle. A body may use r0-r8 (r8 holds the operands' pointer until the body reuses it)
and never r9. Immediates are, of course, in the instruction.

``{ro}`` names a frozen read-only global-data map (``.rodata`` style) when a case gives
``ro``; ``{jmp}`` a prog_array whose slot ``i`` holds ``tail_progs[i]``, programs that
see the same placeholders. A case with ``btf`` loads in the kernel with func_info (a
minimal BTF): the kernel wants it for ``bpf_tail_call`` inside a subprogram and for
function addresses (``lddw`` src FUNC, the ``bpf_loop`` callback). A case's name is its
test id: the instruction and operands.

`REFUSED` lists, with the reason the verifier's log gives, what the kernel (6.18) refuses
for a privileged XDP program: constant division by zero, constant shifts past the width,
the legacy packet loads (XDP has no skb), 64-bit sign-extending loads, sign-extending and
store access to the context, 8- and 16-bit read-modify-write atomics and atomics on the
packet, a 32-bit ``movsx`` from 32 bits, ``bswap`` with the source bit, an arena cast
without an arena, misaligned stack access, stores to a read-only map, unreachable code,
an endless loop, and ``bpf_tail_call`` in a subprogram of a program without BTF.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from vxdp.bpf.disasm import ALU_OP_TEXT, ALU_SIGNED_TEXT, JMP_OP_TEXT
from vxdp.bpf.isa import AluOp, JmpOp

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
I64_MIN = 1 << 63
I64_MAX = I64_MIN - 1
PACKET = bytes(range(0x70, 0xB0))  # 64 bytes whose top bits change at 0x80 (sign-extension cases)


@dataclass(frozen=True)
class Case:
    """One program: what it computes, from which operands, and which registers it reports."""

    name: str
    body: str
    outputs: tuple[str, ...] = ("r0",)
    args: tuple[int, ...] = ()
    tail: str = ""
    ro: bytes | None = None
    tail_progs: tuple[str, ...] = ()
    out_slots: int = 0  # out map words when tail programs write more than ``outputs``
    expect: tuple[int, ...] | None = None  # values worked out by hand (the kernel must agree)
    btf: bool = False  # load with func_info (a minimal BTF) in the kernel
    action: int = 2  # the XDP action: the frame's, unless a tail call leaves it

    @property
    def out_words(self) -> int:
        return max(1, len(self.outputs), self.out_slots)

    @property
    def args_bytes(self) -> bytes:
        return b"".join((a & M64).to_bytes(8, "little") for a in self.args) or bytes(8)

    def text(self) -> str:
        lines = ["r8 = map[fd:{args}][0]+0 ll", self.body, "r9 = map[fd:{out}][0]+0 ll"]
        lines += [f"*(u64 *)(r9 +{8 * i}) = {reg}" for i, reg in enumerate(self.outputs)]
        lines += ["r0 = 2", "exit", self.tail]
        return "\n".join(lines)


def _h(v: int) -> str:
    return f"{v & M64:#x}"


def _load(*regs: int) -> str:
    """Load operand i of the case into register ``regs[i]``."""
    return "\n".join(f"r{r} = *(u64 *)(r8 +{8 * i})" for i, r in enumerate(regs))


# --- ALU and ALU64 ----------------------------------------------------------------------------

GENERIC = [(0x0123456789ABCDEF, 0xFEDCBA9876543210), (M64, 1), (I64_MAX, 1), (0xFFFFFFFF, 1),
           (0x80000000, 0x80000000), (0, M64), (I64_MIN, M64), (0xFFFFFFFF80000000, 0x7FFFFFFF),
           (0xFFFFFFFF, 0xFFFFFFFF), (1 << 32, 1 << 32)]
DIVISION = [(123, 0), (0x1_0000_0005, 1 << 32), (M64, 2), (100, 7), (I64_MIN, M64), (I64_MIN, 0),
            (0xFFFFFFFF80000000, 0xFFFFFFFF), (0x80000000, 0xFFFFFFFF), (-7, 2), (7, -2), (-7, -2),
            (0x0123456789ABCDEF, 1 << 32), (0, 0), (0xFFFFFFF9, 0), (0xAAAAAAAA12345678, 0xFFFFFFFF00000000),
            (0x0123456789ABCDEF, 0xFEDCBA9876543210), (M64, M64)]
SHIFTED = [0x8000000080000001, 0x0123456789ABCDEF]
COUNTS = [0, 1, 31, 32, 33, 63, 64, 65, 0xFF, M64]
IMMS = [0, 1, -1, 0x7FFFFFFF, -0x80000000, 7, -7]
DIV_IMMS = [1, -1, 2, -2, 7, -7, 0x7FFFFFFF, -0x80000000]
DIV_DSTS = [I64_MIN, 0xFFFFFFFF80000000, -7, 0x0123456789ABCDEF]
BINOPS = [AluOp.ADD, AluOp.SUB, AluOp.MUL, AluOp.OR, AluOp.AND, AluOp.XOR, AluOp.MOV]
SHIFTS = [AluOp.LSH, AluOp.RSH, AluOp.ARSH]


def _op_name(op: AluOp, signed: bool) -> str:
    return ("s" if signed else "") + op.name.lower()


def _alu_reg(op: AluOp, wide: bool, signed: bool, a: int, b: int) -> Case:
    w = "r" if wide else "w"
    text = (ALU_SIGNED_TEXT if signed else ALU_OP_TEXT)[op]
    name = f"alu{64 if wide else 32}.{_op_name(op, signed)}.reg({_h(a)},{_h(b)})"
    return Case(name, f"{_load(0, 1)}\n{w}0 {text} {w}1", args=(a, b))


def _alu_imm(op: AluOp, wide: bool, signed: bool, a: int, imm: int) -> Case:
    w = "r" if wide else "w"
    text = (ALU_SIGNED_TEXT if signed else ALU_OP_TEXT)[op]
    name = f"alu{64 if wide else 32}.{_op_name(op, signed)}.imm({_h(a)},{imm})"
    return Case(name, f"{_load(0)}\n{w}0 {text} {imm}", args=(a,))


def alu_cases() -> Iterator[Case]:
    for wide in (True, False):
        for op in BINOPS:
            for a, b in GENERIC:
                yield _alu_reg(op, wide, False, a, b)
            for a, imm in itertools.product([0x0123456789ABCDEF, 0xFFFFFFFF80000000], IMMS):
                if op != AluOp.MOV or a == 0x0123456789ABCDEF:
                    yield _alu_imm(op, wide, False, a, imm)
        for op, signed in itertools.product([AluOp.DIV, AluOp.MOD], (False, True)):
            for a, b in DIVISION:
                yield _alu_reg(op, wide, signed, a, b)
            for a, imm in itertools.product(DIV_DSTS, DIV_IMMS):
                yield _alu_imm(op, wide, signed, a, imm)
        for op in SHIFTS:
            for a, n in itertools.product(SHIFTED, COUNTS):
                yield _alu_reg(op, wide, False, a, n)
            for a, n in itertools.product(SHIFTED, [0, 1, 16, 31, 32, 63] if wide else [0, 1, 16, 31]):
                yield _alu_imm(op, wide, False, a, n)
        for a in [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, I64_MAX, I64_MIN, M64,
                  0xFFFFFFFF80000000, 0x0123456789ABCDEF]:
            w = "r" if wide else "w"
            yield Case(f"alu{64 if wide else 32}.neg({_h(a)})", f"{_load(0)}\n{w}0 = -{w}0", args=(a,))
    for kind, bits, a in itertools.product(["le", "be", "bswap"], [16, 32, 64],
                                           [0x0123456789ABCDEF, 0x8081828384858687]):
        cls = "alu64" if kind == "bswap" else "alu32"
        yield Case(f"{cls}.end.{kind}{bits}({_h(a)})", f"{_load(0)}\nr0 = {kind}{bits} r0", args=(a,))
    for wide, bits in [(True, 8), (True, 16), (True, 32), (False, 8), (False, 16)]:
        w = "r" if wide else "w"
        for a in [0x7F, 0x80, 0x7FFF, 0x8000, 0x7FFFFFFF, 0x80000000, 0x123456789ABCDE80, 0xFEDCBA987654F17F]:
            yield Case(f"alu{64 if wide else 32}.movsx{bits}({_h(a)})", f"{_load(1)}\nr0 = -1\n{w}0 = (s{bits}){w}1",
                       args=(a,))
    for a in [0, M64, I64_MIN, 0xFFFFFFFF, 0xFFFFFFFF00000000, 0x0123456789ABCDEF]:
        yield Case(f"ld.imm64({_h(a)})", f"r0 = {_h(a)} ll")
    # the register a 32-bit operation writes is zero-extended; the one it reads is not changed
    yield Case("alu32.add.reg(src kept)", f"{_load(0, 1)}\nw0 += w1", ("r0", "r1"), (M64, 0xFFFFFFFF00000001))
    yield Case("alu32.mov.reg(zero-extends)", f"{_load(1)}\nr0 = -1\nw0 = w1", args=(0x8000000080000000,),
               expect=(0x80000000,))
    # an operation whose source is its destination (x - x, x / x with x == 0, ...)
    for wide, (op, signed), a in itertools.product(
            (True, False), [(o, False) for o in (*BINOPS, *SHIFTS, AluOp.DIV, AluOp.MOD)]
            + [(AluOp.DIV, True), (AluOp.MOD, True)], [0, 0x8000000080000000, 0x0123456789ABCDEF]):
        w = "r" if wide else "w"
        text = (ALU_SIGNED_TEXT if signed else ALU_OP_TEXT)[op]
        yield Case(f"alu{64 if wide else 32}.{_op_name(op, signed)}.reg(dst is src, {_h(a)})",
                   f"{_load(0)}\n{w}0 {text} {w}0", args=(a,))
    yield Case("alu64.mov.imm(sign-extends)", "r0 = -2", expect=(M64 - 1,))
    yield Case("alu64.and.imm(0xffffffff sign-extends)", f"{_load(0)}\nr0 &= 0xffffffff", args=(0x0123456789ABCDEF,),
               expect=(0x0123456789ABCDEF,))


# --- JMP and JMP32 ----------------------------------------------------------------------------

JMP_PAIRS = [(0, 0), (0, 1), (1, 0), (M64, 0), (0, M64), (I64_MAX, I64_MIN), (I64_MIN, I64_MAX),
             (0x80000000, 0x7FFFFFFF), (1 << 32, 0), (0xFFFFFFFF, 0x1FFFFFFFF), (0x0123456789ABCDEF,) * 2,
             (M64, M64 - 1)]
JMP_IMMS = [(0, 0), (M64, -1), (0xFFFFFFFF, -1), (0x7FFFFFFF, 0x7FFFFFFF), (0x80000000, -0x80000000),
            (1, -1), (M64, 1), (1 << 32, 0), (0x7FFFFFFF, -0x80000000), (0xFFFFFFFF80000000, -0x80000000)]
CONDS = [JmpOp.JEQ, JmpOp.JNE, JmpOp.JGT, JmpOp.JGE, JmpOp.JLT, JmpOp.JLE, JmpOp.JSET,
         JmpOp.JSGT, JmpOp.JSGE, JmpOp.JSLT, JmpOp.JSLE]


def jmp_cases() -> Iterator[Case]:
    for op, wide in itertools.product(CONDS, (True, False)):
        w, cls, text = ("r" if wide else "w"), ("jmp" if wide else "jmp32"), JMP_OP_TEXT[op]
        for a, b in JMP_PAIRS:
            yield Case(f"{cls}.{op.name.lower()}.reg({_h(a)},{_h(b)})",
                       f"{_load(1, 2)}\nr0 = 1\nif {w}1 {text} {w}2 goto +1\nr0 = 0", args=(a, b))
        for a, imm in JMP_IMMS:
            yield Case(f"{cls}.{op.name.lower()}.imm({_h(a)},{imm})",
                       f"{_load(1)}\nr0 = 1\nif {w}1 {text} {imm} goto +1\nr0 = 0", args=(a,))
    # the skipped instruction is reachable another way: the kernel refuses unreachable code
    for ja in ("goto", "gotol"):
        cls = "jmp" if ja == "goto" else "jmp32"
        yield Case(f"{cls}.{ja}(+1)", f"{_load(1)}\nr0 = 1\nif r1 == 0 goto l\n{ja} +1\nl:\nr0 += 10\nr0 += 100",
                   args=(1,), expect=(101,))
    yield Case("jmp.ja(-n, loop)", "r1 = 5\nr0 = 0\nagain:\nr0 += 3\nr1 += -1\nif r1 == 0 goto +1\n"
               "goto again", expect=(15,))
    yield Case("jmp32.gotol(-n, loop)", "r1 = 4\nr0 = 0\nagain:\nr0 += 5\nr1 += -1\nif w1 == 0 goto +1\n"
               "gotol again", expect=(20,))
    # a jump beyond the 16-bit offset of goto; the block it skips is reachable from the branch before it
    block = "\n".join(["r0 += 1"] * 33000)
    for a in (0, 1):
        yield Case(f"jmp32.gotol(+33000, r1={a})", f"{_load(1)}\nr0 = 0\nif r1 == 0 goto +1\ngotol end\n"
                   f"{block}\nend:", args=(a,), expect=(33000 if a == 0 else 0,))
    yield Case("jmp.may_goto(falls through)", "r0 = 1\nmay_goto +1\nr0 = 7", expect=(7,))
    yield Case("jmp.may_goto(bounded loop)", "r0 = 0\nagain:\nmay_goto done\nr0 += 1\nif r0 < 10 goto again\n"
               "done:\nr0 += 100", expect=(110,))


# --- loads and stores -------------------------------------------------------------------------

SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
STACK_INIT = 0x8081828384858687
STORED = 0xFEDCBA9876543210


def mem_cases() -> Iterator[Case]:
    for sz, n in SIZES.items():
        for k in range(0, 8, n):
            where = f"(r10 {k - 8:+d})"
            yield Case(f"stx.{sz}.stack({k - 8:+d})",
                       f"{_load(1, 2)}\n*(u64 *)(r10 -8) = r1\n*({sz} *){where} = r2\nr0 = *(u64 *)(r10 -8)\n"
                       f"r3 = *({sz} *){where}", ("r0", "r3"), (STACK_INIT, STORED))
            yield Case(f"ldx.{sz}.stack({k - 8:+d})",
                       f"{_load(1)}\n*(u64 *)(r10 -8) = r1\nr0 = *({sz} *){where}", args=(STACK_INIT,))
            if n < 8:
                s = "s" + sz[1:]
                yield Case(f"ldsx.{s}.stack({k - 8:+d})",
                           f"{_load(1)}\n*(u64 *)(r10 -8) = r1\nr0 = -1\nr0 = *({s} *){where}",
                           args=(STACK_INIT,))
        for imm in [-2, 0x7FFFFFFF, -0x80000000, 0x1234, 0x80]:
            yield Case(f"st.{sz}.stack(imm {imm})",
                       f"{_load(1)}\n*(u64 *)(r10 -8) = r1\n*({sz} *)(r10 -8) = {imm}\nr0 = *(u64 *)(r10 -8)",
                       args=(STACK_INIT,))
        # through a map value pointer (lddw MAP_VALUE): loads, sign-extending loads, stores
        yield Case(f"ldx.{sz}.map_value(+{8 - n})", f"r0 = *({sz} *)(r8 +{8 - n})", args=(STACK_INIT,))
        if n < 8:
            s = "s" + sz[1:]
            yield Case(f"ldsx.{s}.map_value(+{8 - n})", f"r0 = *({s} *)(r8 +{8 - n})", args=(STACK_INIT,))
            yield Case(f"ldsx.{s}.map_value(positive)", f"r0 = *({s} *)(r8 +0)", args=(0x7F7F7F7F7F7F7F7F,))
        yield Case(f"stx.{sz}.map_value(+8)", f"{_load(1)}\n*({sz} *)(r8 +8) = r1\nr0 = *(u64 *)(r8 +8)",
                   args=(STORED, STACK_INIT))
        yield Case(f"st.{sz}.map_value(imm -3)", f"*({sz} *)(r8 +0) = -3\nr0 = *(u64 *)(r8 +0)",
                   args=(STACK_INIT,))
        # from the packet, after the bounds check the verifier needs
        for kind in ("u", "s") if n < 8 else ("u",):
            name = kind + sz[1:]
            yield Case(f"{'ldsx' if kind == 's' else 'ldx'}.{name}.packet(+14)",
                       "r2 = *(u32 *)(r1 +0)\nr3 = *(u32 *)(r1 +4)\nr4 = r2\nr4 += 32\nr0 = 0\n"
                       f"if r4 > r3 goto +1\nr0 = *({name} *)(r2 +14)")
    yield Case("ldx.u32.stack(-512, bottom)",
               f"{_load(1)}\n*(u64 *)(r10 -512) = r1\nr0 = *(u32 *)(r10 -508)", args=(STACK_INIT,))
    for sz, n in SIZES.items():
        yield Case(f"stx.{sz}.packet(+13)", "r2 = *(u32 *)(r1 +0)\nr3 = *(u32 *)(r1 +4)\nr4 = r2\nr4 += 32\n"
                   f"{_load(5)}\nif r4 > r3 goto +1\n*({sz} *)(r2 +13) = r5\nr0 = 0", args=(STORED,))
        yield Case(f"st.{sz}.packet(+3, imm -2)", "r2 = *(u32 *)(r1 +0)\nr3 = *(u32 *)(r1 +4)\nr4 = r2\n"
                   f"r4 += 32\nif r4 > r3 goto +1\n*({sz} *)(r2 +3) = -2\nr0 = 0")
    for k in (0, 8):
        yield Case(f"ldx.u64.stack(variable offset {k - 16:+d})",
                   f"{_load(1, 2, 3)}\n*(u64 *)(r10 -16) = r2\n*(u64 *)(r10 -8) = r3\nr1 &= 8\nr4 = r10\n"
                   "r4 += -16\nr4 += r1\nr0 = *(u64 *)(r4 +0)", args=(k, 0x1111, 0x2222),
                   expect=(0x2222 if k else 0x1111,))
    yield Case("stx.u64.stack(spill and fill a map value pointer)",
               "*(u64 *)(r10 -8) = r8\nr8 = 0\nr1 = *(u64 *)(r10 -8)\nr0 = *(u64 *)(r1 +8)",
               args=(1, 0x5555AAAA5555AAAA), expect=(0x5555AAAA5555AAAA,))
    yield Case("alu64.add.reg(map value pointer + bounded offset)",
               f"{_load(1)}\nr1 &= 8\nr2 = r8\nr2 += r1\nr0 = *(u64 *)(r2 +0)", args=(8, 0x1234),
               expect=(0x1234,))
    yield Case("alu64.add.imm(stack pointer)", f"{_load(1)}\n*(u64 *)(r10 -24) = r1\nr2 = r10\nr2 += -32\n"
               "r0 = *(u64 *)(r2 +8)", args=(0x0BADCAFE,), expect=(0x0BADCAFE,))
    for off, field in [(12, "ingress_ifindex"), (16, "rx_queue_index")]:
        yield Case(f"ldx.u32.ctx({field})", f"r0 = -1\nr0 = *(u32 *)(r1 +{off})")
    yield Case("ldx.u32.ctx(data - data_meta)", "r2 = *(u32 *)(r1 +8)\nr0 = *(u32 *)(r1 +0)\nr0 -= r2",
               expect=(0,))
    yield Case("ldx.u64.ctx(data_end - data)", "r2 = *(u32 *)(r1 +0)\nr0 = *(u32 *)(r1 +4)\nr0 -= r2",
               expect=(len(PACKET),))


# --- atomics ----------------------------------------------------------------------------------

ATOMIC_PAIRS = [(0x00000000FFFFFFFF, 0x0000000100000001), (0x0123456789ABCDEF, 0xF0F0F0F0F0F0F0F0)]
RMW = {"add": "+=", "or": "|=", "and": "&=", "xor": "^="}


def _atomic_where(mem: str) -> tuple[str, str]:
    """(address text, code that puts operand 0 there); a map slot already holds it."""
    if mem == "stack":
        return "(r10 -8)", "*(u64 *)(r10 -8) = r1\n"
    return "(r8 +0)", ""


def atomic_cases() -> Iterator[Case]:
    for mem, (bits, sz), (a, b) in itertools.product(["stack", "map_value"], [("64", "u64"), ("", "u32")],
                                                     ATOMIC_PAIRS):
        where, init = _atomic_where(mem)
        pre = f"{_load(1, 2)}\n{init}"
        after = "\nr3 = *(u64 *)(r8 +0)" if mem == "map_value" else "\nr3 = *(u64 *)(r10 -8)"
        tag = f"{mem}({_h(a)},{_h(b)})"
        w = bits or "32"
        for name, text in RMW.items():
            yield Case(f"atomic{w}.{name}.{tag}", f"{pre}lock *({sz} *){where} {text} r2{after}", ("r3", "r2"),
                       (a, b))
            yield Case(f"atomic{w}.fetch_{name}.{tag}",
                       f"{pre}r2 = atomic{bits}_fetch_{name}(({sz} *){where}, r2){after}", ("r3", "r2"), (a, b))
        yield Case(f"atomic{w}.xchg.{tag}", f"{pre}r2 = atomic{bits}_xchg(({sz} *){where}, r2){after}",
                   ("r3", "r2"), (a, b))
        # cmpxchg: r0 equal to memory (all of it, or the low half only), and not equal
        for what, expected in [("equal", a), ("low half equal", a ^ 0xFFFF_0000_0000_0000), ("differs", a + 1)]:
            yield Case(f"atomic{w}.cmpxchg.{what}.{tag}",
                       f"{pre}r0 = *(u64 *)(r8 +16)\nr0 = atomic{bits}_cmpxchg(({sz} *){where}, r0, r2){after}",
                       ("r3", "r0"), (a, b, expected))
    # a 32-bit atomic on the upper half of a 64-bit slot
    for mem, where in [("stack", "(r10 -4)"), ("map_value", "(r8 +4)")]:
        init = "*(u64 *)(r10 -8) = r1\n" if mem == "stack" else ""
        after = "r3 = *(u64 *)(r10 -8)" if mem == "stack" else "r3 = *(u64 *)(r8 +0)"
        a, b = 0xFFFFFFFF_FFFFFFFF, 0x1_0000_0002
        yield Case(f"atomic32.fetch_add.{mem}(upper half, {_h(a)},{_h(b)})",
                   f"{_load(1, 2)}\n{init}r2 = atomic_fetch_add((u32 *){where}, r2)\n{after}", ("r3", "r2"),
                   (a, b), expect=(0x00000001_FFFFFFFF, 0xFFFFFFFF))
        yield Case(f"atomic32.cmpxchg.{mem}(upper half)",
                   f"{_load(1, 2, 0)}\n{init}r0 = atomic_cmpxchg((u32 *){where}, r0, r2)\n{after}", ("r3", "r0"),
                   (0x12345678_9ABCDEF0, 0xAAAAAAAA_55555555, 0xFFFFFFFF_12345678),
                   expect=(0x55555555_9ABCDEF0, 0x12345678))
    # the fetched register is the source register, even when it is also the base
    yield Case("atomic64.fetch_add.stack(src is r0)",
               f"{_load(1, 0)}\n*(u64 *)(r10 -8) = r1\nr0 = atomic64_fetch_add((u64 *)(r10 -8), r0)\n"
               "r3 = *(u64 *)(r10 -8)", ("r3", "r0"), (40, 2), expect=(42, 40))
    for sz in SIZES:
        yield Case(f"load_acquire.{sz}.stack", f"{_load(1)}\n*(u64 *)(r10 -8) = r1\nr0 = load_acquire(({sz} *)(r10 -8))",
                   args=(STACK_INIT,))
        yield Case(f"store_release.{sz}.map_value",
                   f"{_load(1, 2)}\nstore_release(({sz} *)(r8 +0), r2)\nr0 = *(u64 *)(r8 +0)", args=(STACK_INIT, STORED))


# --- calls, map and global-data immediates, tail calls ----------------------------------------

CALLEE = "r0 = r1\nr0 *= r2\nr6 = 1000\n*(u64 *)(r10 -8) = r6\nexit"


def call_cases() -> Iterator[Case]:
    yield Case("call.bpf2bpf(args r1 r2, r6 and stack kept)",
               f"{_load(1, 2)}\nr6 = 7\n*(u64 *)(r10 -8) = r6\ncall f\nr1 = *(u64 *)(r10 -8)\nr0 += r6\nr0 += r1",
               tail=f"f:\n{CALLEE}", args=(0x100000001, 3), expect=(0x300000003 + 14,))
    yield Case("call.bpf2bpf(64-bit r0 returned)", f"{_load(1, 2)}\ncall f", tail=f"f:\n{CALLEE}",
               args=(0xFFFFFFFF, 0x100000001))
    yield Case("call.bpf2bpf(callee writes caller stack)",
               f"{_load(2)}\nr1 = 0\n*(u64 *)(r10 -16) = r1\nr1 = r10\nr1 += -16\ncall f\nr0 = *(u64 *)(r10 -16)",
               tail="f:\n*(u64 *)(r1 +0) = r2\nr0 = 0\nexit", args=(0x0123456789ABCDEF,),
               expect=(0x0123456789ABCDEF,))
    nested = "\n".join(f"f{i}:\nr1 += {i}\ncall f{i + 1}\nr0 *= 2\nexit" for i in range(1, 7))
    yield Case("call.bpf2bpf(8 frames deep)", f"{_load(1)}\ncall f1", tail=f"{nested}\nf7:\nr0 = r1\nexit",
               args=(1000,), expect=((1000 + 21) * 64,))
    yield Case("call.bpf2bpf(backward loop in callee)", "r1 = 10\ncall f",
               tail="f:\nr0 = 0\nl:\nr0 += r1\nr1 += -1\nif r1 != 0 goto l\nexit", expect=(55,))
    yield Case("ld.imm64.map_fd(lookup)",
               "r1 = map[fd:{args}] ll\nr2 = 0\n*(u32 *)(r10 -4) = r2\nr2 = r10\nr2 += -4\n"
               "call bpf_map_lookup_elem\nif r0 == 0 goto +1\nr0 = *(u64 *)(r0 +8)",
               args=(1, 0xCAFEF00DDEADBEEF), expect=(0xCAFEF00DDEADBEEF,))
    ro = b"".join(v.to_bytes(8, "little") for v in (0x1111, 0x8877665544332211, 0xFFFFFFFF))
    yield Case("ld.imm64.map_value(rodata +8)", "r1 = map[fd:{ro}][0]+8 ll\nr0 = *(u64 *)(r1 +0)", ro=ro,
               expect=(0x8877665544332211,))
    yield Case("ld.imm64.map_value(rodata +12, s32)", "r1 = map[fd:{ro}][0]+12 ll\nr0 = *(s32 *)(r1 +0)", ro=ro,
               expect=(0xFFFFFFFF88776655,))
    yield Case("ld.imm64.map_value(data +8, store)",
               "r1 = map[fd:{args}][0]+8 ll\nr2 = 77\n*(u64 *)(r1 +0) = r2\nr0 = *(u64 *)(r8 +8)",
               args=(1, 2), expect=(77,))


LOOP_CB = ("cb:\nr6 = 99\nr3 = *(u64 *)(r2 +0)\nr3 += r1\n*(u64 *)(r2 +0) = r3\nr0 = 0\nif r1 < 6 goto +1\n"
           "r0 = 1\nexit")


def loop_cases() -> Iterator[Case]:
    """``lddw`` of a function address (src FUNC) and ``bpf_loop`` calling it: the kernel wants func_info."""
    def body(nr: str, flags: int = 0) -> str:
        return (f"{_load(6)}\n{nr}\nr2 = func[cb] ll\nr3 = 0\n*(u64 *)(r10 -8) = r3\nr3 = r10\nr3 += -8\n"
                f"r4 = {flags}\ncall bpf_loop\nr7 = *(u64 *)(r10 -8)")
    outs = ("r0", "r7", "r6")
    yield Case("ld.imm64.func(bpf_loop, callback stops it)", body("r1 = 10"), outs, (5,), LOOP_CB, btf=True,
               expect=(7, 21, 5))
    yield Case("ld.imm64.func(bpf_loop, runs nr times)", body("r1 = 4"), outs, (5,), LOOP_CB, btf=True,
               expect=(4, 6, 5))
    yield Case("ld.imm64.func(bpf_loop, nr 0)", body("r1 = 0"), outs, (5,), LOOP_CB, btf=True, expect=(0, 0, 5))
    yield Case("ld.imm64.func(bpf_loop, flags 1: -EINVAL)", body("r1 = 4", 1), outs, (5,), LOOP_CB, btf=True,
               expect=(M64 - 21, 0, 5))
    yield Case("ld.imm64.func(bpf_loop, nr past BPF_MAX_LOOPS: -E2BIG)", body("r1 = *(u64 *)(r8 +8)"), outs,
               (5, (1 << 23) + 1), LOOP_CB, btf=True, expect=(M32 - 6, 0, 5))  # inlined: a 32-bit -E2BIG


TAIL_SET = "r2 = map[fd:{jmp}] ll\nr3 = {i}\ncall bpf_tail_call"


def tail_call_cases() -> Iterator[Case]:
    target = "r9 = map[fd:{out}][0]+0 ll\nr1 = 0x7777 ll\n*(u64 *)(r9 +8) = r1\nr0 = 3\nexit"
    yield Case("tail_call(to slot 0, its action)", f"r6 = 5\n{TAIL_SET.replace('{i}', '0')}\nr6 = 9",
               ("r6",), tail_progs=(target,), out_slots=2, expect=(0, 0x7777), action=3)
    yield Case("tail_call(empty slot falls through)", f"r6 = 5\n{TAIL_SET.replace('{i}', '1')}\nr6 += 1",
               ("r6",), tail_progs=(target,), out_slots=2, expect=(6, 0))
    yield Case("tail_call(index past max_entries)", f"r6 = 5\n{TAIL_SET.replace('{i}', '7')}\nr6 += 2",
               ("r6",), tail_progs=(target,), out_slots=2, expect=(7, 0))
    ret64 = "r0 = 0x100000003 ll\nexit"
    yield Case("exit(r0's upper half is not the action)", f"r6 = 5\n{TAIL_SET.replace('{i}', '0')}", ("r6",),
               tail_progs=(ret64,), action=3)
    loop = ("r6 = r1\nr9 = map[fd:{out}][0]+0 ll\nr1 = *(u64 *)(r9 +8)\nr1 += 1\n*(u64 *)(r9 +8) = r1\n"
            f"r1 = r6\n{TAIL_SET.replace('{i}', '0')}\nr0 = 1\nexit")
    yield Case("tail_call(chain limit: 33)", f"r6 = 5\n{TAIL_SET.replace('{i}', '0')}", ("r6",),
               tail_progs=(loop,), out_slots=2, expect=(0, 33), action=1)
    # with BTF the kernel allows it in a subprogram: the target's exit returns to the subprogram's caller
    for slot, what in [(0, "taken"), (1, "falls through")]:
        yield Case(f"tail_call(from a subprogram, {what})", "r6 = 40\ncall sub\nr6 += r0", ("r6",),
                   tail=f"sub:\n{TAIL_SET.replace('{i}', str(slot))}\nr0 = 1\nexit", tail_progs=(target,),
                   out_slots=2, btf=True, expect=((43, 0x7777) if slot == 0 else (41, 0)))


def cases() -> list[Case]:
    out = [*alu_cases(), *jmp_cases(), *mem_cases(), *atomic_cases(), *call_cases(), *loop_cases(), *tail_call_cases()]
    names = [c.name for c in out]
    assert len(names) == len(set(names)), "case names are test ids and must be unique"
    return out


# --- what the kernel refuses ------------------------------------------------------------------

PKT_GUARD_8 = "r2 = *(u32 *)(r1 +0)\nr3 = *(u32 *)(r1 +4)\nr4 = r2\nr4 += 8\nr0 = 0\nif r4 > r3 goto +2\n"

# (what the verifier's log says, the case)
REFUSED = [
    ("div by zero", Case("alu64.div.imm(0)", "r0 = 1\nr0 /= 0")),
    ("div by zero", Case("alu32.mod.imm(0)", "w0 = 1\nw0 %= 0")),
    ("div by zero", Case("alu64.sdiv.imm(0)", "r0 = 1\nr0 s/= 0")),
    ("invalid shift 64", Case("alu64.lsh.imm(64)", "r0 = 1\nr0 <<= 64")),
    ("invalid shift 32", Case("alu32.rsh.imm(32)", "w0 = 1\nw0 >>= 32")),
    ("BPF_MOV uses reserved fields", Case("alu32.movsx32", "r1 = 1\nw0 = (s32)w1")),
    ("unknown opcode df", Case("alu64.bswap(src bit)", "r0 = 1\nraw(code=0xdf, dst=0, src=0, off=0, imm=16)")),
    ("associated arena", Case("alu64.addr_space_cast(no arena)", "r1 = 0\nr0 = addr_space_cast(r1, 0, 1)")),
    ("frame pointer is read only", Case("alu64.mov(dst r10)", "r10 = 0")),
    ("R5 !read_ok", Case("alu64.mov(uninitialised src)", "r0 = r5")),
    ("BPF_LD_[ABS|IND] instructions not allowed", Case("ld.abs.u8", "r6 = r1\nr0 = *(u8 *)skb[0]")),
    ("BPF_LD_[ABS|IND] instructions not allowed", Case("ld.ind.u16", "r6 = r1\nr7 = 0\nr0 = *(u16 *)skb[r7 + 0]")),
    ("unknown opcode 99", Case("ldsx.s64", "r1 = 0\n*(u64 *)(r10 -8) = r1\n"
                                           "raw(code=0x99, dst=0, src=10, off=-8, imm=0)")),
    ("invalid bpf_context access", Case("ldsx.s32.ctx", "r0 = *(s32 *)(r1 +0)")),
    ("invalid bpf_context access", Case("st.u32.ctx", "*(u32 *)(r1 +0) = 0\nr0 = 0")),
    ("misaligned stack access", Case("stx.u16.stack(misaligned -7)",
                                     "r0 = 0\n*(u64 *)(r10 -8) = r0\n*(u16 *)(r10 -7) = r0")),
    ("write into map forbidden", Case("stx.u64.rodata", "r1 = map[fd:{ro}][0]+0 ll\nr0 = 0\n*(u64 *)(r1 +0) = r0",
                                      ro=bytes(8))),
    ("invalid atomic operand size", Case("atomic.u16.add", "r1 = 0\n*(u64 *)(r10 -8) = r1\n"
                                                           "raw(code=0xcb, dst=10, src=1, off=-8, imm=0)")),
    ("BPF_ATOMIC stores into R2 pkt is not allowed",
     Case("atomic64.add.packet", f"{PKT_GUARD_8}r5 = 1\nlock *(u64 *)(r2 +0) += r5")),
    ("unreachable insn", Case("jmp.ja(unreachable insn)", "r0 = 1\ngoto +1\nr0 = 0")),
    ("infinite loop detected", Case("jmp.ja(-1, loops forever)", f"{_load(1)}\nr0 = 0\nif r1 == 0 goto +1\ngoto -1",
                                    args=(1,))),
    # without BTF func_info the kernel allows bpf_tail_call only in the main program
    ("tail_call is not allowed in subprogs without BTF",
     Case("tail_call(from a subprogram, no BTF)", "call f\nr6 = r0", ("r6",),
          tail="f:\nr2 = map[fd:{jmp}] ll\nr3 = 0\ncall bpf_tail_call\nr0 = 0\nexit", tail_progs=("r0 = 3\nexit",))),
]
