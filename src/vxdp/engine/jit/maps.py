"""The JIT's maps on the user-space side: the `Map` API over the native memory programs use.

A `NativeMap` owns numpy buffers (values, and for hash maps keys, buckets and
links) and a descriptor of 16 u64 words pointing at them (`map_runtime` documents
the layout). JIT'd code gets the descriptor's address and reads and writes the
same bytes, so what a program counts user space sees at once, and what user space
writes a program reads on its next packet. The table rules live once, in
`map_runtime`'s compiled functions, which serve both sides.

User-space semantics are the kernel's, as `vxdp.engine.interp.maps` gives them
(the same errnos, per-CPU values packed at ``round_up(value_size, 8)``, ``next_key``
of a missing key answering the first key, frozen maps refusing writes with EPERM,
global data written at key 0), so callers and tests cannot tell the engines apart.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from enum import IntEnum

import numpy as np

from ...bpf.mapapi import freezes_after_init
from ...bpf.mapspec import MapFlag, MapSpec, MapType, UpdateFlag, percpu_value_stride
from ..interp.maps import InterpMap
from . import map_runtime as rt


class NativeKind(IntEnum):
    """Descriptor word 0: what a map is, as JIT'd code tells them apart."""

    ARRAY = rt.KIND_ARRAY
    PERCPU_ARRAY = rt.KIND_PERCPU_ARRAY
    HASH = rt.KIND_HASH
    PERCPU_HASH = rt.KIND_PERCPU_HASH
    LRU_HASH = rt.KIND_LRU_HASH
    LRU_PERCPU_HASH = rt.KIND_LRU_PERCPU_HASH
    PROG_ARRAY = rt.KIND_PROG_ARRAY


_KINDS = {MapType.ARRAY: NativeKind.ARRAY, MapType.PERCPU_ARRAY: NativeKind.PERCPU_ARRAY,
          MapType.HASH: NativeKind.HASH, MapType.PERCPU_HASH: NativeKind.PERCPU_HASH,
          MapType.LRU_HASH: NativeKind.LRU_HASH, MapType.LRU_PERCPU_HASH: NativeKind.LRU_PERCPU_HASH,
          MapType.PROG_ARRAY: NativeKind.PROG_ARRAY}
_HASH = frozenset({NativeKind.HASH, NativeKind.PERCPU_HASH, NativeKind.LRU_HASH, NativeKind.LRU_PERCPU_HASH})
_PERCPU = frozenset({NativeKind.PERCPU_ARRAY, NativeKind.PERCPU_HASH, NativeKind.LRU_PERCPU_HASH})


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {what}")


def _zeros(n: int) -> np.ndarray:
    """``n`` zero bytes, 8-byte aligned (numpy aligns its buffers to at least 16)."""
    return np.zeros(max(n, 8), np.uint8)


def _buf(data: bytes, size: int = 0) -> np.ndarray:
    """A private copy of ``data`` (padded with zeros to ``size``) whose address the runtime may read."""
    return np.frombuffer(bytes(data).ljust(size, b"\0"), np.uint8).copy()


class NativeMap(InterpMap):
    """One map in native memory; see the module docstring. The checks of what user space hands in
    (lengths, flags, frozen) are the interpreter's maps' own, inherited. ``resolve_prog(id)``: a
    program's native entry address, for PROG_ARRAY updates (OSError EBADF for an unknown one)."""

    def __init__(self, spec: MapSpec, handle: int, *, ncpus: int | None = None,
                 resolve_prog: Callable[[int], int] | None = None):
        if spec.type not in _KINDS:
            raise _err(errno.EINVAL, f"map {spec.name!r}: type {getattr(spec.type, 'name', spec.type)} not "
                       "supported by the JIT")
        super().__init__(spec, handle, ncpus)
        kind = _KINDS[spec.type]  # type: ignore[index]
        if kind not in _HASH and spec.key_size != 4 or kind == NativeKind.PROG_ARRAY and spec.value_size != 4:
            raise _err(errno.EINVAL, f"{spec.type.name.lower()} {spec.name!r}: key_size must be 4"
                       + (" and value_size 4" if kind == NativeKind.PROG_ARRAY else ""))
        self.kind = kind
        self.resolve_prog = resolve_prog
        self.stride = percpu_value_stride(spec.value_size)
        self.slots = self.ncpus if kind in _PERCPU else 1
        n = spec.max_entries
        self._buffers: list[np.ndarray] = []
        desc = np.zeros(rt.DESC_WORDS, np.int64)
        desc[rt.D_KIND], desc[rt.D_KEY], desc[rt.D_VALUE], desc[rt.D_MAX] = kind, spec.key_size, spec.value_size, n
        desc[rt.D_NCPUS], desc[rt.D_STRIDE] = self.ncpus, self.stride
        desc[rt.D_RDONLY] = 1 if spec.flags & MapFlag.RDONLY_PROG else 0
        if kind == NativeKind.PROG_ARRAY:
            self.entries = self._keep(np.zeros(n, np.uint64))
            self.ids: dict[int, int] = {}
            desc[rt.D_VALUES] = self.entries.ctypes.data
        else:
            self.values = self._keep(_zeros(n * self.slots * self.stride))
            desc[rt.D_VALUES] = self.values.ctypes.data
        if kind in _HASH:
            nb = 1 << max(n - 1, 1).bit_length()
            links = self._keep(np.full(n * rt.LINK_WORDS, -1, np.int32))
            links[rt.L_USED::rt.LINK_WORDS] = 0
            links[rt.L_CHAIN::rt.LINK_WORDS] = np.arange(1, n + 1, dtype=np.int32)  # the free list, in order
            links[(n - 1) * rt.LINK_WORDS + rt.L_CHAIN] = -1
            header = self._keep(np.zeros(rt.HEADER_WORDS, np.int64))
            header[rt.H_FREE], header[rt.H_HEAD], header[rt.H_TAIL], header[rt.H_NBUCKETS] = 0, -1, -1, nb
            self.keys_buf = self._keep(_zeros(n * spec.key_size))
            desc[rt.D_KEYS] = self.keys_buf.ctypes.data
            desc[rt.D_BUCKETS] = self._keep(np.full(nb, -1, np.int32)).ctypes.data
            desc[rt.D_LINKS], desc[rt.D_HEADER] = links.ctypes.data, header.ctypes.data
        self._desc = desc
        self.desc = int(desc.ctypes.data)
        if spec.data is not None and kind == NativeKind.ARRAY:
            size = spec.value_size
            self.values[:size] = np.frombuffer(bytes(spec.data[:size]).ljust(size, b"\0"), np.uint8)
        self.frozen = freezes_after_init(spec)  # as the interpreter's and the kernel's loaders do

    def _keep(self, a: np.ndarray) -> np.ndarray:
        self._buffers.append(a)
        return a

    @property  # type: ignore[override]
    def frozen(self) -> bool:
        return bool(self._frozen)

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self._frozen = bool(value)
        if hasattr(self, "_desc"):
            self._desc[rt.D_FROZEN] = int(self._frozen)

    # -- the Map API ----------------------------------------------------------------------------
    def _array_offset(self, i: int, cpu: int = 0) -> int:
        if self.kind == NativeKind.PERCPU_ARRAY:
            return (cpu * self.spec.max_entries + i) * self.stride
        return i * self.stride

    def _pack_element(self, first: int) -> bytes:
        """An element's value(s) from byte ``first`` of the values, as user space sees them."""
        if self.slots == 1:
            return self.values[first: first + self.spec.value_size].tobytes()
        return self.values[first: first + self.slots * self.stride].tobytes()

    def lookup(self, key: bytes) -> bytes | None:
        self._check_key(key)
        i = int.from_bytes(key, "little")
        if self.kind == NativeKind.PROG_ARRAY:
            return self.ids[i].to_bytes(4, "little") if i in self.ids else None
        if self.kind in _HASH:
            k = _buf(key)
            e = rt.find(self.desc, k.ctypes.data)
            return None if e < 0 else self._pack_element(e * self.slots * self.stride)
        if i >= self.spec.max_entries:
            return None
        if self.kind == NativeKind.PERCPU_ARRAY:
            return b"".join(self.values[o: o + self.stride].tobytes()
                            for o in (self._array_offset(i, c) for c in range(self.ncpus)))
        return self._pack_element(self._array_offset(i))

    def update(self, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
        self._check_key(key)
        self._check_value(value)
        self._check_writable()
        i = int.from_bytes(key, "little")
        if self.kind == NativeKind.PROG_ARRAY:
            if flags != UpdateFlag.ANY:
                raise _err(errno.EINVAL, "prog_array updates take BPF_ANY only")
            if i >= self.spec.max_entries:
                raise _err(errno.E2BIG, f"index {i} >= max_entries {self.spec.max_entries}")
            prog = int.from_bytes(value, "little")
            entry = self.resolve_prog(prog) if self.resolve_prog is not None else 0
            if not entry:
                raise _err(errno.EBADF, f"no program with handle {prog}")
            self.entries[i] = entry
            self.ids[i] = prog
            return
        self._check_flags(flags)
        if self.kind in _HASH:
            k, v = _buf(key), _buf(value, self.slots * self.stride)
            rc = rt.hash_update(self.desc, k.ctypes.data, v.ctypes.data, int(flags), 0, True)
            if rc:
                raise _err(-rc, f"update of key {bytes(key).hex()} in {self.spec.name!r}")
            return
        if i >= self.spec.max_entries:
            raise _err(errno.E2BIG, f"index {i} >= max_entries {self.spec.max_entries}")
        if flags == UpdateFlag.NOEXIST:
            raise _err(errno.EEXIST, f"array element {i} always exists")
        size = self.spec.value_size
        for c in range(self.slots):
            o = self._array_offset(i, c)
            self.values[o: o + size] = np.frombuffer(value[c * self.stride: c * self.stride + size], np.uint8)

    def delete(self, key: bytes) -> None:
        self._check_key(key)
        self._check_writable()
        i = int.from_bytes(key, "little")
        if self.kind == NativeKind.PROG_ARRAY:
            if i >= self.spec.max_entries:
                raise _err(errno.E2BIG, f"index {i} >= max_entries {self.spec.max_entries}")
            if self.ids.pop(i, None) is None:
                raise _err(errno.ENOENT, f"slot {i} is empty")
            self.entries[i] = 0
            return
        if self.kind not in _HASH:
            raise _err(errno.EINVAL, "array elements cannot be deleted")
        k = _buf(key)
        if rt.hash_delete(self.desc, k.ctypes.data):
            raise _err(errno.ENOENT, f"key {bytes(key).hex()} not in {self.spec.name!r}")

    def next_key(self, key: bytes | None) -> bytes | None:
        if key is not None:
            self._check_key(key)
        if self.kind in _HASH:
            k = _buf(key if key is not None else bytes(self.spec.key_size))
            e = rt.hash_next(self.desc, k.ctypes.data, key is not None)
            ks = self.spec.key_size
            return None if e < 0 else self.keys_buf[e * ks:(e + 1) * ks].tobytes()
        n = self.spec.max_entries  # an array: every index, set or not; a key out of range starts again
        i = int.from_bytes(key, "little") if key is not None else n
        if i >= n:
            return (0).to_bytes(4, "little")
        return (i + 1).to_bytes(4, "little") if i + 1 < n else None

    def entry_of(self, index: int) -> int:
        """The native entry address in prog_array slot ``index`` (0: empty)."""
        return int(self.entries[index]) if 0 <= index < self.spec.max_entries else 0

    def close(self) -> None:
        """Nothing to release early: the buffers go with the object, once no program holds it."""


def make_native_map(spec: MapSpec, handle: int, *, ncpus: int | None = None,
                    resolve_prog: Callable[[int], int] | None = None) -> NativeMap:
    """A map of ``spec`` in native memory; OSError(EINVAL) for a type the JIT does not run."""
    return NativeMap(spec, handle, ncpus=ncpus, resolve_prog=resolve_prog)


__all__ = ["NativeKind", "NativeMap", "make_native_map"]
