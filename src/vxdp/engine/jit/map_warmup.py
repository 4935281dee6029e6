"""The map table functions typed before a daemon serves (see `vxdp.jitcache` for why).

The user-space `NativeMap` API calls `vxdp.engine.jit.map_table`'s numba
functions with Python ints and bools; one map of each hash kind and both array
kinds, each taken through update, lookup, next_key and delete, types every one
of them as the API does. The C entry points need no call: they are compiled (or
loaded from the cache) when `map_table` is imported, which this module does.
"""

from __future__ import annotations

from ...bpf.mapspec import MapSpec, MapType
from .maps import make_native_map

__all__ = ["maps"]


def maps() -> None:
    """Every user-space operation once on each kind of map (tiny maps on one CPU)."""
    for map_type in (MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.HASH, MapType.LRU_PERCPU_HASH):
        m = make_native_map(MapSpec("warmup", map_type, 4, 8, 2), 0, ncpus=1)
        key = bytes(4)
        m.update(key, bytes(8))
        m.lookup(key)
        m.next_key(None)
        m.next_key(key)
        if map_type in (MapType.HASH, MapType.LRU_PERCPU_HASH):
            m.delete(key)
        m.close()
