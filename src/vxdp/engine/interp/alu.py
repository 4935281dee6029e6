"""Pure ALU semantics: one function per (operation, width), as the kernel computes them.

Each function maps the unsigned destination and source values to the unsigned
result, already truncated (and, for 32-bit operations, zero-extended) the way
the kernel's interpreter and x86-64 JIT leave the register:

- shift counts are masked to the width (``& 63`` / ``& 31``), as the
  interpreter does explicitly and x86 ``shl/shr/sar`` do in hardware;
- division by zero gives 0; modulo by zero leaves the destination unchanged,
  which for a 32-bit operation means its low half, zero-extended;
- signed division and modulo (``off == 1``) truncate toward zero, the remainder
  takes the dividend's sign, and ``INT_MIN / -1`` is ``INT_MIN`` (``% -1`` is 0).

The machine builds its per-instruction closures from these tables, so this is
the one place to read (and test) what an ALU instruction does.
"""

from __future__ import annotations

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
S32 = 0x80000000
S64 = 0x8000000000000000


def s64(v: int) -> int:
    """Unsigned 64-bit to signed."""
    return ((v & M64) ^ S64) - S64


def s32(v: int) -> int:
    """Low 32 bits as signed."""
    return ((v & M32) ^ S32) - S32


def _sdiv(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


def _smod(a: int, b: int) -> int:
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def _div64(a, b): return a // b if b else 0
def _mod64(a, b): return a % b if b else a
def _sdiv64(a, b): return _sdiv(s64(a), s64(b)) & M64 if b else 0
def _smod64(a, b): return _smod(s64(a), s64(b)) & M64 if b else a
def _div32(a, b): return (a & M32) // (b & M32) if b & M32 else 0
def _mod32(a, b): return (a & M32) % (b & M32) if b & M32 else a & M32
def _sdiv32(a, b): return _sdiv(s32(a), s32(b)) & M32 if b & M32 else 0
def _smod32(a, b): return _smod(s32(a), s32(b)) & M32 if b & M32 else a & M32


# op code (bits 4-7) -> f(dst, src) for ALU64; ``src`` is already the 64-bit operand.
ALU64 = {
    0x00: lambda a, b: (a + b) & M64,
    0x10: lambda a, b: (a - b) & M64,
    0x20: lambda a, b: (a * b) & M64,
    0x30: _div64,
    0x40: lambda a, b: a | b,
    0x50: lambda a, b: a & b,
    0x60: lambda a, b: (a << (b & 63)) & M64,
    0x70: lambda a, b: a >> (b & 63),
    0x80: lambda a, b: -a & M64,
    0x90: _mod64,
    0xA0: lambda a, b: a ^ b,
    0xB0: lambda a, b: b,
    0xC0: lambda a, b: (s64(a) >> (b & 63)) & M64,
}

ALU32 = {
    0x00: lambda a, b: (a + b) & M32,
    0x10: lambda a, b: (a - b) & M32,
    0x20: lambda a, b: (a * b) & M32,
    0x30: _div32,
    0x40: lambda a, b: (a | b) & M32,
    0x50: lambda a, b: a & b & M32,
    0x60: lambda a, b: ((a & M32) << (b & 31)) & M32,
    0x70: lambda a, b: (a & M32) >> (b & 31),
    0x80: lambda a, b: -a & M32,
    0x90: _mod32,
    0xA0: lambda a, b: (a ^ b) & M32,
    0xB0: lambda a, b: b & M32,
    0xC0: lambda a, b: (s32(a) >> (b & 31)) & M32,
}

# off == 1 turns DIV and MOD signed.
SIGNED64 = {0x30: _sdiv64, 0x90: _smod64}
SIGNED32 = {0x30: _sdiv32, 0x90: _smod32}


def movsx64(bits: int):
    """``MOVSX`` in ALU64: sign-extend the low ``bits`` of src to 64 bits."""
    sign, mask = 1 << (bits - 1), (1 << bits) - 1
    return lambda a, b: (((b & mask) ^ sign) - sign) & M64


def movsx32(bits: int):
    """``MOVSX`` in ALU (32): sign-extend the low ``bits`` to 32 bits, then zero-extend."""
    sign, mask = 1 << (bits - 1), (1 << bits) - 1
    return lambda a, b: (((b & mask) ^ sign) - sign) & M32


def bswap(bits: int):
    """Byte-swap the low ``bits`` of the value (``BPF_END`` to big-endian, and ``BSWAP``)."""
    nbytes = bits // 8
    return lambda a, b: int.from_bytes((a & ((1 << bits) - 1)).to_bytes(nbytes, "little"), "big")


def truncate(bits: int):
    """``BPF_END`` to little-endian on a little-endian host: keep the low ``bits``."""
    mask = (1 << bits) - 1
    return lambda a, b: a & mask
