"""The instruction loop: programs are decoded once into closures, then run as threaded code.

`compile_program` turns each instruction slot into a small closure
``op(regs) -> next_pc`` with its operands bound, so running a program is a loop
of ``pc = code[pc](regs)`` with no decoding per step. Control that leaves the
current instruction list (a tail call, or returning into a caller after one) or
ends the run is signalled by exceptions, which cost nothing on the normal path:
`_Switch` (continue in ``machine.code`` at ``machine.pc``), `_Exit` (the program
returned) and `Fault` (abort the run).

Structural mistakes a loader makes (a cut-off ``lddw``, an unknown map handle)
raise `InterpLoadError` at load time. Everything a program does at run time
that the verifier would have refused (unknown opcode, a jump outside the
program, a bad memory access, too deep a call chain, too many instructions)
becomes a fault with a reason, and the run ends XDP_ABORTED.
"""

from __future__ import annotations

import errno
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from ...bpf.helpers import Helper
from ...bpf.isa import AluOp, Cls, Insn, JmpOp, Mode, PseudoCall, PseudoSrc, Size, lddw_value
from . import alu
from .memory import CTX_RID, FUNC_RID, MAPS_RID, MAX_CALL_FRAMES, STACK_RID, STACK_SIZE, Fault, Memory, ptr

M32 = alu.M32
M64 = alu.M64
S32 = alu.S32
S64 = alu.S64
SIZE_BYTES = {Size.B: 1, Size.H: 2, Size.W: 4, Size.DW: 8}

Op = Callable[[list], int]


class InterpLoadError(ValueError):
    """A program the interpreter cannot load (structurally broken, or referring to unknown maps)."""


class _Exit(Exception):
    """The main function returned: r0 holds the program's result."""


class _Switch(Exception):
    """Continue in another instruction list: ``machine.code`` at ``machine.pc``."""


# The "caller" of a helper's callback: its exit switches here, which ends `Machine.call_function`.
_CALLBACK: list = []


@dataclass
class Program:
    """A loaded program: its instructions and their closures (one per slot, plus an end guard)."""

    name: str
    handle: int
    insns: list[Insn]
    code: list[Op] = field(default_factory=list)


class Machine:
    """Registers, call frames and tail-call state of the one run in progress.

    ``helpers`` maps a helper id to ``f(machine, r1, r2, r3, r4, r5) -> int``;
    ``maps`` and ``programs`` are the engine's tables, by handle.
    """

    MAX_TAIL_CALL_CNT = 33
    # may_goto falls through this many times in a run, then jumps: the kernel's BPF_MAX_LOOPS. (Its x86
    # JIT refills the count until ~250 ms have passed; either way the instruction budget ends first.)
    MAX_LOOPS = 8 * 1024 * 1024

    def __init__(self, mem: Memory, maps: dict, programs: dict, helpers: dict):
        self.mem = mem
        self.maps = maps
        self.programs = programs
        self.helpers = helpers
        self.regs: list[int] = [0] * 11
        self.frames: list[tuple] = []  # (code, return pc, r6, r7, r8, r9, r10) of each caller
        self.tail_calls = 0
        self.loops_left = self.MAX_LOOPS
        self.callback_budget = 0  # instructions left for callbacks in this run (beside the main budget)
        self.code: list[Op] = []
        self.pc = 0
        self.xdp = None  # the XdpBuff of the current run
        self.cpu = 0
        self.rng = None

    # -- running ------------------------------------------------------------
    def execute(self, prog: Program, r1: int, budget: int) -> tuple[int, str | None]:
        """Run ``prog`` with ``r1`` as context; return (r0, fault reason or None)."""
        regs = self.regs
        regs[:] = [0] * 11
        regs[1] = r1
        regs[10] = ptr(STACK_RID, STACK_SIZE)
        self.frames.clear()
        self.tail_calls = 0
        self.loops_left = self.MAX_LOOPS
        self.callback_budget = budget
        code, pc, name = prog.code, 0, prog.name
        left = budget
        while True:
            steps = 0
            try:
                for steps in range(left):  # steps is read after the loop (on _Switch)
                    pc = code[pc](regs)
                return 0, f"{name}: instruction budget of {budget} exhausted"
            except _Exit:
                return regs[0], None
            except _Switch:
                left -= steps + 1
                if left <= 0:
                    return 0, f"{name}: instruction budget of {budget} exhausted"
                code, pc = self.code, self.pc
                name = next((p.name for p in self.programs.values() if p.code is code), name)
            except Fault as f:
                return 0, f"{name}: pc {pc}: {f}"
            except (OverflowError, MemoryError, RecursionError, ValueError, TypeError, IndexError) as e:
                return 0, f"{name}: pc {pc}: internal error {type(e).__name__}: {e}"

    # -- calls ----------------------------------------------------------------
    def tail_call(self, ctx: int, map_ptr: int, index: int) -> None:
        """``bpf_tail_call``: switch programs (raises `_Switch`) or fall through (returns)."""
        m = self.map_at(map_ptr, "tail_call")
        target = getattr(m, "target", None)
        if target is None:
            raise Fault(f"tail_call: map {m.spec.name!r} is not a prog_array")
        handle = target(index & M32)
        if handle is None or self.tail_calls >= self.MAX_TAIL_CALL_CNT:
            return
        self.tail_calls += 1
        self.code, self.pc = self.programs[handle].code, 0
        raise _Switch

    def loop(self, code: list[Op], nr: int, fn: int, ctx: int, flags: int) -> int:
        """``bpf_loop``: call the function at ``fn`` with (i, ctx) up to ``nr`` times, stopping after
        a call that returns non-zero; return how many calls ran (kernel/bpf/bpf_iter.c).

        With flags 0 the kernel's verifier inlines the loop (``inline_bpf_loop``), whose -E2BIG is a
        32-bit move, so zero-extended; we answer so. (Were ``flags`` zero only at run time, the
        kernel's helper would sign-extend it; clang always passes a constant.)"""
        if flags:
            return -errno.EINVAL
        nr &= M32
        if nr > self.MAX_LOOPS:
            return -errno.E2BIG & M32
        if fn >> 32 != FUNC_RID:
            raise Fault(f"loop: {fn:#x} is not a function address")
        for i in range(nr):
            if self.call_function(code, fn & M32, i, ctx):
                return i + 1
        return nr

    def call_function(self, code: list[Op], pc: int, *args: int) -> int:
        """Run the function at ``pc`` of ``code`` for a helper, in a new call frame with ``args`` in
        r1..r5, and return its r0. The caller's r6-r10 come back as a bpf-to-bpf call's do."""
        regs, frames = self.regs, self.frames
        if len(frames) + 1 >= MAX_CALL_FRAMES:
            raise Fault(f"call depth exceeds {MAX_CALL_FRAMES} frames")
        frames.append((_CALLBACK, 0, regs[6], regs[7], regs[8], regs[9], regs[10]))
        regs[1:6] = [*args, 0, 0, 0, 0, 0][:5]
        regs[10] = ptr(STACK_RID + len(frames), STACK_SIZE)
        steps = 0
        try:
            for steps in range(self.callback_budget):
                pc = code[pc](regs)
            raise Fault("instruction budget exhausted in a callback")
        except _Switch:
            if self.code is not _CALLBACK:
                raise Fault("tail call inside a callback") from None
        self.callback_budget -= steps + 1
        return regs[0]

    def map_at(self, value: int, what: str):
        """The map a ``lddw MAP_FD`` pointer names, or a fault."""
        if value >> 32 != MAPS_RID or (value & M32) not in self.maps:
            raise Fault(f"{what}: {value:#x} is not a map pointer")
        return self.maps[value & M32]


# -- decoding -------------------------------------------------------------------


def _fault(reason: str) -> Op:
    def op(r):
        raise Fault(reason)
    return op


def _alu(insn: Insn, pc: int) -> Op:
    cls, op_, d, s, imm, off = insn.code & 7, insn.code & 0xF0, insn.dst, insn.src, insn.imm, insn.off
    wide = cls == Cls.ALU64
    use_reg = bool(insn.code & 0x08)
    nxt = pc + 1
    if d > 9 or s > 10:
        return _fault(f"bad register r{d}/r{s}")
    if op_ == AluOp.END:
        if imm not in (16, 32, 64):
            return _fault(f"byte swap of width {imm}")
        f = alu.bswap(imm) if wide or use_reg else alu.truncate(imm)
        def op(r):
            r[d] = f(r[d], 0)
            return nxt
        return op
    if op_ == AluOp.NEG and use_reg:
        return _fault("neg with a register source")
    table = alu.ALU64 if wide else alu.ALU32
    f = table.get(op_)
    if op_ in (AluOp.DIV, AluOp.MOD) and off == 1:
        f = (alu.SIGNED64 if wide else alu.SIGNED32)[op_]
    elif op_ == AluOp.MOV and off and use_reg:
        if off not in ((8, 16, 32) if wide else (8, 16)):
            return _fault(f"movsx of width {off}")
        f = alu.movsx64(off) if wide else alu.movsx32(off)
    elif off and f is not None:
        return _fault(f"alu op {op_:#x} with off={off}")
    if f is None:
        return _fault(f"unknown opcode {insn.code:#04x}")
    if use_reg:
        if wide and op_ == AluOp.MOV and not off:
            def op(r):
                r[d] = r[s]
                return nxt
        elif wide and op_ == AluOp.ADD:
            def op(r):
                r[d] = (r[d] + r[s]) & M64
                return nxt
        else:
            def op(r):
                r[d] = f(r[d], r[s])
                return nxt
        return op
    k = imm & M64 if wide else imm & M32
    if wide and op_ == AluOp.MOV:
        def op(r):
            r[d] = k
            return nxt
    elif wide and op_ == AluOp.ADD:
        def op(r):
            r[d] = (r[d] + k) & M64
            return nxt
    else:
        def op(r):
            r[d] = f(r[d], k)
            return nxt
    return op


_CMP = {
    JmpOp.JEQ: (operator.eq, False), JmpOp.JNE: (operator.ne, False),
    JmpOp.JGT: (operator.gt, False), JmpOp.JGE: (operator.ge, False),
    JmpOp.JLT: (operator.lt, False), JmpOp.JLE: (operator.le, False),
    JmpOp.JSET: (operator.and_, False),
    JmpOp.JSGT: (operator.gt, True), JmpOp.JSGE: (operator.ge, True),
    JmpOp.JSLT: (operator.lt, True), JmpOp.JSLE: (operator.le, True),
}


def _jmp(insn: Insn, pc: int, n: int, m: Machine, code: list) -> Op:
    cls, op_, d, s, imm, off = insn.code & 7, insn.code & 0xF0, insn.dst, insn.src, insn.imm, insn.off
    wide = cls == Cls.JMP
    nxt = pc + 1
    if op_ == JmpOp.EXIT:
        return _exit_op(m, code)
    if op_ == JmpOp.CALL:
        return _call(insn, pc, n, m, code)
    target = pc + 1 + (imm if op_ == JmpOp.JA and not wide else off)
    if not 0 <= target < n:
        return _fault(f"jump to {target}, outside the program (0..{n - 1})")
    if op_ == JmpOp.JA:
        return lambda r: target
    if op_ == JmpOp.JCOND:
        if not wide or insn.src or d or imm or insn.code & 0x08:
            return _fault(f"unknown jcond instruction (code {insn.code:#04x}, src {insn.src})")
        return _may_goto(m, target, nxt)
    entry = _CMP.get(op_)
    if entry is None or d > 10 or s > 10:
        return _fault(f"unknown opcode {insn.code:#04x}")
    cmp, signed = entry
    mask, sign = (M64, S64) if wide else (M32, S32)
    use_reg = bool(insn.code & 0x08)
    k = imm & mask
    if signed:
        k = (k ^ sign) - sign
        if use_reg:
            def op(r):
                return target if cmp(((r[d] & mask) ^ sign) - sign, ((r[s] & mask) ^ sign) - sign) else nxt
        else:
            def op(r):
                return target if cmp(((r[d] & mask) ^ sign) - sign, k) else nxt
    elif wide:
        if use_reg:
            def op(r):
                return target if cmp(r[d], r[s]) else nxt
        else:
            def op(r):
                return target if cmp(r[d], k) else nxt
    else:
        if use_reg:
            def op(r):
                return target if cmp(r[d] & M32, r[s] & M32) else nxt
        else:
            def op(r):
                return target if cmp(r[d] & M32, k) else nxt
    return op


def _may_goto(m: Machine, target: int, nxt: int) -> Op:
    def op(r):
        if m.loops_left:
            m.loops_left -= 1
            return nxt
        return target
    return op


def _exit_op(m: Machine, code: list) -> Op:
    frames = m.frames

    def op(r):
        if not frames:
            raise _Exit
        caller, ret, r[6], r[7], r[8], r[9], r[10] = frames.pop()
        if caller is code:
            return ret
        m.code, m.pc = caller, ret
        raise _Switch
    return op


def _call(insn: Insn, pc: int, n: int, m: Machine, code: list) -> Op:
    nxt = pc + 1
    if insn.src == PseudoCall.CALL:
        target = pc + 1 + insn.imm
        if not 0 <= target < n:
            return _fault(f"call to {target}, outside the program (0..{n - 1})")
        frames = m.frames

        def op(r):
            if len(frames) + 1 >= MAX_CALL_FRAMES:
                raise Fault(f"call depth exceeds {MAX_CALL_FRAMES} frames")
            frames.append((code, nxt, r[6], r[7], r[8], r[9], r[10]))
            r[10] = ptr(STACK_RID + len(frames), STACK_SIZE)
            return target
        return op
    if insn.src != PseudoCall.HELPER:
        return _fault(f"kfunc call (btf id {insn.imm}) not supported")
    try:
        name = Helper(insn.imm).name
    except ValueError:
        name = f"#{insn.imm}"
    if insn.imm == Helper.tail_call:
        def op(r):
            m.tail_call(r[1], r[2], r[3])
            return nxt
        return op
    if insn.imm == Helper.loop:
        def op(r):
            r[0] = m.loop(code, r[1], r[2], r[3], r[4]) & M64
            return nxt
        return op
    fn = m.helpers.get(insn.imm)
    if fn is None:
        return _fault(f"helper {name} (id {insn.imm}) not supported by the interpreter")

    def op(r):
        r[0] = fn(m, r[1], r[2], r[3], r[4], r[5]) & M64
        return nxt
    return op


def _ldx(insn: Insn, pc: int, mem: Memory) -> Op:
    d, s, off, nxt = insn.dst, insn.src, insn.off, pc + 1
    size = SIZE_BYTES[Size(insn.code & 0x18)]
    if insn.code & 0xE0 == Mode.MEMSX:
        if size == 8:
            return _fault("sign-extending load of 8 bytes")
        load = mem.load_signed
    else:
        load = mem.load

    def op(r):
        r[d] = load((r[s] + off) & M64, size)
        return nxt
    return op


def _store(insn: Insn, pc: int, mem: Memory) -> Op:
    d, s, off, nxt = insn.dst, insn.src, insn.off, pc + 1
    size = SIZE_BYTES[Size(insn.code & 0x18)]
    store = mem.store
    if insn.code & 7 == Cls.ST:
        k = insn.imm & M64

        def op(r):
            store((r[d] + off) & M64, size, k)
            return nxt
        return op

    def op(r):
        store((r[d] + off) & M64, size, r[s])
        return nxt
    return op


_ATOMIC_OPS = {0x00: operator.add, 0x40: operator.or_, 0x50: operator.and_, 0xA0: operator.xor}
LOAD_ACQ, STORE_REL, XCHG, CMPXCHG = 0x100, 0x110, 0xE1, 0xF1


def _atomic(insn: Insn, pc: int, mem: Memory) -> Op:
    d, s, off, nxt, imm = insn.dst, insn.src, insn.off, pc + 1, insn.imm
    size = SIZE_BYTES[Size(insn.code & 0x18)]
    mask = M32 if size == 4 else M64
    if imm == LOAD_ACQ:
        def op(r):
            r[d] = mem.load((r[s] + off) & M64, size)
            return nxt
        return op
    if imm == STORE_REL:
        def op(r):
            mem.store((r[d] + off) & M64, size, r[s])
            return nxt
        return op
    if size not in (4, 8):
        return _fault(f"atomic op on {size} bytes")
    fetch = bool(imm & 1)
    if imm in (XCHG, CMPXCHG):
        f = None
    else:
        f = _ATOMIC_OPS.get(imm & ~1)
        if f is None or imm & ~0xF1:
            return _fault(f"unknown atomic op {imm:#x}")

    def op(r):
        addr = (r[d] + off) & M64
        if addr >> 32 == CTX_RID:
            raise Fault("atomic access to ctx")
        old = mem.load(addr, size)
        if imm == CMPXCHG:
            if old == r[0] & mask:
                mem.store(addr, size, r[s])
            r[0] = old
            return nxt
        mem.store(addr, size, r[s] if f is None else f(old, r[s]) & mask)
        if fetch:
            r[s] = old
        return nxt
    return op


def _set(d: int, value: int, nxt: int) -> Op:
    def op(r):
        r[d] = value
        return nxt
    return op


def _lddw(insns: list[Insn], pc: int, m: Machine) -> Op:
    if pc + 1 >= len(insns) or insns[pc + 1].code != 0:
        raise InterpLoadError(f"lddw at {pc} has no second slot")
    first, second = insns[pc], insns[pc + 1]
    d, nxt = first.dst, pc + 2
    if first.src == PseudoSrc.IMM:
        return _set(d, lddw_value(first, second), nxt)
    if first.src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_VALUE):
        handle = first.imm & M32
        bpf_map = m.maps.get(handle)
        if bpf_map is None:
            raise InterpLoadError(f"lddw at {pc} refers to map handle {handle}, which does not exist")
        if first.src == PseudoSrc.MAP_FD:
            return _set(d, ptr(MAPS_RID, handle), nxt)
        buf = bpf_map.prog_lookup(b"\0" * bpf_map.spec.key_size)
        if buf is None or bpf_map.spec.is_percpu:
            raise InterpLoadError(f"lddw at {pc}: map {bpf_map.spec.name!r} has no direct value at key 0")
        offset = second.imm & M32
        if offset >= len(buf):
            raise InterpLoadError(f"lddw at {pc}: offset {offset} beyond value of {len(buf)} bytes")
        writable = not bpf_map.spec.flags & 0x80  # BPF_F_RDONLY_PROG
        name = f"map {bpf_map.spec.name!r} value"
        mem = m.mem

        def op(r):
            r[d] = mem.value_ptr(buf, writable, name) + offset
            return nxt
        return op
    if first.src == PseudoSrc.FUNC:
        target = pc + 1 + first.imm
        if not 0 <= target < len(insns):
            return _fault(f"lddw of function address {target}, outside the program (0..{len(insns) - 1})")
        return _set(d, ptr(FUNC_RID, target), nxt)
    return _fault(f"lddw with src={first.src} not supported")


def compile_program(prog: Program, m: Machine) -> None:
    """Fill ``prog.code``: one closure per slot, and a guard for falling off the end."""
    insns, code, n = prog.insns, prog.code, len(prog.insns)
    if not n:
        raise InterpLoadError(f"program {prog.name!r} has no instructions")
    code.clear()
    skip = False
    for pc, insn in enumerate(insns):
        if skip:
            code.append(_fault(f"jump into the second slot of the lddw at {pc - 1}"))
            skip = False
            continue
        cls = insn.code & 7
        if cls in (Cls.ALU, Cls.ALU64):
            code.append(_alu(insn, pc))
        elif cls in (Cls.JMP, Cls.JMP32):
            code.append(_jmp(insn, pc, n, m, code))
        elif insn.code == 0x18:
            code.append(_lddw(insns, pc, m))
            skip = True
        elif cls == Cls.LDX and insn.code & 0xE0 in (Mode.MEM, Mode.MEMSX):
            code.append(_ldx(insn, pc, m.mem))
        elif cls in (Cls.ST, Cls.STX) and insn.code & 0xE0 == Mode.MEM:
            code.append(_store(insn, pc, m.mem))
        elif cls == Cls.STX and insn.code & 0xE0 == Mode.ATOMIC:
            code.append(_atomic(insn, pc, m.mem))
        else:
            code.append(_fault(f"unknown opcode {insn.code:#04x}"))
    code.append(_fault("execution fell off the end of the program"))
