"""A scalar's abstract value: known bits plus signed and unsigned 64-bit bounds, and the 32-bit view.

`Scalar` is what the verifier knows about a number in a register or a stack slot:
a `Tnum` and the intervals ``[umin, umax]`` (unsigned) and ``[smin, smax]``
(signed). Each operation computes all three and then lets them sharpen each
other (`Scalar.sync`, the kernel's ``reg_bounds_sync``). The 32-bit bounds are
derived from the 64-bit ones (`u32_bounds`, `s32_bounds`) rather than kept apart:
every 32-bit ALU operation zero-extends, so for the values clang writes they are
the same facts; a JMP32 on a register whose upper half is unknown learns less
than the kernel would, which can only make us refuse, never accept wrongly.

Concrete results come from `vxdp.engine.interp.alu`, the interpreter's ALU
tables, so a constant folds exactly as it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..interp import alu
from .tnum import M32, M64, UNKNOWN, Tnum

S64_MIN, S64_MAX = -(1 << 63), (1 << 63) - 1


def s64(v: int) -> int:
    v &= M64
    return v - (1 << 64) if v >> 63 else v


@dataclass(frozen=True, slots=True)
class Scalar:
    tnum: Tnum
    umin: int
    umax: int
    smin: int
    smax: int

    @staticmethod
    def const(v: int) -> Scalar:
        v &= M64
        return Scalar(Tnum.const(v), v, v, s64(v), s64(v))

    @staticmethod
    def unknown() -> Scalar:
        return UNKNOWN_SCALAR

    @staticmethod
    def urange(lo: int, hi: int) -> Scalar:
        return Scalar(Tnum.range(lo, hi), lo, hi, S64_MIN, S64_MAX).sync() or UNKNOWN_SCALAR

    @property
    def is_const(self) -> bool:
        return self.tnum.is_const

    @property
    def value(self) -> int:
        return self.tnum.value

    def u32_bounds(self) -> tuple[int, int]:
        if self.umin >> 32 == self.umax >> 32:
            return self.umin & M32, self.umax & M32
        t = self.tnum.subreg()
        return t.umin, t.umax

    def s32_bounds(self) -> tuple[int, int]:
        lo, hi = self.u32_bounds()
        if (lo >> 31) == (hi >> 31):
            return alu.s32(lo), alu.s32(hi)
        return -(1 << 31), (1 << 31) - 1

    def sync(self) -> Scalar | None:
        """Bounds and bits sharpened by each other; ``None`` when no value fits (a dead branch)."""
        t, umin, umax, smin, smax = self.tnum, self.umin, self.umax, self.smin, self.smax
        for _ in range(2):
            umin, umax = max(umin, t.umin), min(umax, t.umax)
            smin = max(smin, s64(t.value | (t.mask & (1 << 63))))
            smax = min(smax, s64(t.value | (t.mask & ((1 << 63) - 1))))
            if smin >= 0 or smax < 0:  # the sign is known: the intervals are one
                umin, umax = max(umin, smin & M64), min(umax, smax & M64)
            if umax <= S64_MAX or umin > S64_MAX:  # the unsigned interval does not cross the sign
                smin, smax = max(smin, s64(umin)), min(smax, s64(umax))
            if umin > umax or smin > smax:
                return None
            t = t.intersect(Tnum.range(umin, umax))
            if t.value & ~t.mask & ~M64 or (t.value & t.mask):
                return None
            if not (t.umin <= umax and t.umax >= umin):
                return None
        return Scalar(t, umin, umax, smin, smax)

    def union(self, o: Scalar) -> Scalar:
        return Scalar(self.tnum.union(o.tnum), min(self.umin, o.umin), max(self.umax, o.umax),
                      min(self.smin, o.smin), max(self.smax, o.smax))

    def subsumes(self, o: Scalar) -> bool:
        return (self.umin <= o.umin and self.umax >= o.umax and self.smin <= o.smin and self.smax >= o.smax
                and self.tnum.subsumes(o.tnum))

    def truncate(self, size: int) -> Scalar:
        """The low ``size`` bytes, zero-extended (a 32-bit ALU result, a narrow load, ``le16``)."""
        if size >= 8:
            return self
        bits = 8 * size
        if self.umin >> bits == self.umax >> bits:
            m = (1 << bits) - 1
            lo, hi = self.umin & m, self.umax & m
        else:
            lo, hi = 0, (1 << bits) - 1
        return Scalar(self.tnum.cast(size), lo, hi, S64_MIN, S64_MAX).sync() or Scalar.urange(0, (1 << bits) - 1)

    def sign_extend(self, bits: int) -> Scalar:
        """The low ``bits`` sign-extended to 64 (``movsx``, ``ldsx``)."""
        low = self.truncate(bits // 8)
        if low.is_const:
            return Scalar.const(alu.movsx64(bits)(0, low.value))
        if low.umax < 1 << (bits - 1):
            return low
        half = 1 << (bits - 1)
        return Scalar(UNKNOWN, 0, M64, -half, half - 1).sync() or UNKNOWN_SCALAR

    def __str__(self) -> str:
        if self.is_const:
            return f"{s64(self.value)}" if self.smin < 0 else f"{self.value}"
        parts = []
        if self.umin:
            parts.append(f"umin={self.umin}")
        if self.umax != M64:
            parts.append(f"umax={self.umax}")
        if self.smin != S64_MIN and self.smin != self.umin:
            parts.append(f"smin={self.smin}")
        if self.smax != S64_MAX and self.smax != self.umax:
            parts.append(f"smax={self.smax}")
        if self.tnum.mask != M64:
            parts.append(f"var_off={self.tnum}")
        return "(" + ",".join(parts) + ")" if parts else ""


UNKNOWN_SCALAR = Scalar(UNKNOWN, 0, M64, S64_MIN, S64_MAX)


def _from_u(t: Tnum, lo: int, hi: int) -> Scalar:
    if lo < 0 or hi > M64:
        lo, hi = 0, M64
    return Scalar(t, lo, hi, S64_MIN, S64_MAX).sync() or Scalar(t, 0, M64, S64_MIN, S64_MAX)


def _from_s(t: Tnum, lo: int, hi: int, u: tuple[int, int] = (0, M64)) -> Scalar:
    if lo < S64_MIN or hi > S64_MAX:
        lo, hi = S64_MIN, S64_MAX
    return Scalar(t, u[0], u[1], lo, hi).sync() or Scalar(t, 0, M64, S64_MIN, S64_MAX)


def alu64(op: int, a: Scalar, b: Scalar, signed: bool = False) -> Scalar:
    """``a op b`` for a 64-bit ALU opcode (bits 4-7 of the code); ``signed`` for sdiv and smod.

    Division and modulo give an unknown number even of constants, as in the kernel (which
    does not track them): knowing more would accept programs the kernel refuses."""
    if op in (0x30, 0x90):
        return UNKNOWN_SCALAR
    if a.is_const and b.is_const:
        fn = alu.SIGNED64[op] if signed and op in alu.SIGNED64 else alu.ALU64[op]
        return Scalar.const(fn(a.value, b.value))
    if op == 0x00:  # add
        u = (a.umin + b.umin, a.umax + b.umax)
        s = (a.smin + b.smin, a.smax + b.smax)
        t = a.tnum.add(b.tnum)
        return _both(t, u, s)
    if op == 0x10:  # sub
        u = (a.umin - b.umax, a.umax - b.umin)
        s = (a.smin - b.smax, a.smax - b.smin)
        return _both(a.tnum.sub(b.tnum), u, s)
    if op == 0x20:  # mul
        t = a.tnum.mul(b.tnum)
        if a.umax <= M32 and b.umax <= M32:
            return _from_u(t, a.umin * b.umin, a.umax * b.umax)
        return _from_u(t, 0, M64)
    if op == 0x50:  # and
        t = a.tnum.and_(b.tnum)
        return _from_u(t, t.value, min(a.umax, b.umax))
    if op == 0x40:  # or
        t = a.tnum.or_(b.tnum)
        return _from_u(t, max(a.umin, b.umin), t.umax)
    if op == 0xA0:  # xor
        t = a.tnum.xor(b.tnum)
        return _from_u(t, t.umin, t.umax)
    if op in (0x60, 0x70, 0xC0):
        if not b.is_const:
            return UNKNOWN_SCALAR
        n = b.value & 63
        if op == 0x60:
            t = a.tnum.lshift(n)
            if a.umax << n <= M64:
                return _from_u(t, a.umin << n, a.umax << n)
            return _from_u(t, t.umin, t.umax)
        if op == 0x70:
            return _from_u(a.tnum.rshift(n), a.umin >> n, a.umax >> n)
        return _from_s(a.tnum.arshift(n), a.smin >> n, a.smax >> n)
    if op == 0xB0:
        return b
    return UNKNOWN_SCALAR


def _both(t: Tnum, u: tuple[int, int], s: tuple[int, int]) -> Scalar:
    ulo, uhi = u if u[0] >= 0 and u[1] <= M64 else (0, M64)
    slo, shi = s if s[0] >= S64_MIN and s[1] <= S64_MAX else (S64_MIN, S64_MAX)
    return Scalar(t, ulo, uhi, slo, shi).sync() or Scalar(t, 0, M64, S64_MIN, S64_MAX)


def alu32(op: int, a: Scalar, b: Scalar, signed: bool = False) -> Scalar:
    """``a op b`` for a 32-bit ALU opcode: computed on the zero-extended low halves, then truncated."""
    if op in (0x30, 0x90):
        return Scalar.urange(0, M32)
    if a.is_const and b.is_const:
        return Scalar.const(alu.ALU32[op](a.value, b.value))
    la, lb = a.truncate(4), b.truncate(4)
    if op == 0xC0:
        if op == 0xC0 and lb.is_const:
            n = lb.value & 31
            lo, hi = a.s32_bounds()
            return Scalar.urange(0, M32) if lo < 0 <= hi else _from_u(
                la.tnum.arshift(n, 32), min((lo >> n) & M32, (hi >> n) & M32), max((lo >> n) & M32, (hi >> n) & M32))
        return Scalar.urange(0, M32)
    if op in (0x60, 0x70) and lb.is_const:
        lb = Scalar.const(lb.value & 31)
    return alu64(op, la, lb).truncate(4)


def neg(a: Scalar, wide: bool) -> Scalar:
    """``-a``: ``0 - a``, so the kernel's bounds tracking of ``neg`` (6.x) is matched."""
    return (alu64 if wide else alu32)(0x10, Scalar.const(0), a)


def endian(a: Scalar, bits: int, swap: bool) -> Scalar:
    """``le`` truncates; ``be``/``bswap`` swap the bytes of the known bits (exact for constants)."""
    low = a.truncate(bits // 8)
    if not swap:
        return low
    t = low.tnum
    nbytes = bits // 8
    def sw(v: int) -> int:
        return int.from_bytes(v.to_bytes(nbytes, "little"), "big")
    swapped = Tnum(sw(t.value), sw(t.mask))
    return _from_u(swapped, swapped.umin, swapped.umax)
