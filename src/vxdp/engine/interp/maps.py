"""User-space maps with the kernel's semantics, seen from both sides.

Each map offers the `vxdp.engine.base.Map` API to user space (bytes in, bytes
out, ``OSError`` with the kernel's errno) and a program-side API the helpers
call (``prog_lookup`` returns the stored ``bytearray`` itself, so a program's
writes through the value pointer land in the map, as they do in the kernel).

Values are one ``bytearray`` per element and, for per-CPU maps, one per
possible CPU: a program sees only its CPU's slot; user space sees all slots
packed at ``percpu_value_stride(value_size)`` bytes each.

Where the kernel leaves something unspecified we pick the simplest rule and say
so: hash iteration is insertion order (the kernel's is bucket order, which no
caller may rely on), and LRU eviction is exact least-recently-used where the
kernel's is approximate (per-CPU free lists). What no caller can tell apart we
match exactly: errnos, ``next_key`` of a missing key returning the first key,
array bounds, per-CPU layouts.
"""

from __future__ import annotations

import errno
from collections import OrderedDict

from ...bpf.mapapi import Map
from ...bpf.mapspec import HASH_TYPES, MapSpec, MapType, UpdateFlag, percpu_value_stride, possible_cpus
from ..prog_slots import ProgSlots

SUPPORTED = frozenset({MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.PROG_ARRAY} | HASH_TYPES)
_LRU = frozenset({MapType.LRU_HASH, MapType.LRU_PERCPU_HASH})


class MapSpecError(ValueError):
    """A key or value of the wrong length handed to a map by its caller."""


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {what}")


class InterpMap(Map):
    """Common parts: spec checks, per-CPU packing, the read-only flag for frozen maps."""

    def __init__(self, spec: MapSpec, handle: int, ncpus: int | None = None):
        if spec.type not in SUPPORTED:
            raise _err(errno.EINVAL, f"map {spec.name!r}: type {spec.type.name} not supported by the interpreter")
        if spec.key_size <= 0 and spec.type in HASH_TYPES or spec.value_size <= 0 or spec.max_entries <= 0:
            raise _err(errno.EINVAL, f"map {spec.name!r}: key_size, value_size and max_entries must be > 0")
        self.spec = spec
        self.handle = handle
        self.ncpus = ncpus or possible_cpus()
        self.frozen = False
        self.cpu = 0  # the CPU a running program is on, set by the engine

    # -- user-space helpers ------------------------------------------------
    def _check_key(self, key: bytes) -> None:
        if len(key) != self.spec.key_size:
            raise MapSpecError(f"map {self.spec.name!r}: key of {len(key)} bytes, expected {self.spec.key_size}")

    @property
    def user_value_size(self) -> int:
        return self.spec.user_value_size(self.ncpus)

    def _check_value(self, value: bytes) -> None:
        if len(value) != self.user_value_size:
            raise MapSpecError(
                f"map {self.spec.name!r}: value of {len(value)} bytes, expected {self.user_value_size}")

    def _new_slots(self, value: bytes) -> list[bytearray]:
        """Per-CPU slots from a user-space value buffer (or one slot for a plain map)."""
        if not self.spec.is_percpu:
            return [bytearray(value)]
        stride, size = percpu_value_stride(self.spec.value_size), self.spec.value_size
        return [bytearray(value[i * stride:i * stride + size]) for i in range(self.ncpus)]

    def _pack(self, slots: list[bytearray]) -> bytes:
        if not self.spec.is_percpu:
            return bytes(slots[0])
        pad = b"\0" * (percpu_value_stride(self.spec.value_size) - self.spec.value_size)
        return b"".join(bytes(s) + pad for s in slots)

    def freeze(self) -> None:
        """BPF_MAP_FREEZE: user space may no longer write (EPERM); a second freeze is EPERM, as in the kernel."""
        if self.frozen:
            raise _err(errno.EPERM, f"map {self.spec.name!r} is already frozen")
        self.frozen = True

    def _check_writable(self) -> None:
        """The kernel refuses user-space updates and deletes on a frozen map (EPERM) before anything else."""
        if self.frozen:
            raise _err(errno.EPERM, f"map {self.spec.name!r} is frozen")

    @staticmethod
    def _check_flags(flags: int) -> None:
        if flags not in (UpdateFlag.ANY, UpdateFlag.NOEXIST, UpdateFlag.EXIST):
            raise _err(errno.EINVAL, f"update flags {flags:#x}")

    # -- program side -------------------------------------------------------
    def prog_lookup(self, key: bytes) -> bytearray | None:
        raise NotImplementedError

    def prog_update(self, key: bytes, value: bytes, flags: int) -> int:
        """Update from a program: the current CPU's slot only; return 0 or a negative errno."""
        raise NotImplementedError

    def prog_delete(self, key: bytes) -> int:
        raise NotImplementedError


class ArrayMap(InterpMap):
    """ARRAY and PERCPU_ARRAY: ``max_entries`` zeroed values, keyed by a u32 index."""

    def __init__(self, spec: MapSpec, handle: int, ncpus: int | None = None):
        super().__init__(spec, handle, ncpus)
        if spec.key_size != 4:
            raise _err(errno.EINVAL, f"array map {spec.name!r}: key_size must be 4")
        slots = self.ncpus if spec.is_percpu else 1
        self.values = [[bytearray(spec.value_size) for _ in range(slots)] for _ in range(spec.max_entries)]
        if spec.data is not None:
            self.values[0][0][:] = bytes(spec.data[:spec.value_size]).ljust(spec.value_size, b"\0")

    def _index(self, key: bytes) -> int:
        return int.from_bytes(key, "little")

    def lookup(self, key: bytes) -> bytes | None:
        self._check_key(key)
        i = self._index(key)
        return self._pack(self.values[i]) if i < len(self.values) else None

    def update(self, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
        self._check_key(key)
        self._check_value(value)
        self._check_writable()
        self._check_flags(flags)
        i = self._index(key)
        if i >= len(self.values):
            raise _err(errno.E2BIG, f"index {i} >= max_entries {len(self.values)}")
        if flags == UpdateFlag.NOEXIST:
            raise _err(errno.EEXIST, f"array element {i} always exists")
        for slot, new in zip(self.values[i], self._new_slots(value)):
            slot[:] = new

    def delete(self, key: bytes) -> None:
        self._check_key(key)
        self._check_writable()
        raise _err(errno.EINVAL, "array elements cannot be deleted")

    def next_key(self, key: bytes | None) -> bytes | None:
        if key is not None:
            self._check_key(key)
        i = self._index(key) if key is not None else len(self.values)
        if i >= len(self.values):
            return (0).to_bytes(4, "little")
        if i + 1 >= len(self.values):
            return None
        return (i + 1).to_bytes(4, "little")

    def prog_lookup(self, key: bytes) -> bytearray | None:
        i = self._index(key)
        if i >= len(self.values):
            return None
        slots = self.values[i]
        return slots[self.cpu] if self.spec.is_percpu else slots[0]

    def prog_update(self, key: bytes, value: bytes, flags: int) -> int:
        if flags not in (0, 1, 2):
            return -errno.EINVAL
        i = self._index(key)
        if i >= len(self.values):
            return -errno.E2BIG
        if flags == UpdateFlag.NOEXIST:
            return -errno.EEXIST
        slots = self.values[i]
        (slots[self.cpu] if self.spec.is_percpu else slots[0])[:] = value
        return 0

    def prog_delete(self, key: bytes) -> int:
        return -errno.EINVAL


class ProgArrayMap(ProgSlots, InterpMap):
    """PROG_ARRAY: slots hold program handles (`ProgSlots`); user-space lookup gives the program id
    (= handle)."""

    def __init__(self, spec: MapSpec, handle: int, ncpus: int | None = None, programs: dict | None = None):
        super().__init__(spec, handle, ncpus)
        if spec.key_size != 4 or spec.value_size != 4:
            raise _err(errno.EINVAL, f"prog_array {spec.name!r}: key_size and value_size must be 4")
        self.slots: list[int | None] = [None] * spec.max_entries
        self.programs = programs if programs is not None else {}

    def _slot_index(self, key: bytes) -> int:
        self._check_key(key)
        return int.from_bytes(key, "little")

    def _check_prog_value(self, value: bytes) -> None:
        self._check_value(value)

    def _bind(self, index: int, prog: int) -> None:
        if prog not in self.programs:
            raise _err(errno.EBADF, f"no program with handle {prog}")
        self.slots[index] = prog

    def prog_lookup(self, key: bytes) -> bytearray | None:
        return None  # the verifier refuses map_lookup_elem on a prog_array

    def prog_update(self, key: bytes, value: bytes, flags: int) -> int:
        return -errno.EINVAL

    def prog_delete(self, key: bytes) -> int:
        return -errno.EINVAL


class HashMap(InterpMap):
    """HASH, PERCPU_HASH, LRU_HASH, LRU_PERCPU_HASH over an insertion-ordered dict.

    For the LRU types the dict order is recency: updates and program lookups
    move a key to the end, and a full insert evicts the first key. User-space
    lookups do not count as a use, like the kernel's ``lookup_elem_sys_only``.
    """

    def __init__(self, spec: MapSpec, handle: int, ncpus: int | None = None):
        super().__init__(spec, handle, ncpus)
        self.table: OrderedDict[bytes, list[bytearray]] = OrderedDict()
        self.lru = spec.type in _LRU

    def lookup(self, key: bytes) -> bytes | None:
        self._check_key(key)
        slots = self.table.get(bytes(key))
        return None if slots is None else self._pack(slots)

    def _insert(self, key: bytes, slots: list[bytearray] | None, make, flags: int) -> int:
        """Shared update logic; ``make`` builds the new slots. Returns 0 or a negative errno."""
        if slots is not None and flags == UpdateFlag.NOEXIST:
            return -errno.EEXIST
        if slots is None and flags == UpdateFlag.EXIST:
            return -errno.ENOENT
        if slots is None and len(self.table) >= self.spec.max_entries:
            if not self.lru:
                return -errno.E2BIG
            self.table.popitem(last=False)
        new = make(slots)
        self.table[key] = new
        if self.lru:
            self.table.move_to_end(key)
        return 0

    def update(self, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
        self._check_key(key)
        self._check_value(value)
        self._check_writable()
        self._check_flags(flags)
        key = bytes(key)
        new = self._new_slots(value)
        rc = self._insert(key, self.table.get(key), lambda old: new, flags)
        if rc:
            raise _err(-rc, f"update of key {key.hex()} in {self.spec.name!r}")

    def delete(self, key: bytes) -> None:
        self._check_key(key)
        self._check_writable()
        if self.table.pop(bytes(key), None) is None:
            raise _err(errno.ENOENT, f"key {bytes(key).hex()} not in {self.spec.name!r}")

    def next_key(self, key: bytes | None) -> bytes | None:
        keys = list(self.table)
        if not keys:
            return None
        if key is None:
            return keys[0]
        self._check_key(key)
        key = bytes(key)
        if key not in self.table:
            return keys[0]
        i = keys.index(key)
        return keys[i + 1] if i + 1 < len(keys) else None

    def prog_lookup(self, key: bytes) -> bytearray | None:
        slots = self.table.get(key)
        if slots is None:
            return None
        if self.lru:
            self.table.move_to_end(key)
        return slots[self.cpu] if self.spec.is_percpu else slots[0]

    def prog_update(self, key: bytes, value: bytes, flags: int) -> int:
        if flags not in (0, 1, 2):
            return -errno.EINVAL
        cpu, size = self.cpu, self.spec.value_size

        def make(old: list[bytearray] | None) -> list[bytearray]:
            if not self.spec.is_percpu:
                if old is not None:  # keep the same buffer: value pointers alias it
                    old[0][:] = value
                    return old
                return [bytearray(value)]
            slots = old if old is not None else [bytearray(size) for _ in range(self.ncpus)]
            slots[cpu][:] = value
            return slots

        return self._insert(key, self.table.get(key), make, flags)

    def prog_delete(self, key: bytes) -> int:
        return 0 if self.table.pop(key, None) is not None else -errno.ENOENT


def make_map(spec: MapSpec, handle: int, programs: dict, ncpus: int | None = None) -> InterpMap:
    """The map class for ``spec.type``; raises ``OSError(EINVAL)`` for types we do not run."""
    if spec.type == MapType.PROG_ARRAY:
        return ProgArrayMap(spec, handle, ncpus, programs)
    if spec.type in (MapType.ARRAY, MapType.PERCPU_ARRAY):
        return ArrayMap(spec, handle, ncpus)
    if spec.type in HASH_TYPES:
        return HashMap(spec, handle, ncpus)
    raise _err(errno.EINVAL, f"map {spec.name!r}: type {spec.type!r} not supported by the interpreter")
