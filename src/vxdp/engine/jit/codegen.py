"""eBPF instructions to LLVM IR: one LLVM function per BPF function, registers as locals.

Each BPF function (the main program at 0, every bpf-to-bpf call target, every ``lddw``
function address) becomes ``i64 f<start>(i8* ctx, i64 frame_base, i64 r1, ..., i64 r5)``.
Its registers are allocas that LLVM's SROA turns into SSA values, its instructions fall
into basic blocks cut at jump targets, and ``r10`` is ``frame_base + 512`` (see
`context`: a callee's frame starts where its caller's ends). The program's entry
``i64 vxdp_entry(i8* ctx, i64 frame_base)`` calls ``f0`` with ``r1 = ctx``; it is also
what prog_array slots point at, so a tail call is a native call of that address whose
result the calling function returns (the kernel's tail call replaces the function it is
in: the target's exit returns to that function's caller).

Semantics that LLVM leaves undefined are spelled out as the kernel defines them:
division by zero gives 0 and modulo by zero keeps the dividend, ``INT_MIN / -1`` is
``INT_MIN`` (and ``% -1`` is 0), shift counts are masked to the width.

A fault (a failed run-time check) writes the fault word into the context and returns 0;
every call site checks the word after the call and returns at once, so the whole chain
unwinds and the batch loop counts the packet as XDP_ABORTED.
"""

from __future__ import annotations

from typing import ClassVar

from llvmlite import ir

from ...bpf.helpers import Helper
from ...bpf.isa import LDDW, AluOp, Cls, Insn, JmpOp, Mode, PseudoCall, PseudoSrc, Size, lddw_value
from ..interp.memory import STACK_SIZE
from ..verifier.state import RegType
from .analysis import PACKET_TYPES, Notes
from .batch import add_batch
from .context import MAX_LOOPS, MAX_TAIL_CALL_CNT, XDP_MD_FIELDS, Ctx, FaultKind
from .helpers import HelperEmitter
from .irtypes import (
    ARRAY,
    CMPXCHG,
    ENTRY,
    ENTRY_TYPE,
    FUNC_TYPE,
    I1,
    I32,
    I64,
    INT,
    LOAD_ACQ,
    M32,
    RMW,
    SIZE_BYTES,
    STORE_REL,
    XCHG,
    JitLoadError,
    MapRef,
)


def function_starts(insns: list[Insn]) -> list[int]:
    """Where functions begin: 0, every bpf-to-bpf call target, every function whose address is taken."""
    starts = {0}
    for pc, insn in enumerate(insns):
        if (insn.code == (Cls.JMP | JmpOp.CALL) and insn.src == PseudoCall.CALL
                or insn.code == LDDW and insn.src == PseudoSrc.FUNC):
            starts.add(pc + 1 + insn.imm)
    return sorted(starts)


def _leaders(insns: list[Insn], lo: int, hi: int) -> set[int]:
    out = {lo}
    pc = lo
    while pc < hi:
        insn = insns[pc]
        cls = insn.code & 7
        if insn.code == LDDW:
            pc += 2
            continue
        if cls in (Cls.JMP, Cls.JMP32):
            op = insn.code & 0xF0
            if op not in (JmpOp.CALL,):
                if op != JmpOp.EXIT:
                    out.add(pc + 1 + (insn.imm if op == JmpOp.JA and cls == Cls.JMP32 else insn.off))
                out.add(pc + 1)
        pc += 1
    return {p for p in out if lo <= p < hi}


class ModuleBuilder:
    """Builds the IR module of one program; `text` is what `compiler.compile_module` takes."""

    def __init__(self, name: str, insns: list[Insn], notes: Notes, maps: dict[int, MapRef], addresses: dict[str, int]):
        self.name = name
        self.insns = insns
        self.notes = notes
        self.maps = maps
        self.module = ir.Module(name=name)
        self.starts = function_starts(insns)
        self.funcs: dict[int, ir.Function] = {}
        for s in self.starts:
            fn = ir.Function(self.module, FUNC_TYPE, name=f"f{s}")
            fn.linkage = "internal"
            self.funcs[s] = fn
        self.helpers = HelperEmitter(self.module, addresses)
        self.regions = [m.region for m in maps.values() if m.region is not None]

    def build(self) -> str:
        bounds = self.starts[1:] + [len(self.insns)]
        for s, e in zip(self.starts, bounds, strict=True):
            FunctionBuilder(self, self.funcs[s], s, e).build()
        entry = ir.Function(self.module, ENTRY_TYPE, name=ENTRY)
        b = ir.IRBuilder(entry.append_basic_block("entry"))
        ctx, base = entry.args
        zero = ir.Constant(I64, 0)
        b.ret(b.call(self.funcs[0], [ctx, base, b.ptrtoint(ctx, I64), zero, zero, zero, zero]))
        add_batch(self.module, entry)
        return str(self.module)


class FunctionBuilder:
    """Emits one BPF function's instructions [lo, hi) into ``fn``."""

    def __init__(self, mb: ModuleBuilder, fn: ir.Function, lo: int, hi: int):
        self.mb = mb
        self.fn = fn
        self.lo, self.hi = lo, hi
        self.insns = mb.insns
        self.notes = mb.notes
        entry = fn.append_basic_block("entry")
        self.b = b = ir.IRBuilder(entry)
        self.ctx = fn.args[0]
        self.regs = [b.alloca(I64, name=f"r{i}") for i in range(11)]
        zero = ir.Constant(I64, 0)
        b.store(zero, self.regs[0])
        for i in range(1, 6):
            b.store(fn.args[1 + i], self.regs[i])
        for i in range(6, 10):
            b.store(zero, self.regs[i])
        self.frame_base = fn.args[1]
        b.store(b.add(fn.args[1], ir.Constant(I64, STACK_SIZE)), self.regs[10])
        self.blocks = {pc: fn.append_basic_block(f"pc{pc}") for pc in sorted(_leaders(self.insns, lo, hi))}
        b.branch(self.blocks[lo])

    # -- registers and context ----------------------------------------------------------------
    def get(self, r: int) -> ir.Value:
        return self.b.load(self.regs[r])

    def set(self, r: int, v: ir.Value) -> None:
        if v.type != I64:
            v = self.b.zext(v, I64)
        self.b.store(v, self.regs[r])

    def ctx_ptr(self, off: int, ty: ir.IntType) -> ir.Value:
        b = self.b
        return b.bitcast(b.gep(self.ctx, [ir.Constant(I64, off)]), ty.as_pointer())

    def ctx_load(self, off: int, ty: ir.IntType = I64) -> ir.Value:
        return self.b.load(self.ctx_ptr(off, ty))

    def fault(self, pc: int, kind: FaultKind) -> None:
        """End the packet: write the fault word and return (the block ends here)."""
        self.b.store(ir.Constant(I64, (pc + 1) << 8 | kind), self.ctx_ptr(Ctx.FAULT, I64))
        self.b.ret(ir.Constant(I64, 0))

    def unwind_if_faulted(self) -> None:
        """After a call: if the callee faulted, return at once (the fault word stays set)."""
        b = self.b
        faulted = b.icmp_unsigned("!=", self.ctx_load(Ctx.FAULT), ir.Constant(I64, 0))
        out = self.fn.append_basic_block()
        cont = self.fn.append_basic_block()
        b.cbranch(faulted, out, cont)
        b.position_at_end(out)
        b.ret(ir.Constant(I64, 0))
        b.position_at_end(cont)

    def const(self, v: int) -> ir.Constant:
        return ir.Constant(I64, v & 0xFFFFFFFFFFFFFFFF)

    # -- the walk ------------------------------------------------------------------------------
    def build(self) -> None:
        b, pc = self.b, self.lo
        b.position_at_end(self.blocks[self.lo])
        while pc < self.hi:
            if pc in self.blocks and pc != self.lo or b.block.is_terminated:
                block = self.blocks.get(pc)
                if block is None:  # code after an exit that no jump reaches
                    block = self.fn.append_basic_block(f"dead{pc}")
                if not b.block.is_terminated:
                    b.branch(block)
                b.position_at_end(block)
            pc = self.emit(pc)
        if not b.block.is_terminated:  # fell off the end (the verifier refuses it)
            self.fault(self.hi - 1, FaultKind.ACCESS)

    def emit(self, pc: int) -> int:
        insn = self.insns[pc]
        cls = insn.code & 7
        if cls in (Cls.ALU, Cls.ALU64):
            self.alu(insn)
        elif cls in (Cls.JMP, Cls.JMP32):
            self.jmp(pc, insn)
        elif insn.code == LDDW:
            self.lddw(pc, insn, self.insns[pc + 1])
            return pc + 2
        elif cls == Cls.LDX and insn.code & 0xE0 in (Mode.MEM, Mode.MEMSX):
            self.ldx(pc, insn)
        elif cls in (Cls.ST, Cls.STX) and insn.code & 0xE0 == Mode.MEM:
            self.store(pc, insn)
        elif cls == Cls.STX and insn.code & 0xE0 == Mode.ATOMIC:
            self.atomic(pc, insn)
        else:
            raise JitLoadError(f"{self.mb.name}: pc {pc}: unknown opcode {insn.code:#04x}")
        return pc + 1

    # -- ALU ------------------------------------------------------------------------------------
    def alu(self, insn: Insn) -> None:
        b = self.b
        wide = insn.code & 7 == Cls.ALU64
        op, use_reg, d = insn.code & 0xF0, bool(insn.code & 0x08), insn.dst
        ty = I64 if wide else I32
        a = self.get(d)
        if op == AluOp.END:
            bits = insn.imm
            v = b.trunc(a, INT[bits // 8]) if bits < 64 else a
            if wide or use_reg:
                v = b.call(self.mb.module.declare_intrinsic("llvm.bswap", [v.type]), [v])
            self.set(d, v)
            return
        if use_reg:
            src = self.get(insn.src)
        else:
            src = ir.Constant(I64, insn.imm & 0xFFFFFFFFFFFFFFFF) if wide else ir.Constant(I64, insn.imm & M32)
        if not wide:
            a, src = b.trunc(a, I32), b.trunc(src, I32)
        if op == AluOp.MOV:
            if insn.off and use_reg:
                src = b.sext(b.trunc(src, INT[insn.off // 8]), ty)
            self.set(d, src)
            return
        self.set(d, self.arith(op, a, src, ty, signed=insn.off == 1))

    def arith(self, op: int, a: ir.Value, s: ir.Value, ty: ir.IntType, signed: bool) -> ir.Value:
        b = self.b
        width = ty.width
        zero, one, minus1 = ir.Constant(ty, 0), ir.Constant(ty, 1), ir.Constant(ty, -1)
        if op == AluOp.ADD:
            return b.add(a, s)
        if op == AluOp.SUB:
            return b.sub(a, s)
        if op == AluOp.MUL:
            return b.mul(a, s)
        if op == AluOp.OR:
            return b.or_(a, s)
        if op == AluOp.AND:
            return b.and_(a, s)
        if op == AluOp.XOR:
            return b.xor(a, s)
        if op == AluOp.NEG:
            return b.sub(zero, a)
        if op in (AluOp.LSH, AluOp.RSH, AluOp.ARSH):
            s = b.and_(s, ir.Constant(ty, width - 1))
            return {AluOp.LSH: b.shl, AluOp.RSH: b.lshr, AluOp.ARSH: b.ashr}[op](a, s)
        if op in (AluOp.DIV, AluOp.MOD):
            is_zero = b.icmp_unsigned("==", s, zero)
            if not signed:
                safe = b.select(is_zero, one, s)
                if op == AluOp.DIV:
                    return b.select(is_zero, zero, b.udiv(a, safe))
                return b.select(is_zero, a, b.urem(a, safe))
            is_m1 = b.icmp_signed("==", s, minus1)
            safe = b.select(b.or_(is_zero, is_m1), one, s)
            if op == AluOp.DIV:
                return b.select(is_zero, zero, b.select(is_m1, b.sub(zero, a), b.sdiv(a, safe)))
            return b.select(is_zero, a, b.select(is_m1, zero, b.srem(a, safe)))
        raise JitLoadError(f"{self.mb.name}: unknown ALU operation {op:#x}")

    # -- jumps and calls -----------------------------------------------------------------------
    _PRED: ClassVar[dict] = {JmpOp.JEQ: ("==", False), JmpOp.JNE: ("!=", False), JmpOp.JGT: (">", False),
             JmpOp.JGE: (">=", False), JmpOp.JLT: ("<", False), JmpOp.JLE: ("<=", False),
             JmpOp.JSGT: (">", True), JmpOp.JSGE: (">=", True), JmpOp.JSLT: ("<", True),
             JmpOp.JSLE: ("<=", True)}

    def target_block(self, target: int) -> ir.Block:
        block = self.blocks.get(target)
        if block is None:
            raise JitLoadError(f"{self.mb.name}: jump to {target}, outside its function [{self.lo}, {self.hi})")
        return block

    def jmp(self, pc: int, insn: Insn) -> None:
        b = self.b
        wide = insn.code & 7 == Cls.JMP
        op = insn.code & 0xF0
        if op == JmpOp.EXIT:
            b.ret(self.get(0))
            return
        if op == JmpOp.CALL:
            self.call(pc, insn)
            return
        target = pc + 1 + (insn.imm if op == JmpOp.JA and not wide else insn.off)
        if op == JmpOp.JA:
            b.branch(self.target_block(target))
            return
        nxt = self.blocks[pc + 1] if pc + 1 in self.blocks else self.target_block(pc + 1)
        if op == JmpOp.JCOND:  # may_goto: fall through while the run's budget lasts
            slot = self.ctx_ptr(Ctx.LOOPS_LEFT, I64)
            left = b.load(slot)
            more = b.icmp_unsigned("!=", left, ir.Constant(I64, 0))
            with b.if_then(more):
                b.store(b.sub(left, ir.Constant(I64, 1)), slot)
            b.cbranch(more, nxt, self.target_block(target))
            return
        a = self.get(insn.dst)
        s = self.get(insn.src) if insn.code & 0x08 else ir.Constant(I64, insn.imm & 0xFFFFFFFFFFFFFFFF)
        if not wide:
            a, s = b.trunc(a, I32), b.trunc(s, I32)
        if op == JmpOp.JSET:
            cond = b.icmp_unsigned("!=", b.and_(a, s), ir.Constant(a.type, 0))
        else:
            entry = self._PRED.get(op)
            if entry is None:
                raise JitLoadError(f"{self.mb.name}: pc {pc}: unknown jump {insn.code:#04x}")
            pred, signed = entry
            cond = b.icmp_signed(pred, a, s) if signed else b.icmp_unsigned(pred, a, s)
        b.cbranch(cond, self.target_block(target), nxt)

    def call(self, pc: int, insn: Insn) -> None:
        b = self.b
        if insn.src == PseudoCall.CALL:
            callee = self.mb.funcs[pc + 1 + insn.imm]
            r0 = b.call(callee, [self.ctx, self.get(10), *(self.get(i) for i in range(1, 6))])
            self.unwind_if_faulted()
            self.set(0, r0)
            return
        if insn.src != PseudoCall.HELPER:
            raise JitLoadError(f"{self.mb.name}: pc {pc}: kfunc calls are not supported")
        if insn.imm == Helper.tail_call:
            self.tail_call(pc)
        elif insn.imm == Helper.loop:
            self.bpf_loop(pc)
        else:
            self.set(0, self.mb.helpers.emit(self, pc, insn.imm))

    def tail_call(self, pc: int) -> None:
        """``bpf_tail_call(ctx, prog_array, index)``: call the slot's entry and return its result, or fall through."""
        b = self.b
        desc = b.inttoptr(self.get(2), I64.as_pointer())
        table = b.load(b.gep(desc, [ir.Constant(I64, 6)]))
        max_entries = b.load(b.gep(desc, [ir.Constant(I64, 3)]))
        index = b.and_(self.get(3), ir.Constant(I64, M32))
        count_slot = self.ctx_ptr(Ctx.TAIL_CALLS, I64)
        count = b.load(count_slot)
        fall = self.fn.append_basic_block()
        look = self.fn.append_basic_block()
        ok = b.and_(b.icmp_unsigned("<", index, max_entries),
                    b.icmp_unsigned("<", count, ir.Constant(I64, MAX_TAIL_CALL_CNT)))
        b.cbranch(ok, look, fall)
        b.position_at_end(look)
        slot = b.gep(b.inttoptr(table, I64.as_pointer()), [index])
        entry = b.load(slot)
        go = self.fn.append_basic_block()
        b.cbranch(b.icmp_unsigned("!=", entry, ir.Constant(I64, 0)), go, fall)
        b.position_at_end(go)
        b.store(b.add(count, ir.Constant(I64, 1)), count_slot)
        target = b.inttoptr(entry, ENTRY_TYPE.as_pointer())
        b.ret(b.call(target, [self.ctx, self.frame_base]))
        b.position_at_end(fall)  # r0 is left as it was, as the kernel's tail call leaves it

    def bpf_loop(self, pc: int) -> None:
        """``bpf_loop(nr, callback, ctx, flags)``: the callback in a new frame, until it returns non-zero."""
        b = self.b
        nr, fn_addr, cb_ctx, flags = (self.get(i) for i in (1, 2, 3, 4))
        nr = b.and_(nr, ir.Constant(I64, M32))
        result = b.alloca(I64)
        done = self.fn.append_basic_block()
        check = self.fn.append_basic_block()
        b.store(self.const(-22), result)  # -EINVAL for flags
        b.cbranch(b.icmp_unsigned("!=", flags, ir.Constant(I64, 0)), done, check)
        b.position_at_end(check)
        b.store(ir.Constant(I64, -7 & M32), result)  # -E2BIG, zero-extended as the inlined loop gives it
        run = self.fn.append_basic_block()
        b.cbranch(b.icmp_unsigned(">", nr, ir.Constant(I64, MAX_LOOPS)), done, run)
        b.position_at_end(run)
        callees = [-1 - c for c in self.notes.call_maps.get(pc, ()) if c < 0]
        if len(callees) == 1:
            callee = self.mb.funcs[callees[0]]
        else:
            callee = b.inttoptr(fn_addr, FUNC_TYPE.as_pointer())
        i_slot = b.alloca(I64)
        b.store(ir.Constant(I64, 0), i_slot)
        head, body = self.fn.append_basic_block(), self.fn.append_basic_block()
        b.store(nr, result)
        b.branch(head)
        b.position_at_end(head)
        i = b.load(i_slot)
        b.cbranch(b.icmp_unsigned("<", i, nr), body, done)
        b.position_at_end(body)
        zero = ir.Constant(I64, 0)
        r0 = b.call(callee, [self.ctx, self.get(10), i, cb_ctx, zero, zero, zero])
        self.unwind_if_faulted()
        nxt = b.add(i, ir.Constant(I64, 1))
        b.store(nxt, i_slot)
        stop = self.fn.append_basic_block()
        b.cbranch(b.icmp_unsigned("!=", r0, zero), stop, head)
        b.position_at_end(stop)
        b.store(nxt, result)
        b.branch(done)
        b.position_at_end(done)
        self.set(0, b.load(result))

    # -- loads and stores ----------------------------------------------------------------------
    def lddw(self, pc: int, first: Insn, second: Insn) -> None:
        d = first.dst
        if first.src == PseudoSrc.IMM:
            self.set(d, self.const(lddw_value(first, second)))
            return
        if first.src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_VALUE):
            m = self.mb.maps.get(first.imm & M32)
            if m is None:
                raise JitLoadError(f"{self.mb.name}: lddw at {pc} refers to map handle {first.imm}, which is unknown")
            if first.src == PseudoSrc.MAP_FD:
                self.set(d, self.const(m.desc))
            else:
                if m.kind != ARRAY:
                    raise JitLoadError(f"{self.mb.name}: lddw at {pc}: map {m.handle} has no direct value")
                self.set(d, self.const(m.values + (second.imm & M32)))
            return
        if first.src == PseudoSrc.FUNC:
            self.set(d, self.b.ptrtoint(self.mb.funcs[pc + 1 + first.imm], I64))
            return
        raise JitLoadError(f"{self.mb.name}: lddw at {pc} with src {first.src} is not supported")

    def address(self, pc: int, reg: int, off: int, size: int) -> ir.Value:
        """The native pointer ``reg + off``, range-checked first when the verifier could not pin it down."""
        b = self.b
        addr = b.add(self.get(reg), ir.Constant(I64, off & 0xFFFFFFFFFFFFFFFF))
        if self.notes.needs_check(pc):
            self.check(pc, addr, size)
        return b.inttoptr(addr, INT[size].as_pointer())

    def check(self, pc: int, addr: ir.Value, size: int) -> None:
        b = self.b
        end = b.add(addr, ir.Constant(I64, size))
        kinds = {x.type for x in self.notes.bases.get(pc, ())}
        everything = not kinds
        oks = []

        def within(lo: ir.Value, hi: ir.Value) -> None:
            oks.append(b.and_(b.icmp_unsigned(">=", addr, lo), b.icmp_unsigned("<=", end, hi)))
            oks.append(b.icmp_unsigned("<=", addr, end))  # no wrap-around

        if everything or RegType.STACK in kinds:
            within(self.ctx_load(Ctx.STACK_BASE), self.get(10))
        if everything or kinds & PACKET_TYPES:
            within(self.ctx_load(Ctx.DATA_META), self.ctx_load(Ctx.DATA_END))
        handles = {x.map for x in self.notes.bases.get(pc, ()) if x.type is RegType.MAP_VALUE}
        regions = self.mb.regions if everything else [self.mb.maps[h].region for h in handles]
        if any(r is None for r in regions):
            return  # a map whose values have no fixed region (the runtime did not say): trust the verifier
        for lo, hi in regions:
            within(ir.Constant(I64, lo), ir.Constant(I64, hi))
        ok = ir.Constant(I1, 0)
        for i in range(0, len(oks), 2):
            ok = b.or_(ok, b.and_(oks[i], oks[i + 1]))
        bad, good = self.fn.append_basic_block(), self.fn.append_basic_block()
        b.cbranch(ok, good, bad)
        b.position_at_end(bad)
        self.fault(pc, FaultKind.ACCESS)
        b.position_at_end(good)

    def ldx(self, pc: int, insn: Insn) -> None:
        b = self.b
        size = SIZE_BYTES[Size(insn.code & 0x18)]
        if self.notes.is_ctx(pc):
            if len(self.notes.bases[pc]) > 1:
                raise JitLoadError(f"{self.mb.name}: pc {pc}: one load through the context and another pointer")
            field = XDP_MD_FIELDS.get(insn.off)
            if field is None or size != 4:
                raise JitLoadError(f"{self.mb.name}: pc {pc}: ctx access of {size} bytes at {insn.off}")
            off, width = field
            self.set(insn.dst, self.ctx_load(off, INT[width]))
            return
        v = b.load(self.address(pc, insn.src, insn.off, size), align=1)
        self.set(insn.dst, b.sext(v, I64) if insn.code & 0xE0 == Mode.MEMSX else v)

    def store(self, pc: int, insn: Insn) -> None:
        b = self.b
        size = SIZE_BYTES[Size(insn.code & 0x18)]
        if insn.code & 7 == Cls.ST:
            value = ir.Constant(INT[size], insn.imm & ((1 << (8 * size)) - 1))
        else:
            value = self.get(insn.src)
            if size < 8:
                value = b.trunc(value, INT[size])
        b.store(value, self.address(pc, insn.dst, insn.off, size), align=1)

    def atomic(self, pc: int, insn: Insn) -> None:
        b = self.b
        size = SIZE_BYTES[Size(insn.code & 0x18)]
        ty, imm = INT[size], insn.imm
        if imm == LOAD_ACQ:
            v = b.load_atomic(self.address(pc, insn.src, insn.off, size), "acquire", size)
            self.set(insn.dst, v)
            return
        val = self.get(insn.src)
        if size < 8:
            val = b.trunc(val, ty)
        if imm == STORE_REL:
            b.store_atomic(val, self.address(pc, insn.dst, insn.off, size), "release", size)
            return
        ptr = self.address(pc, insn.dst, insn.off, size)
        if imm == CMPXCHG:
            expected = self.get(0)
            if size < 8:
                expected = b.trunc(expected, ty)
            self.set(0, b.extract_value(b.cmpxchg(ptr, expected, val, "seq_cst", "seq_cst"), 0))
            return
        if imm == XCHG:
            self.set(insn.src, b.atomic_rmw("xchg", ptr, val, "seq_cst"))
            return
        op = RMW.get(imm & ~1)
        if op is None or imm & ~0xF1:
            raise JitLoadError(f"{self.mb.name}: pc {pc}: unknown atomic operation {imm:#x}")
        old = b.atomic_rmw(op, ptr, val, "seq_cst")
        if imm & 1:
            self.set(insn.src, old)
