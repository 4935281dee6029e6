"""Checking and rewriting a guest's program before the host kernel sees it. Pure: no syscalls.

Three steps, in this order, all on lists of `vxdp.bpf.isa.Insn` (one per slot):

1. `check_program`: the policy's static checks. Instruction count; every
   helper call against the allowlist (by id, named in the refusal); kfunc
   calls (``call`` src=2) refused, since a kfunc is any kernel function the
   host's BTF exports; ``lddw`` only with src IMM, MAP_FD or MAP_VALUE (BTF_ID
   names kernel objects, FUNC passes callbacks to bpf_loop/timers, which the
   policy refuses, MAP_IDX* index an fd array the guest does not have). It
   returns the guest map handles the program references.
2. `rewrite_map_handles`: each MAP_FD/MAP_VALUE ``lddw`` carries a guest map
   handle in ``imm``; it becomes the host object's handle (a kernel map fd).
   The MAP_VALUE offset in the second slot is kept.
3. `add_action_counters`: the host counts each program's verdicts itself. The
   main function's ``exit`` instructions become jumps to an epilogue appended
   at the end of the main function (before the first subprogram: the verifier
   refuses jumps between functions), which adds one to slot ``min(r0, 5)`` of a
   host-owned PERCPU_ARRAY (ABORTED, DROP, PASS, TX, REDIRECT, other) and
   exits with r0 unchanged. Only the main function: an ``exit`` in a
   subprogram returns to its caller. A successful ``bpf_tail_call`` never
   returns, so the verdict is counted by the tail-called program's own
   epilogue (every offloaded program gets one), which is right: that is the
   program whose verdict the kernel acts on. Inserting the epilogue shifts
   every later slot, so bpf-to-bpf calls from the main function to its
   subprograms, and func_info/line_info offsets past the insertion, move too.

REDIRECT: every redirect helper is in `policy.NEVER_HELPERS`, so no offloaded
program can set a redirect target. A program may still ``return XDP_REDIRECT``
(4) bare; the kernel's ``xdp_do_redirect`` then finds no target, fails, and
drops the frame as an XDP exception (tracepoint ``xdp:xdp_exception``). The
epilogue counts it in slot 4, so ``show()`` makes such a program visible.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...bpf.helpers import Helper
from ...bpf.isa import (
    ACTION_NAMES,
    EXIT,
    LDDW,
    AluOp,
    Cls,
    Insn,
    JmpOp,
    Mode,
    PseudoCall,
    PseudoSrc,
    Size,
    Src,
    lddw,
)
from ...bpf.obj import FuncInfo, LineInfo
from .errors import OffloadError
from .policy import Policy

ACTION_SLOTS = (*ACTION_NAMES, "other")
"""The counter map's slots: the XDP action values 0..4, then every other return value."""

_ALLOWED_LDDW = {PseudoSrc.IMM, PseudoSrc.MAP_FD, PseudoSrc.MAP_VALUE}


@dataclass
class ProgramRefs:
    """What a checked program refers to: guest map handles and helper ids."""

    map_handles: set[int] = field(default_factory=set)
    helpers: set[int] = field(default_factory=set)
    subprog_calls: int = 0


def check_program(insns: Sequence[Insn], policy: Policy, *, name: str = "") -> ProgramRefs:
    """Apply the policy's static checks to ``insns``; raise `OffloadError` naming the rule, else the refs."""
    where = f"program {name!r}" if name else "program"
    limit = policy.quota.max_insns
    if not insns:
        raise OffloadError(errno.EINVAL, f"policy: {where} has no instructions", "insns")
    if len(insns) > limit:
        raise OffloadError(errno.E2BIG, f"policy: {where} has {len(insns)} instructions, more than the "
                           f"limit {limit}", "quota.max_insns")
    refs = ProgramRefs()
    pc = 0
    while pc < len(insns):
        insn = insns[pc]
        if insn.code == LDDW:
            if pc + 1 >= len(insns) or insns[pc + 1].code != 0:
                raise OffloadError(errno.EINVAL, f"{where}: lddw at instruction {pc} has no second slot", "insns")
            if insn.src not in _ALLOWED_LDDW:
                kind = PseudoSrc(insn.src).name if insn.src in PseudoSrc._value2member_map_ else str(insn.src)
                raise OffloadError(errno.EPERM, f"policy: {where}: lddw with src {kind} at instruction {pc} "
                                   "is not allowed (only constants and map references)", "insns.lddw")
            if insn.src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_VALUE):
                refs.map_handles.add(insn.imm & 0xFFFFFFFF)
            pc += 2
            continue
        if insn.is_call:
            if insn.src == PseudoCall.HELPER:
                policy.check_helper(insn.imm, f" (instruction {pc} of {where})")
                refs.helpers.add(insn.imm)
            elif insn.src == PseudoCall.CALL:
                target = pc + 1 + insn.imm
                if not 0 <= target < len(insns):
                    raise OffloadError(errno.EINVAL, f"{where}: call at instruction {pc} jumps out of the "
                                       f"program (to {target})", "insns")
                refs.subprog_calls += 1
            elif insn.src == PseudoCall.KFUNC:
                raise OffloadError(errno.EPERM, f"policy: {where}: kfunc call (BTF id {insn.imm}) at instruction "
                                   f"{pc} is not allowed", "helpers.kfunc")
            else:
                raise OffloadError(errno.EINVAL, f"{where}: call with src {insn.src} at instruction {pc}", "insns")
        pc += 1
    return refs


def rewrite_map_handles(insns: Sequence[Insn], resolve: Callable[[int], int]) -> list[Insn]:
    """``insns`` with each MAP_FD/MAP_VALUE ``lddw`` imm (a guest handle) replaced by ``resolve(handle)``."""
    out = list(insns)
    pc = 0
    while pc < len(out):
        insn = out[pc]
        if insn.code == LDDW:
            if insn.src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_VALUE):
                out[pc] = insn.replace(imm=_s32(resolve(insn.imm & 0xFFFFFFFF)))
            pc += 2
            continue
        pc += 1
    return out


def check_ext_info(insns: Sequence[Insn], func_info: Sequence[FuncInfo], line_info: Sequence[LineInfo], *,
                   name: str) -> None:
    """func_info and line_info name instructions of the program, in order, as the kernel requires
    (func_info: first at 0, strictly increasing; both: inside the program). Checked before the
    epilogue is placed after the main function, which a bogus offset would put anywhere (EINVAL)."""
    n = len(insns)
    prev = -1
    for i, f in enumerate(func_info):
        if not (0 <= f.insn < n) or f.insn <= prev or (i == 0 and f.insn != 0):
            raise OffloadError(errno.EINVAL, f"program {name!r}: func_info[{i}] names instruction {f.insn} (the "
                               f"program has {n}; the first is 0, each after the one before)", "func_info")
        prev = f.insn
    for i, x in enumerate(line_info):
        if not 0 <= x.insn < n:
            raise OffloadError(errno.EINVAL, f"program {name!r}: line_info[{i}] names instruction {x.insn} (the "
                               f"program has {n})", "line_info")


def function_starts(insns: Sequence[Insn], func_info: Sequence[FuncInfo] = ()) -> list[int]:
    """Start slots of every function: 0, each bpf-to-bpf call target, each func_info offset (sorted)."""
    starts = {0} | {fi.insn for fi in func_info}
    pc = 0
    while pc < len(insns):
        insn = insns[pc]
        if insn.is_subprog_call:
            starts.add(pc + 1 + insn.imm)
        pc += 2 if insn.code == LDDW else 1
    return sorted(starts)


@dataclass
class CountedProgram:
    """A program with the action-counting epilogue: new slots, shifted ext info, where the epilogue is."""

    insns: list[Insn]
    func_info: list[FuncInfo]
    line_info: list[LineInfo]
    epilogue_start: int
    exits_rewritten: int


def counter_epilogue(counter_map_fd: int) -> list[Insn]:
    """``counters[min(u32 r0, 5)] += 1`` (a PERCPU_ARRAY of u64: no atomics needed), then ``exit`` with r0."""
    alu64, alu32 = Cls.ALU64, Cls.ALU
    return [
        Insn(alu64 | AluOp.MOV | Src.X, 6, 0),  # r6 = r0 (callee-saved across the helper call)
        Insn(alu32 | AluOp.MOV | Src.X, 1, 6),  # w1 = w6: the kernel acts on the u32 verdict
        Insn(Cls.JMP | JmpOp.JLE | Src.K, 1, 0, 1, len(ACTION_SLOTS) - 2),  # if r1 <= 4 goto +1
        Insn(alu32 | AluOp.MOV | Src.K, 1, 0, 0, len(ACTION_SLOTS) - 1),  # w1 = 5 ("other")
        Insn(Cls.STX | Size.W | Mode.MEM, 10, 1, -4),  # *(u32 *)(r10 - 4) = r1
        Insn(alu64 | AluOp.MOV | Src.X, 2, 10),  # r2 = r10
        Insn(alu64 | AluOp.ADD | Src.K, 2, 0, 0, -4),  # r2 += -4
        *lddw(1, counter_map_fd, PseudoSrc.MAP_FD),  # r1 = counters
        Insn(Cls.JMP | JmpOp.CALL, 0, 0, 0, int(Helper.map_lookup_elem)),
        Insn(Cls.JMP | JmpOp.JEQ | Src.K, 0, 0, 3, 0),  # if r0 == 0 goto +3
        Insn(Cls.LDX | Size.DW | Mode.MEM, 1, 0, 0),  # r1 = *(u64 *)(r0 + 0)
        Insn(alu64 | AluOp.ADD | Src.K, 1, 0, 0, 1),  # r1 += 1
        Insn(Cls.STX | Size.DW | Mode.MEM, 0, 1, 0),  # *(u64 *)(r0 + 0) = r1
        Insn(alu64 | AluOp.MOV | Src.X, 0, 6),  # r0 = r6
        Insn(EXIT),
    ]


def add_action_counters(insns: Sequence[Insn], counter_map_fd: int, func_boundaries: Sequence[int] | None = None,
                        *, func_info: Sequence[FuncInfo] = (), line_info: Sequence[LineInfo] = ()) -> CountedProgram:
    """Route every main-function ``exit`` through `counter_epilogue` (see the module docstring).

    ``func_boundaries`` are the functions' start slots; by default they come
    from the call targets and func_info (`function_starts`).
    """
    insns = list(insns)
    starts = sorted(set(func_boundaries) if func_boundaries is not None else function_starts(insns, func_info))
    main_end = next((s for s in starts if s > 0), len(insns))
    epilogue = counter_epilogue(counter_map_fd)
    shift = len(epilogue)
    out: list[Insn] = []
    exits = 0
    pc = 0
    while pc < len(insns):
        insn = insns[pc]
        if insn.code == LDDW:
            out.extend(insns[pc:pc + 2])
            pc += 2
            continue
        if pc < main_end:
            if insn.is_exit:
                off = main_end - (pc + 1)
                insn = Insn(Cls.JMP | JmpOp.JA, 0, 0, off, 0) if off <= 0x7FFF else Insn(Cls.JMP32 | JmpOp.JA, 0, 0, 0, off)
                exits += 1
            elif insn.is_subprog_call and pc + 1 + insn.imm >= main_end:
                insn = insn.replace(imm=insn.imm + shift)
        out.append(insn)
        pc += 1
    out[main_end:main_end] = epilogue
    moved = lambda at: at + shift if at >= main_end else at
    fi = [FuncInfo(moved(f.insn), f.type_id) for f in func_info]
    li = [LineInfo(moved(x.insn), x.file_name_off, x.line_off, x.line, x.col, x.file, x.text) for x in line_info]
    return CountedProgram(out, fi, li, main_end, exits)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v
