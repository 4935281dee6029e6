"""What the code generator and the helper lowering share: LLVM types, the view of a map, the load error."""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from ...bpf.isa import Size

I1, I8, I16, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
I8P = I8.as_pointer()
FUNC_TYPE = ir.FunctionType(I64, [I8P, I64, I64, I64, I64, I64, I64])
ENTRY_TYPE = ir.FunctionType(I64, [I8P, I64])
INT = {1: I8, 2: I16, 4: I32, 8: I64}
SIZE_BYTES = {Size.B: 1, Size.H: 2, Size.W: 4, Size.DW: 8}
M32 = 0xFFFFFFFF
LOAD_ACQ, STORE_REL, XCHG, CMPXCHG = 0x100, 0x110, 0xE1, 0xF1
RMW = {0x00: "add", 0x40: "or", 0x50: "and", 0xA0: "xor"}
ENTRY = "vxdp_entry"
BATCH = "vxdp_batch"


class JitLoadError(ValueError):
    """A program the JIT cannot translate (something our verifier let through that the JIT has no code for)."""


@dataclass(frozen=True)
class MapRef:
    """What the generated code needs of one map: its descriptor and, for arrays, where the values are."""

    handle: int
    desc: int  # address of the descriptor (what ``lddw MAP_FD`` gives)
    kind: int  # `maps.NativeKind`
    values: int  # array element storage (kind 1, 2) or the prog table (7); 0 for hash maps
    max_entries: int
    stride: int
    ncpus: int
    region: tuple[int, int] | None  # [lo, hi) of the memory its values live in, for run-time checks


ARRAY, PERCPU_ARRAY, PROG_ARRAY = 1, 2, 7
