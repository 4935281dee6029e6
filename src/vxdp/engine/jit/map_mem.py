"""Raw memory access from numba code: an integer address turned into a typed view, in one place.

The map runtime's functions are called from JIT'd programs with plain addresses
(a descriptor, a key on the program's stack, a value), and the same functions
serve the user-space API with the addresses of numpy buffers. numba has no
pointer arithmetic on integers, so `as_ptr` is a one-instruction ``inttoptr``
intrinsic and `u8`/`i32`/`i64` wrap the pointer in a ``carray`` (a bounds-free
view: the callers' sizes come from the descriptor the runtime itself wrote).
`load64` reads 8 unaligned bytes in one ``mov``: a program's key may sit at any
stack offset.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["as_ptr", "i32", "i64", "load64", "u8"]


@intrinsic
def as_ptr(typingctx, addr):
    """``inttoptr``: the ``void *`` at integer address ``addr``."""
    def codegen(context, builder, sig, args):
        a = context.cast(builder, args[0], sig.args[0], types.int64)
        return builder.inttoptr(a, cgutils.voidptr_t)
    return types.voidptr(addr), codegen


@intrinsic
def load64(typingctx, addr):
    """The 8 bytes at ``addr`` (any alignment) as a little-endian uint64."""
    def codegen(context, builder, sig, args):
        a = context.cast(builder, args[0], sig.args[0], types.int64)
        return builder.load(builder.inttoptr(a, ir.IntType(64).as_pointer()), align=1)
    return types.uint64(addr), codegen


@njit(inline="always")
def u8(addr, n):
    return carray(as_ptr(addr), n, np.uint8)


@njit(inline="always")
def i32(addr, n):
    return carray(as_ptr(addr), n, np.int32)


@njit(inline="always")
def i64(addr, n):
    return carray(as_ptr(addr), n, np.int64)
