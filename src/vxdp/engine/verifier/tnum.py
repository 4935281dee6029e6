"""Tracked numbers: which bits of a 64-bit value are known, and their values (the kernel's ``tnum``).

A `Tnum` is ``(value, mask)``: bits set in ``mask`` are unknown, the others equal
``value``'s. Arithmetic on tnums is sound: the result covers every value the
operation could give on values the operands cover. The operations follow
``kernel/bpf/tnum.c`` so bit-level facts (alignment, ``& 0xff``) match the kernel's.
"""

from __future__ import annotations

from dataclasses import dataclass

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class Tnum:
    value: int
    mask: int

    @staticmethod
    def const(v: int) -> Tnum:
        return Tnum(v & M64, 0)

    @staticmethod
    def range(lo: int, hi: int) -> Tnum:
        """The tnum covering every value in ``[lo, hi]`` (unsigned)."""
        chi = lo ^ hi
        bits = chi.bit_length()
        if bits > 63:
            return UNKNOWN
        delta = (1 << bits) - 1
        return Tnum(lo & ~delta & M64, delta)

    @property
    def is_const(self) -> bool:
        return self.mask == 0

    @property
    def umin(self) -> int:
        return self.value

    @property
    def umax(self) -> int:
        return self.value | self.mask

    def contains(self, v: int) -> bool:
        return (v & ~self.mask & M64) == self.value

    def subsumes(self, other: Tnum) -> bool:
        """Every value of ``other`` is one of ours (``tnum_in``)."""
        if other.mask & ~self.mask:
            return False
        return self.value == (other.value & ~self.mask)

    def add(self, b: Tnum) -> Tnum:
        sm = (self.mask + b.mask) & M64
        sv = (self.value + b.value) & M64
        sigma = (sm + sv) & M64
        chi = sigma ^ sv
        mu = chi | self.mask | b.mask
        return Tnum(sv & ~mu & M64, mu & M64)

    def sub(self, b: Tnum) -> Tnum:
        dv = (self.value - b.value) & M64
        alpha = (dv + self.mask) & M64
        beta = (dv - b.mask) & M64
        chi = alpha ^ beta
        mu = chi | self.mask | b.mask
        return Tnum(dv & ~mu & M64, mu & M64)

    def and_(self, b: Tnum) -> Tnum:
        alpha = self.value | self.mask
        beta = b.value | b.mask
        v = self.value & b.value
        return Tnum(v, alpha & beta & ~v & M64)

    def or_(self, b: Tnum) -> Tnum:
        v = self.value | b.value
        mu = self.mask | b.mask
        return Tnum(v, mu & ~v & M64)

    def xor(self, b: Tnum) -> Tnum:
        v = self.value ^ b.value
        mu = self.mask | b.mask
        return Tnum(v & ~mu & M64, mu)

    def mul(self, b: Tnum) -> Tnum:
        a, acc_v = self, (self.value * b.value) & M64
        acc_m = Tnum(0, 0)
        while a.value or a.mask:
            if a.value & 1:
                acc_m = acc_m.add(Tnum(0, b.mask))
            elif a.mask & 1:
                acc_m = acc_m.add(Tnum(0, b.value | b.mask))
            a = a.rshift(1)
            b = b.lshift(1)
        return Tnum(acc_v, 0).add(acc_m)

    def lshift(self, n: int) -> Tnum:
        return Tnum((self.value << n) & M64, (self.mask << n) & M64)

    def rshift(self, n: int) -> Tnum:
        return Tnum(self.value >> n, self.mask >> n)

    def arshift(self, n: int, bits: int = 64) -> Tnum:
        def sx(v: int) -> int:
            return v - (1 << bits) if v >> (bits - 1) & 1 else v
        top = (1 << bits) - 1
        return Tnum((sx(self.value) >> n) & top, (sx(self.mask) >> n) & top)

    def intersect(self, b: Tnum) -> Tnum:
        v = self.value | b.value
        mu = self.mask & b.mask
        return Tnum(v & ~mu & M64, mu)

    def union(self, b: Tnum) -> Tnum:
        """The least tnum covering both (used when two states are joined)."""
        mu = self.mask | b.mask | (self.value ^ b.value)
        return Tnum(self.value & ~mu & M64, mu)

    def subreg(self) -> Tnum:
        """The low 32 bits, zero-extended."""
        return Tnum(self.value & M32, self.mask & M32)

    def cast(self, size: int) -> Tnum:
        """The low ``size`` bytes, zero-extended."""
        m = (1 << (8 * size)) - 1
        return Tnum(self.value & m, self.mask & m)

    def with_subreg(self, low: Tnum) -> Tnum:
        """The upper 32 bits of ``self`` with ``low`` as the lower 32."""
        hi = Tnum(self.value & ~M32 & M64, self.mask & ~M32 & M64)
        return hi.or_(low.subreg())

    def __str__(self) -> str:
        if self.is_const:
            return f"{self.value:#x}"
        return f"(value={self.value:#x}; mask={self.mask:#x})"


UNKNOWN = Tnum(0, M64)
