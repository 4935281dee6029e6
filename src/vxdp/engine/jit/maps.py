"""Maps of the JIT engine: the kernel's semantics in native memory that programs and user space share.

`make_native_map` builds a `NativeMap` from a `MapSpec`: a descriptor (16
little-endian uint64 words, the JIT contract's layout; ``NativeMap.desc`` is its
address) and preallocated numpy storage the descriptor points at. JIT'd code
reads array values straight from the storage and calls the C entry points of
`vxdp.engine.jit.map_runtime` for everything else; the user-space `Map` API here
runs the same compiled table functions (`vxdp.engine.jit.map_table`) on the
same memory, so a program's store through a value pointer is what the next
`lookup` returns, and a user's `update` is what the next packet sees.

The user-space rules are the interpreter's (`vxdp.engine.interp.maps`), which
are the kernel's: the order of checks (key and value lengths, then frozen, then
flags), the errnos, ``next_key`` of a missing key giving the first key, per-CPU
values packed at ``percpu_value_stride`` per possible CPU (padding read back as
zeros), hash iteration in insertion order and exact LRU. Wrong key or value
lengths are the caller's bug, not the kernel's answer: `MapSpecError`, as there.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from enum import IntEnum

import numpy as np

from ...bpf.mapapi import Map, freezes_after_init
from ...bpf.mapspec import (
    HASH_TYPES,
    MapFlag,
    MapSpec,
    MapType,
    UpdateFlag,
    percpu_value_stride,
    possible_cpus,
)
from ..interp.maps import MapSpecError
from ..prog_slots import ProgSlots
from . import map_table as t

__all__ = ["NativeArrayMap", "NativeHashMap", "NativeKind", "NativeMap", "NativeProgArrayMap", "make_native_map"]


class NativeKind(IntEnum):
    """Descriptor word 0: what the runtime's functions do with the map."""

    ARRAY = t.KIND_ARRAY
    PERCPU_ARRAY = t.KIND_PERCPU_ARRAY
    HASH = t.KIND_HASH
    PERCPU_HASH = t.KIND_PERCPU_HASH
    LRU_HASH = t.KIND_LRU_HASH
    LRU_PERCPU_HASH = t.KIND_LRU_PERCPU_HASH
    PROG_ARRAY = t.KIND_PROG_ARRAY


_KINDS = {MapType.ARRAY: NativeKind.ARRAY, MapType.PERCPU_ARRAY: NativeKind.PERCPU_ARRAY,
          MapType.HASH: NativeKind.HASH, MapType.PERCPU_HASH: NativeKind.PERCPU_HASH,
          MapType.LRU_HASH: NativeKind.LRU_HASH, MapType.LRU_PERCPU_HASH: NativeKind.LRU_PERCPU_HASH,
          MapType.PROG_ARRAY: NativeKind.PROG_ARRAY}


MAX_MAP_BYTES = 1 << 30  # one map's preallocated storage; above it a create is ENOMEM (a guest's spec is input)


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {what}")


def _zeroed(nbytes: int) -> np.ndarray:
    """``nbytes`` zeroed bytes, 8-byte aligned (a uint64 allocation seen as bytes)."""
    return np.zeros(max(1, (nbytes + 7) // 8), np.uint64).view(np.uint8)[:max(nbytes, 1)]


class NativeMap(Map):
    """Common parts: the descriptor, scratch buffers for user-space keys and values, checks, freeze.

    The scratch buffers are per map, so user-space calls on one map come from one thread at a time (the
    engine's loop thread, as the host runs them); programs never touch them."""

    def __init__(self, spec: MapSpec, handle: int, ncpus: int | None):
        kind = _KINDS.get(spec.type)
        if kind is None:
            raise _err(errno.EINVAL, f"map {spec.name!r}: type {spec.type!r} not supported by the JIT")
        if spec.key_size <= 0 and spec.type in HASH_TYPES or spec.value_size <= 0 or spec.max_entries <= 0:
            raise _err(errno.EINVAL, f"map {spec.name!r}: key_size, value_size and max_entries must be > 0")
        self.spec = spec
        self.handle = handle
        self.kind = kind
        self.ncpus = ncpus or possible_cpus()
        self.stride = percpu_value_stride(spec.value_size)
        self._desc = np.zeros(t.DESC_WORDS, np.uint64)
        self._desc[:t.W_VALUES] = [kind, spec.key_size, spec.value_size, spec.max_entries, self.ncpus, self.stride]
        self._desc[t.W_RDONLY_PROG] = 1 if spec.flags & MapFlag.RDONLY_PROG else 0
        self._check_size(spec.key_size + self.user_value_size)
        self._key = _zeroed(max(spec.key_size, 8))
        self._value = _zeroed(self.user_value_size)
        self._frozen = False

    def _check_size(self, nbytes: int) -> None:
        """Refuse a map whose storage would pass `MAX_MAP_BYTES` before allocating any of it."""
        if nbytes > MAX_MAP_BYTES:
            raise _err(errno.ENOMEM, f"map {self.spec.name!r}: {nbytes} bytes of storage, more than the "
                       f"{MAX_MAP_BYTES} one map may take")

    @property
    def desc(self) -> int:
        """Address of the descriptor (valid until `close`)."""
        return self._desc.ctypes.data

    @property
    def frozen(self) -> bool:
        return self._frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self._frozen = bool(value)
        self._desc[t.W_FROZEN] = 1 if value else 0

    @property
    def user_value_size(self) -> int:
        return self.spec.user_value_size(self.ncpus)

    def _key_addr(self, key: bytes) -> int:
        if len(key) != self.spec.key_size:
            raise MapSpecError(f"map {self.spec.name!r}: key of {len(key)} bytes, expected {self.spec.key_size}")
        self._key[:len(key)] = np.frombuffer(bytes(key), np.uint8)
        return self._key.ctypes.data

    def _value_addr(self, value: bytes) -> int:
        """User space's value in the scratch buffer; per-CPU padding dropped (read back as zeros)."""
        if len(value) != self.user_value_size:
            raise MapSpecError(
                f"map {self.spec.name!r}: value of {len(value)} bytes, expected {self.user_value_size}")
        self._value[:] = np.frombuffer(bytes(value), np.uint8)
        return self._value.ctypes.data

    def _check_writable(self) -> None:
        if self._frozen:
            raise _err(errno.EPERM, f"map {self.spec.name!r} is frozen")

    @staticmethod
    def _check_flags(flags: int) -> None:
        if flags not in (UpdateFlag.ANY, UpdateFlag.NOEXIST, UpdateFlag.EXIST):
            raise _err(errno.EINVAL, f"update flags {flags:#x}")

    def _pack(self, base: np.ndarray, offsets: list[int]) -> bytes:
        """The user-space value: each slot's ``value_size`` bytes, padded with zeros to ``stride`` for per-CPU."""
        size = self.spec.value_size
        if not self.spec.is_percpu:
            return base[offsets[0]:offsets[0] + size].tobytes()
        pad = bytes(self.stride - size)
        return b"".join(base[o:o + size].tobytes() + pad for o in offsets)

    def freeze(self) -> None:
        if self._frozen:
            raise _err(errno.EPERM, f"map {self.spec.name!r} is already frozen")
        self.frozen = True

    def close(self) -> None:
        """Drop the storage and mark the descriptor dead (kind 0); its address is no longer valid. The
        engine closes a map only once no program that references it remains. Idempotent."""
        self._desc[t.W_KIND] = 0
        for name in ("values", "table", "keys_mem", "buckets", "meta", "state"):
            if getattr(self, name, None) is not None:
                setattr(self, name, None)


class NativeArrayMap(NativeMap):
    """ARRAY and PERCPU_ARRAY (global data included): ``max_entries`` zeroed values keyed by a u32 index."""

    def __init__(self, spec: MapSpec, handle: int, ncpus: int | None):
        super().__init__(spec, handle, ncpus)
        if spec.key_size != 4:
            raise _err(errno.EINVAL, f"array map {spec.name!r}: key_size must be 4")
        slots = self.ncpus if spec.is_percpu else 1
        self._check_size(slots * spec.max_entries * self.stride)
        self.values = _zeroed(slots * spec.max_entries * self.stride)
        self._desc[t.W_VALUES] = self.values.ctypes.data
        if spec.data is not None:
            self.values[:spec.value_size] = np.frombuffer(
                bytes(spec.data[:spec.value_size]).ljust(spec.value_size, b"\0"), np.uint8)

    def _offsets(self, i: int) -> list[int]:
        if not self.spec.is_percpu:
            return [i * self.stride]
        return [(c * self.spec.max_entries + i) * self.stride for c in range(self.ncpus)]

    def lookup(self, key: bytes) -> bytes | None:
        self._key_addr(key)
        i = int.from_bytes(key, "little")
        return self._pack(self.values, self._offsets(i)) if i < self.spec.max_entries else None

    def update(self, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
        k = self._key_addr(key)
        v = self._value_addr(value)
        self._check_writable()
        self._check_flags(flags)
        rc = t.array_update(self.desc, k, v, int(flags), 0, True)
        if rc == -errno.E2BIG:
            raise _err(errno.E2BIG, f"index {int.from_bytes(key, 'little')} >= max_entries {self.spec.max_entries}")
        if rc:
            raise _err(-rc, f"array element {int.from_bytes(key, 'little')} always exists")

    def delete(self, key: bytes) -> None:
        self._key_addr(key)
        self._check_writable()
        raise _err(errno.EINVAL, "array elements cannot be deleted")

    def next_key(self, key: bytes | None) -> bytes | None:
        n = self.spec.max_entries
        if key is not None:
            self._key_addr(key)
        i = n if key is None else int.from_bytes(key, "little")
        if i >= n:
            return (0).to_bytes(4, "little")
        return (i + 1).to_bytes(4, "little") if i + 1 < n else None


def _no_programs(prog_id: int) -> int:
    raise _err(errno.EBADF, f"no program with handle {prog_id}")


class NativeProgArrayMap(ProgSlots, NativeMap):
    """PROG_ARRAY: user space stores program ids (`ProgSlots`); the descriptor's table holds their native
    entry points."""

    def __init__(self, spec: MapSpec, handle: int, ncpus: int | None, resolve_prog: Callable[[int], int] | None):
        super().__init__(spec, handle, ncpus)
        if spec.key_size != 4 or spec.value_size != 4:
            raise _err(errno.EINVAL, f"prog_array {spec.name!r}: key_size and value_size must be 4")
        self._check_size(8 * spec.max_entries)
        self.table = np.zeros(spec.max_entries, np.uint64)
        self._desc[t.W_VALUES] = self.table.ctypes.data
        self.slots: list[int | None] = [None] * spec.max_entries
        self.resolve_prog = resolve_prog or _no_programs

    def _slot_index(self, key: bytes) -> int:
        self._key_addr(key)
        return int.from_bytes(key, "little")

    def _check_prog_value(self, value: bytes) -> None:
        self._value_addr(value)

    def _bind(self, index: int, prog: int) -> None:
        entry = self.resolve_prog(prog)  # OSError for an unknown program
        self.slots[index] = prog
        self.table[index] = entry

    def _unbind(self, index: int) -> None:
        self.slots[index] = None
        self.table[index] = 0

    def unlink_program(self, prog_id: int) -> None:
        """Before the engine frees ``prog_id``'s native code: zero every table entry that jumps to it, so a
        tail call through those slots falls through as one to a missing program does in the interpreter
        (user space still reads the id there, as from the interpreter's map)."""
        for i, slot in enumerate(self.slots):
            if slot == prog_id:
                self.table[i] = 0


class NativeHashMap(NativeMap):
    """HASH, PERCPU_HASH, LRU_HASH, LRU_PERCPU_HASH: preallocated chained buckets (see `map_table`)."""

    def __init__(self, spec: MapSpec, handle: int, ncpus: int | None):
        super().__init__(spec, handle, ncpus)
        n = spec.max_entries
        self.kstride = (spec.key_size + 7) & ~7
        self.nslots = self.ncpus if spec.is_percpu else 1
        nbuckets = 1 << max(1, (2 * n - 1).bit_length())
        self._check_size(n * (self.nslots * self.stride + self.kstride + 4 * t.META_WORDS) + 4 * nbuckets)
        self.values = _zeroed(n * self.nslots * self.stride)
        self.keys_mem = _zeroed(n * self.kstride)
        self.buckets = np.full(nbuckets, -1, np.int32)
        self.meta = np.full(n * t.META_WORDS, -1, np.int32)
        self.meta[t.M_CHAIN:n * t.META_WORDS:t.META_WORDS] = np.arange(1, n + 1, dtype=np.int32)
        self.meta[(n - 1) * t.META_WORDS + t.M_CHAIN] = -1  # the free list: 0, 1, ..., n-1
        seed = int.from_bytes(os.urandom(8), "little", signed=True)
        self.state = np.array([0, 0, -1, -1, seed], np.int64)  # count, free head, order head and tail, hash seed
        d = self._desc
        d[t.W_VALUES] = self.values.ctypes.data
        d[t.W_BUCKETS] = self.buckets.ctypes.data
        d[t.W_BUCKET_MASK] = nbuckets - 1
        d[t.W_META] = self.meta.ctypes.data
        d[t.W_KEYS] = self.keys_mem.ctypes.data
        d[t.W_STATE] = self.state.ctypes.data
        d[t.W_KSTRIDE] = self.kstride
        d[t.W_NSLOTS] = self.nslots

    def __len__(self) -> int:
        return int(self.state[t.S_COUNT])

    def _elem_key(self, e: int) -> bytes:
        return self.keys_mem[e * self.kstride:e * self.kstride + self.spec.key_size].tobytes()

    def lookup(self, key: bytes) -> bytes | None:
        e = t.hash_find(self.desc, self._key_addr(key))
        if e < 0:
            return None
        base = e * self.nslots * self.stride
        return self._pack(self.values, [base + c * self.stride for c in range(self.nslots)])

    def update(self, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
        k = self._key_addr(key)
        v = self._value_addr(value)
        self._check_writable()
        self._check_flags(flags)
        rc = t.hash_update(self.desc, k, v, int(flags), 0, True)
        if rc:
            raise _err(-rc, f"update of key {bytes(key).hex()} in {self.spec.name!r}")

    def delete(self, key: bytes) -> None:
        k = self._key_addr(key)
        self._check_writable()
        if t.hash_delete(self.desc, k):
            raise _err(errno.ENOENT, f"key {bytes(key).hex()} not in {self.spec.name!r}")

    def next_key(self, key: bytes | None) -> bytes | None:
        if key is None or not len(self):  # an empty map answers before looking at the key, as interp's
            e = t.hash_next(self.desc, 0, False)
        else:
            e = t.hash_next(self.desc, self._key_addr(key), True)
        return None if e < 0 else self._elem_key(e)


def make_native_map(spec: MapSpec, handle: int, *, ncpus: int | None = None,
                    resolve_prog: Callable[[int], int] | None = None) -> NativeMap:
    """The map for ``spec`` (``OSError(EINVAL)`` for a type the JIT does not run), frozen as a loader
    leaves it (`freezes_after_init`). ``resolve_prog(id)`` gives a program's native entry point for a
    PROG_ARRAY update and raises ``OSError`` for an unknown one."""
    if spec.type == MapType.PROG_ARRAY:
        m: NativeMap = NativeProgArrayMap(spec, handle, ncpus, resolve_prog)
    elif spec.type in (MapType.ARRAY, MapType.PERCPU_ARRAY):
        m = NativeArrayMap(spec, handle, ncpus)
    elif spec.type in HASH_TYPES:
        m = NativeHashMap(spec, handle, ncpus)
    else:
        raise _err(errno.EINVAL, f"map {spec.name!r}: type {spec.type!r} not supported by the JIT")
    m.frozen = freezes_after_init(spec)
    return m
