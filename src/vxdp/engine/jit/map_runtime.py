"""The addresses of the C entry points JIT'd programs call for map helpers (the JIT contract).

``lookup(desc, key, cpu) -> u8*``, ``update(desc, key, value, flags, cpu) -> i64`` and
``delete(desc, key, cpu) -> i64`` are numba ``cfunc``s defined in
`vxdp.engine.jit.map_table`, over the same table code the user-space API runs
(see there why they live in that module). ``cache=True`` keeps their machine
code in numba's cache, so a process after the first loads it at import.
"""

from __future__ import annotations

from .map_table import c_delete, c_lookup, c_update

__all__ = ["ADDRESSES"]

ADDRESSES: dict[str, int] = {"lookup": c_lookup.address, "update": c_update.address, "delete": c_delete.address}
