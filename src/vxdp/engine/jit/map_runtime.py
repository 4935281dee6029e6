"""The C entry points JIT'd programs call for map helpers, and their addresses.

``lookup(desc, key, cpu) -> u8*``, ``update(desc, key, value, flags, cpu) -> i64`` and
``delete(desc, key, cpu) -> i64`` (the JIT contract) are numba ``cfunc``s over
`vxdp.engine.jit.map_table`, the same code the user-space API runs. They are
declared with int64 arguments and result: on x86-64 a pointer and a 64-bit
integer travel in the same registers, and one integer type means the table
functions are compiled once for both callers. ``cache=True`` keeps their machine
code in numba's cache beside this file, so a process after the first loads it.
"""

from __future__ import annotations

from numba import cfunc, types

from .map_table import prog_delete, prog_lookup, prog_update

__all__ = ["ADDRESSES", "c_delete", "c_lookup", "c_update"]

_i64 = types.int64


@cfunc(_i64(_i64, _i64, _i64), nopython=True, cache=True)
def c_lookup(desc, key, cpu):
    return prog_lookup(desc, key, cpu)


@cfunc(_i64(_i64, _i64, _i64, _i64, _i64), nopython=True, cache=True)
def c_update(desc, key, value, flags, cpu):
    return prog_update(desc, key, value, flags, cpu)


@cfunc(_i64(_i64, _i64, _i64), nopython=True, cache=True)
def c_delete(desc, key, cpu):
    return prog_delete(desc, key, cpu)


ADDRESSES: dict[str, int] = {"lookup": c_lookup.address, "update": c_update.address, "delete": c_delete.address}
