"""The per-device handle table: the only names a guest has for the objects it offloaded.

Why not host fds: an fd is a host process's name for a kernel object; handing
it to a guest would leak how many objects the host holds and let one guest
name another's object. So the host picks a small u32 per object, per device,
and translates at one place (this table) on every command.

Rules:
- Handles are > 0 (0 stays "none", as in prog_array lookups and the wire codec).
- They count up and are never reused while the device lives: a guest that
  frees a handle and keeps using it gets a clear EBADF, never somebody else's
  object (the counter wraps only after 2**32 - 1 creations, and then skips
  live handles).
- Each table belongs to one device, and every lookup checks the kind: a map
  handle given where a program is expected, or a number this device never
  issued (another device's handle, say), is refused with a message like
  ``handle 3 is not a map of device dev0``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from .errors import OffloadError

U32_MAX = 0xFFFFFFFF

T = TypeVar("T")


class Kind(Enum):
    MAP = "map"
    PROG = "program"


@dataclass
class Entry(Generic[T]):
    handle: int
    kind: Kind
    obj: T


class HandleTable:
    """Guest handles of one device: ``add`` picks the number, ``get`` checks device and kind."""

    def __init__(self, device: str):
        self.device = device
        self._entries: dict[int, Entry] = {}
        self._next = 1

    def add(self, kind: Kind, obj: object, handle: int | None = None) -> int:
        """A fresh handle for ``obj`` (never one in use, and not one freed recently).

        ``handle``: take exactly that number (a state import recreates objects under the
        handles the guest knows): EEXIST if it is in use, EINVAL outside 1..2**32-1; the
        counter then moves past it, so later handles never collide with imported ones.
        """
        if handle is not None:
            if not 0 < handle <= U32_MAX:
                raise OffloadError(errno.EINVAL, f"device {self.device}: handle {handle} is outside 1..{U32_MAX}")
            if handle in self._entries:
                raise OffloadError(errno.EEXIST, f"device {self.device}: handle {handle} is already in use")
            self._entries[handle] = Entry(handle, kind, obj)
            self.advance(handle + 1)
            return handle
        for _ in range(len(self._entries) + 1):
            handle = self._next
            self._next = 1 if self._next >= U32_MAX else self._next + 1
            if handle not in self._entries:
                self._entries[handle] = Entry(handle, kind, obj)
                return handle
        raise OffloadError(errno.ENOSPC, f"device {self.device}: no free handle")  # unreachable in practice

    def advance(self, next_handle: int) -> None:
        """Make the next fresh handle at least ``next_handle`` (never moves the counter back)."""
        if self._next < next_handle <= U32_MAX:
            self._next = next_handle

    @property
    def next_handle(self) -> int:
        return self._next

    def bind(self, handle: int, obj: object) -> None:
        """Set the object of a handle `add` gave out (for objects that record their own handle)."""
        self._entries[handle].obj = obj

    def get(self, handle: int, kind: Kind) -> object:
        """The object behind ``handle``; EBADF if this device has no such handle of that kind."""
        entry = self._entries.get(handle)
        if entry is None or entry.kind is not kind:
            what = "a map" if kind is Kind.MAP else "a program"
            extra = f" (it is a {entry.kind.value})" if entry is not None else ""
            raise OffloadError(errno.EBADF, f"handle {handle} is not {what} of device {self.device}{extra}")
        return entry.obj

    def kind(self, handle: int) -> Kind | None:
        entry = self._entries.get(handle)
        return entry.kind if entry is not None else None

    def remove(self, handle: int) -> Entry:
        entry = self._entries.pop(handle, None)
        if entry is None:
            raise OffloadError(errno.EBADF, f"handle {handle} is not an object of device {self.device}")
        return entry

    def entries(self, kind: Kind | None = None) -> Iterator[Entry]:
        """Live entries in handle order (creation order)."""
        for h in sorted(self._entries):
            e = self._entries[h]
            if kind is None or e.kind is kind:
                yield e

    def count(self, kind: Kind) -> int:
        return sum(1 for e in self._entries.values() if e.kind is kind)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> list[Entry]:
        """Forget every handle (the counter keeps going); return the entries, newest first."""
        out = [self._entries[h] for h in sorted(self._entries, reverse=True)]
        self._entries.clear()
        return out
