"""What a conditional jump between two scalars teaches: whether it can go each way, and the bounds on each side.

`refine` answers for one direction of one jump: the operands' new abstract
values when the jump goes that way, or ``None`` when it cannot (a dead branch,
which the verifier then does not walk, as the kernel does with
``is_branch_taken``). 64-bit comparisons sharpen both operands; a JMP32
sharpens them only when their upper halves are known to be zero (the values
clang compares with ``w`` registers), and otherwise only decides
reachability from the 32-bit bounds.
"""

from __future__ import annotations

from ...bpf.isa import JmpOp
from .scalar import S64_MAX, S64_MIN, Scalar
from .tnum import M32, M64, Tnum

# the opposite condition, for the fall-through side
NEGATE = {JmpOp.JEQ: JmpOp.JNE, JmpOp.JNE: JmpOp.JEQ, JmpOp.JGT: JmpOp.JLE, JmpOp.JLE: JmpOp.JGT,
          JmpOp.JGE: JmpOp.JLT, JmpOp.JLT: JmpOp.JGE, JmpOp.JSGT: JmpOp.JSLE, JmpOp.JSLE: JmpOp.JSGT,
          JmpOp.JSGE: JmpOp.JSLT, JmpOp.JSLT: JmpOp.JSGE}
# a op b  ==  b swapped(op) a
SWAP = {JmpOp.JEQ: JmpOp.JEQ, JmpOp.JNE: JmpOp.JNE, JmpOp.JGT: JmpOp.JLT, JmpOp.JLT: JmpOp.JGT,
        JmpOp.JGE: JmpOp.JLE, JmpOp.JLE: JmpOp.JGE, JmpOp.JSGT: JmpOp.JSLT, JmpOp.JSLT: JmpOp.JSGT,
        JmpOp.JSGE: JmpOp.JSLE, JmpOp.JSLE: JmpOp.JSGE}


def _with(a: Scalar, *, umin=None, umax=None, smin=None, smax=None, tnum=None) -> Scalar | None:
    return Scalar(a.tnum if tnum is None else tnum, a.umin if umin is None else max(a.umin, umin),
                  a.umax if umax is None else min(a.umax, umax), a.smin if smin is None else max(a.smin, smin),
                  a.smax if smax is None else min(a.smax, smax)).sync()


def _refine64(op: JmpOp, a: Scalar, b: Scalar) -> tuple[Scalar, Scalar] | None:
    """Both operands given that ``a op b`` holds (64-bit)."""
    if op == JmpOp.JEQ:
        t = a.tnum.intersect(b.tnum)
        if (a.tnum.value ^ b.tnum.value) & ~a.tnum.mask & ~b.tnum.mask & M64:
            return None
        na = _with(a, umin=b.umin, umax=b.umax, smin=b.smin, smax=b.smax, tnum=t)
        return None if na is None else (na, na)
    if op == JmpOp.JNE:
        if a.is_const and b.is_const and a.value == b.value:
            return None
        na, nb = a, b
        if b.is_const:
            na = _exclude(a, b.value)
        if a.is_const:
            nb = _exclude(b, a.value)
        return None if na is None or nb is None else (na, nb)
    if op == JmpOp.JSET:
        if b.is_const and not (a.tnum.umax & b.value):
            return None
        return a, b
    if op in (JmpOp.JLT, JmpOp.JLE, JmpOp.JSLT, JmpOp.JSLE):
        r = _refine64(SWAP[op], b, a)
        return None if r is None else (r[1], r[0])
    strict = op in (JmpOp.JGT, JmpOp.JSGT)
    d = 1 if strict else 0
    if op in (JmpOp.JGT, JmpOp.JGE):  # a > b / a >= b, unsigned
        if b.umin + d > M64 or a.umax - d < 0:
            return None
        na, nb = _with(a, umin=b.umin + d), _with(b, umax=a.umax - d)
    else:  # signed
        if b.smin + d > S64_MAX or a.smax - d < S64_MIN:
            return None
        na, nb = _with(a, smin=b.smin + d), _with(b, smax=a.smax - d)
    return None if na is None or nb is None else (na, nb)


def _exclude(a: Scalar, v: int) -> Scalar | None:
    if a.umin == v:
        return _with(a, umin=v + 1) if v < M64 else None
    if a.umax == v:
        return _with(a, umax=v - 1) if v > 0 else None
    return a


def _not_jset(a: Scalar, b: Scalar) -> tuple[Scalar, Scalar] | None:
    if b.is_const:
        if a.tnum.value & b.value:
            return None
        na = _with(a, tnum=Tnum(a.tnum.value, a.tnum.mask & ~b.value & M64))
        return None if na is None else (na, b)
    return a, b


def _decide32(op: JmpOp, a: Scalar, b: Scalar) -> bool | None:
    """Whether ``a op b`` on the low halves certainly holds (True), certainly not (False), or either."""
    (ua, uA), (ub, uB) = a.u32_bounds(), b.u32_bounds()
    (sa, sA), (sb, sB) = a.s32_bounds(), b.s32_bounds()
    ta, tb = a.tnum.subreg(), b.tnum.subreg()
    if op == JmpOp.JEQ:
        if ta.is_const and tb.is_const:
            return ta.value == tb.value
        if uA < ub or uB < ua or (ta.value ^ tb.value) & ~ta.mask & ~tb.mask:
            return False
        return None
    if op == JmpOp.JNE:
        r = _decide32(JmpOp.JEQ, a, b)
        return None if r is None else not r
    if op == JmpOp.JSET:
        if tb.is_const and not (ta.umax & tb.value):
            return False
        if tb.is_const and ta.value & tb.value:
            return True
        return None
    table = {JmpOp.JGT: (ua > uB, uA <= ub), JmpOp.JGE: (ua >= uB, uA < ub), JmpOp.JLT: (uA < ub, ua >= uB),
             JmpOp.JLE: (uA <= ub, ua > uB), JmpOp.JSGT: (sa > sB, sA <= sb), JmpOp.JSGE: (sa >= sB, sA < sb),
             JmpOp.JSLT: (sA < sb, sa >= sB), JmpOp.JSLE: (sA <= sb, sa > sB)}
    yes, no = table[op]
    return True if yes else False if no else None


def refine(op: JmpOp, a: Scalar, b: Scalar, taken: bool, wide: bool) -> tuple[Scalar, Scalar] | None:
    """The operands on the side of ``if a op b`` given by ``taken``; ``None`` if that side cannot happen."""
    if not wide:
        cond = op if taken else NEGATE.get(op, op)
        decided = _decide32(op, a, b)
        if decided is not None and decided != taken:
            return None
        if op == JmpOp.JSET:
            return (a, b)
        small = a.umax <= M32 and b.umax <= M32
        if small and (op in (JmpOp.JEQ, JmpOp.JNE, JmpOp.JGT, JmpOp.JGE, JmpOp.JLT, JmpOp.JLE)
                      or (a.umax <= 0x7FFFFFFF and b.umax <= 0x7FFFFFFF)):
            return _refine64(cond, a, b)
        return (a, b)
    if op == JmpOp.JSET:
        return _refine64(op, a, b) if taken else _not_jset(a, b)
    return _refine64(op if taken else NEGATE[op], a, b)
