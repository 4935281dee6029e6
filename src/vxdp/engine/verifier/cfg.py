"""The program's shape, checked before any value is: functions, jump targets, reachability, liveness.

As the kernel's ``check_subprogs`` and ``check_cfg``: every jump lands inside
its own function and not in the second slot of a ``lddw``; each function ends
in ``exit`` or a jump; every instruction is reachable (the kernel refuses dead
code). `Cfg.live` is a backward liveness analysis of registers (what an
instruction's future may read), which lets state pruning ignore dead registers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...bpf.helpers import PROTOTYPES, Helper
from ...bpf.isa import LDDW, Cls, Insn, JmpOp, PseudoCall, PseudoSrc

MAX_INSNS = 1_000_000


class CfgError(Exception):
    def __init__(self, insn: int, reason: str):
        super().__init__(reason)
        self.insn = insn
        self.reason = reason


def is_jump(insn: Insn) -> bool:
    return insn.cls in (Cls.JMP, Cls.JMP32) and (insn.code & 0xF0) not in (JmpOp.CALL, JmpOp.EXIT)


def jump_target(insns: list[Insn], pc: int) -> int:
    insn = insns[pc]
    if insn.cls is Cls.JMP32 and insn.code & 0xF0 == JmpOp.JA:
        return pc + 1 + insn.imm  # gotol
    return pc + 1 + insn.off


def is_cond(insn: Insn) -> bool:
    return is_jump(insn) and insn.code & 0xF0 != JmpOp.JA


@dataclass
class Cfg:
    starts: list[int]  # first instruction of each function, main first
    func_of: list[int]  # instruction -> its function's start
    prune: set[int]  # instructions where states are compared
    live: list[frozenset[int]]  # registers live before each instruction

    def function_end(self, start: int, n: int) -> int:
        i = self.starts.index(start)
        return self.starts[i + 1] if i + 1 < len(self.starts) else n


def _opcode_table() -> frozenset[int]:
    """Every opcode byte the kernel knows (``bpf_opcode_in_insntable``); any other is refused up front."""
    codes = {0x18} | {0x20 | s for s in (0x00, 0x08, 0x10)} | {0x40 | s for s in (0x00, 0x08, 0x10)}
    for cls in (Cls.ALU, Cls.ALU64):
        for op in (0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0, 0xB0, 0xC0):
            codes |= {cls | op, cls | op | 0x08}
        codes.add(cls | 0x80)
    codes |= {0xD4, 0xDC, 0xD7}
    for cls in (Cls.JMP, Cls.JMP32):
        for op in (0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0xA0, 0xB0, 0xC0, 0xD0):
            codes |= {cls | op, cls | op | 0x08}
        codes.add(cls | 0x00)
    codes |= {0x85, 0x95, 0xE5}
    for size in (0x00, 0x08, 0x10, 0x18):
        codes |= {Cls.LDX | 0x60 | size, Cls.ST | 0x60 | size, Cls.STX | 0x60 | size, Cls.STX | 0xC0 | size}
        if size != 0x18:
            codes.add(Cls.LDX | 0x80 | size)
    return frozenset(int(c) for c in codes)


OPCODES = _opcode_table()


def _width(insns: list[Insn], pc: int) -> int:
    return 2 if insns[pc].code == LDDW else 1


def build(insns: list[Insn]) -> Cfg:
    n = len(insns)
    if n == 0:
        raise CfgError(0, "empty program")
    if n > MAX_INSNS:
        raise CfgError(0, f"program of {n} instructions is over the limit of {MAX_INSNS}")
    second = set()
    starts = {0}
    for pc, insn in enumerate(insns):
        if pc in second:
            continue
        if insn.code not in OPCODES:
            raise CfgError(pc, f"unknown opcode {insn.code:02x}")
        if insn.cls is Cls.LDX and insn.imm:
            raise CfgError(pc, "BPF_LDX uses reserved fields")
        if insn.code == LDDW:
            if pc + 1 >= n or insns[pc + 1].code or insns[pc + 1].dst or insns[pc + 1].src or insns[pc + 1].off:
                raise CfgError(pc, "invalid bpf_ld_imm64 insn: its second slot is missing or not zero-coded")
            second.add(pc + 1)
            if insn.src == PseudoSrc.FUNC:
                starts.add(pc + 1 + insn.imm)
        elif insn.is_subprog_call:
            starts.add(pc + 1 + insn.imm)
    for s in starts:
        if not 0 <= s < n:
            raise CfgError(s, f"function start {s} is outside the program of {n} instructions")
        if s in second:
            raise CfgError(s, f"function start {s} is the second slot of a lddw")
    order = sorted(starts)
    func_of = [0] * n
    for i, s in enumerate(order):
        end = order[i + 1] if i + 1 < len(order) else n
        for pc in range(s, end):
            func_of[pc] = s
        last = end - 1
        if last in second or not (insns[last].is_exit or is_jump(insns[last]) and not is_cond(insns[last])):
            raise CfgError(last, "last insn is not an exit or jmp: execution could run off the function's end")
    prune: set[int] = set()
    succ: list[list[int]] = [[] for _ in range(n)]
    for pc, insn in enumerate(insns):
        if pc in second:
            continue
        if is_jump(insn):
            t = jump_target(insns, pc)
            if not func_of[pc] <= t < n or func_of[t] != func_of[pc]:
                raise CfgError(pc, f"jump out of range from insn {pc} to {t}")
            if t in second:
                raise CfgError(pc, f"jump from insn {pc} to {t}, the middle of a lddw")
            succ[pc].append(t)
            prune.add(t)
            if is_cond(insn) or (insn.code & 0xF0) == JmpOp.JCOND:
                succ[pc].append(pc + 1)
                prune.add(pc + 1)
        elif insn.is_exit:
            pass
        else:
            succ[pc].append(pc + _width(insns, pc))
            if insn.is_call:
                prune.add(pc + 1)
    # reachability from every function start the main program reaches
    seen, todo = set(), [0]
    while todo:
        pc = todo.pop()
        if pc in seen:
            continue
        seen.add(pc)
        todo += succ[pc]
        insn = insns[pc]
        if insn.is_subprog_call or insn.code == LDDW and insn.src == PseudoSrc.FUNC:
            todo.append(pc + 1 + insn.imm)
    for pc in range(n):
        if pc not in seen and pc not in second:
            raise CfgError(pc, f"unreachable insn {pc}")
    return Cfg(order, func_of, prune, _liveness(insns, succ, second))


def _uses_defs(insn: Insn) -> tuple[set[int], set[int]]:
    cls, op = insn.cls, insn.code & 0xF0
    if insn.code == LDDW:
        return set(), {insn.dst}
    if cls in (Cls.ALU, Cls.ALU64):
        uses = set() if op == 0xB0 else {insn.dst}
        if insn.code & 0x08 and op not in (0x80, 0xD0):
            uses.add(insn.src)
        return uses, {insn.dst}
    if cls is Cls.LDX:
        return {insn.src}, {insn.dst}
    if cls is Cls.ST:
        return {insn.dst}, set()
    if cls is Cls.STX:
        uses, defs = {insn.dst, insn.src}, set()
        if insn.code & 0xE0 == 0xC0:
            if insn.imm & 1 or insn.imm == 0x100:
                defs = {insn.src if insn.imm != 0xF1 else 0}
                if insn.imm == 0x100:
                    uses, defs = {insn.src}, {insn.dst}
            if insn.imm == 0xF1:
                uses.add(0)
        return uses, defs
    if cls in (Cls.JMP, Cls.JMP32):
        if op == JmpOp.EXIT:
            return {0}, set()
        if op == JmpOp.CALL:
            if insn.src == PseudoCall.HELPER and insn.imm in PROTOTYPES.keys() | {int(Helper.tail_call)}:
                nargs = len(PROTOTYPES[Helper(insn.imm)].args)
            else:
                nargs = 5
            return set(range(1, nargs + 1)), set(range(6))
        if op in (JmpOp.JA, JmpOp.JCOND):
            return set(), set()
        return ({insn.dst, insn.src} if insn.code & 0x08 else {insn.dst}), set()
    return set(range(11)), set()  # anything else: refused later; keep every register


def _liveness(insns: list[Insn], succ: list[list[int]], second: set[int]) -> list[frozenset[int]]:
    n = len(insns)
    regs = set(range(11))  # a field naming r11-r15 is refused when its instruction is walked
    ud = [tuple(x & regs for x in _uses_defs(insns[pc])) if pc not in second else (set(), set()) for pc in range(n)]
    live: list[set[int]] = [set() for _ in range(n)]
    changed = True
    while changed:
        changed = False
        for pc in range(n - 1, -1, -1):
            if pc in second:
                continue
            out: set[int] = set()
            for s in succ[pc]:
                out |= live[s]
            uses, defs = ud[pc]
            new = uses | (out - defs)
            if new != live[pc]:
                live[pc] = new
                changed = True
    return [frozenset(x) for x in live]
