"""The user-space side of a BPF map, one interface for every place a map lives.

Kernel maps (`vxdp.bpf.kernel.KernelMap`), interpreter maps and, later, maps a
guest reaches over the control queue all speak it: keys and values are bytes,
a lookup of a missing key is ``None``, per-CPU values are one slot per possible
CPU, each ``round_up(value_size, 8)`` bytes, and errors are `OSError` with the
errno the kernel would give (ENOENT, EEXIST, E2BIG, EINVAL), so callers and
tests cannot tell them apart. It lives in `vxdp.bpf` (no I/O here) so that the
kernel bindings can implement it without importing the engine layer.
"""

from __future__ import annotations

import abc
import errno
from collections.abc import Iterator

from .mapspec import MapFlag, MapOrigin, MapSpec, UpdateFlag


def freezes_after_init(spec: MapSpec) -> bool:
    """Whether a loader freezes this map (BPF_MAP_FREEZE) once its initial image is written, before
    any program loads: ``.rodata``, and any other map created read-only to programs with initial
    data. libbpf freezes ``.rodata`` so; only a frozen ``BPF_F_RDONLY_PROG`` map's contents are
    constants to the verifier, which then skips the branches they make dead."""
    return spec.origin is MapOrigin.RODATA or (spec.data is not None and bool(spec.flags & MapFlag.RDONLY_PROG))


class Map(abc.ABC):
    """A created map, the same API on every engine."""

    spec: MapSpec
    handle: int  # what lddw MAP_FD carries for this engine: a kernel fd, an interpreter slot
    frozen: bool = False  # read-only to user space for good (`freeze`)

    @abc.abstractmethod
    def lookup(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def update(self, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None: ...

    @abc.abstractmethod
    def delete(self, key: bytes) -> None:
        """Raises ``OSError(ENOENT)`` for a missing key, ``OSError(EINVAL)`` on arrays."""

    @abc.abstractmethod
    def next_key(self, key: bytes | None) -> bytes | None:
        """The key after ``key`` (the first with ``None``); ``None`` at the end."""

    def keys(self) -> Iterator[bytes]:
        key = self.next_key(None)
        seen = 0
        while key is not None and seen <= self.spec.max_entries:
            yield key
            seen += 1
            key = self.next_key(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def freeze(self) -> None:
        """Make the map read-only to user space for good (BPF_MAP_FREEZE): later updates and deletes
        fail with EPERM, programs still write unless the map is BPF_F_RDONLY_PROG. The kernel answers
        a second freeze EPERM (`KernelMap` makes one through the same object a no-op). Maps that
        cannot be frozen say EOPNOTSUPP."""
        raise OSError(errno.EOPNOTSUPP, f"map {self.spec.name!r}: freeze is not supported here")

    def close(self) -> None:
        """Release what the map holds (a kernel fd); idempotent."""
