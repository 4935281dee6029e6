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
from collections.abc import Iterator

from .mapspec import MapSpec, UpdateFlag


class Map(abc.ABC):
    """A created map, the same API on every engine."""

    spec: MapSpec
    handle: int  # what lddw MAP_FD carries for this engine: a kernel fd, an interpreter slot

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

    def close(self) -> None:
        """Release what the map holds (a kernel fd); idempotent."""
