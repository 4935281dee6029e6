"""The numbers the verifier tracks are sound: an abstract result covers every concrete result.

For random abstract scalars and concrete values inside them, each ALU operation's abstract
result (`vxdp.engine.verifier.scalar`) must contain the concrete one that the interpreter's ALU
computes, and a branch refinement (`vxdp.engine.verifier.branch`) must keep every pair of
values for which the condition holds that way. A verifier that loses a value here would prove
false facts, and accept programs it should not.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vxdp.bpf.isa import JmpOp
from vxdp.engine.interp import alu as concrete
from vxdp.engine.verifier.branch import refine
from vxdp.engine.verifier.scalar import Scalar, alu32, alu64, endian, neg, s64
from vxdp.engine.verifier.tnum import M64, Tnum

U64 = st.integers(0, M64)
INTERESTING = st.sampled_from([0, 1, 2, 7, 8, 31, 32, 63, 64, 255, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                               1 << 32, (1 << 63) - 1, 1 << 63, M64, M64 - 1])
VALUE = st.one_of(U64, INTERESTING, st.integers(0, 300))


@st.composite
def abstract(draw):
    """An abstract scalar and a concrete value it contains."""
    v = draw(VALUE)
    kind = draw(st.sampled_from(["const", "range", "mask", "unknown"]))
    if kind == "const":
        return Scalar.const(v), v
    if kind == "unknown":
        return Scalar.unknown(), v
    if kind == "range":
        lo = draw(st.integers(0, v))
        hi = draw(st.integers(v, min(M64, v + draw(st.sampled_from([0, 1, 10, 1 << 20, M64])))))
        return Scalar.urange(lo, hi), v
    mask = draw(U64)
    t = Tnum(v & ~mask & M64, mask)
    s = Scalar(t, 0, M64, -(1 << 63), (1 << 63) - 1).sync()
    assert s is not None
    return s, v


def contains(s: Scalar, v: int) -> bool:
    v &= M64
    return s.umin <= v <= s.umax and s.smin <= s64(v) <= s.smax and s.tnum.contains(v)


OPS = [0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0, 0xB0, 0xC0]


@settings(max_examples=1500, deadline=None)
@given(abstract(), abstract(), st.sampled_from(OPS), st.booleans())
def test_alu_results_cover_concrete_results(a, b, op, wide):
    (sa, va), (sb, vb) = a, b
    assert contains(sa, va) and contains(sb, vb)
    if wide:
        want = concrete.ALU64[op](va, vb)
        got = alu64(op, sa, sb)
    else:
        want = concrete.ALU32[op](va, vb)
        got = alu32(op, sa, sb)
    assert contains(got, want), (hex(va), hex(vb), got)


@settings(max_examples=500, deadline=None)
@given(abstract(), st.booleans(), st.sampled_from([16, 32, 64]), st.booleans())
def test_neg_and_byte_swaps_cover_concrete_results(a, wide, bits, swap):
    sa, va = a
    want = concrete.ALU64[0x80](va, 0) if wide else concrete.ALU32[0x80](va, 0)
    assert contains(neg(sa, wide), want)
    fn = concrete.bswap(bits) if swap else concrete.truncate(bits)
    assert contains(endian(sa, bits, swap), fn(va, 0))


CONDS = [JmpOp.JEQ, JmpOp.JNE, JmpOp.JGT, JmpOp.JGE, JmpOp.JLT, JmpOp.JLE, JmpOp.JSET,
         JmpOp.JSGT, JmpOp.JSGE, JmpOp.JSLT, JmpOp.JSLE]


def holds(op: JmpOp, a: int, b: int, wide: bool) -> bool:
    if not wide:
        a, b = a & 0xFFFFFFFF, b & 0xFFFFFFFF
        sa, sb = concrete.s32(a), concrete.s32(b)
    else:
        sa, sb = s64(a), s64(b)
    return {JmpOp.JEQ: a == b, JmpOp.JNE: a != b, JmpOp.JGT: a > b, JmpOp.JGE: a >= b, JmpOp.JLT: a < b,
            JmpOp.JLE: a <= b, JmpOp.JSET: bool(a & b), JmpOp.JSGT: sa > sb, JmpOp.JSGE: sa >= sb,
            JmpOp.JSLT: sa < sb, JmpOp.JSLE: sa <= sb}[op]


@settings(max_examples=1500, deadline=None)
@given(abstract(), abstract(), st.sampled_from(CONDS), st.booleans())
def test_branch_refinement_keeps_every_possible_pair(a, b, op, wide):
    (sa, va), (sb, vb) = a, b
    taken = holds(op, va, vb, wide)
    r = refine(op, sa, sb, taken, wide)
    assert r is not None, "the side the concrete values take was judged impossible"
    assert contains(r[0], va) and contains(r[1], vb), (hex(va), hex(vb), r)


@settings(max_examples=800, deadline=None)
@given(abstract(), abstract())
def test_tnum_union_and_subsumption(a, b):
    (sa, va), (sb, vb) = a, b
    u = sa.union(sb)
    assert contains(u, va) and contains(u, vb)
    assert u.subsumes(sa) and u.subsumes(sb)
