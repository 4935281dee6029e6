"""A prog_array's user-space rules, once for every engine of ours: slots of program ids.

What user space sees of a PROG_ARRAY is the kernel's: a u32 index key, a 4-byte program value,
BPF_ANY only (EINVAL), E2BIG past ``max_entries``, EBADF for a program the engine does not have,
ENOENT for an empty slot's delete, a lookup answering the program's id, ``next_key`` walking every
index (a key out of range starting again at 0). The interpreter's and the JIT's maps differ only in
what a slot also holds for their programs (the JIT: a native entry point), so each says that in
`_bind` and `_unbind`, and takes the key and value checks of its own map class.
"""

from __future__ import annotations

import errno

from ..bpf.mapspec import UpdateFlag


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {what}")


class ProgSlots:
    """Mixed in before a map class (which gives `_check_writable`); the class gives `_slot_index`,
    `_check_prog_value` and `_bind` (and `_unbind` if a slot holds more than the id); ``slots`` holds
    each index's program id (``None``: empty)."""

    slots: list[int | None]

    def _slot_index(self, key: bytes) -> int:
        raise NotImplementedError

    def _check_prog_value(self, value: bytes) -> None:
        raise NotImplementedError

    def _bind(self, index: int, prog: int) -> None:
        """Put program ``prog`` in slot ``index``; OSError(EBADF) if the engine has no such program."""
        raise NotImplementedError

    def _unbind(self, index: int) -> None:
        self.slots[index] = None

    def lookup(self, key: bytes) -> bytes | None:
        i = self._slot_index(key)
        if i >= len(self.slots) or self.slots[i] is None:
            return None
        return self.slots[i].to_bytes(4, "little")

    def update(self, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
        i = self._slot_index(key)
        self._check_prog_value(value)
        self._check_writable()
        if flags != UpdateFlag.ANY:
            raise _err(errno.EINVAL, "prog_array updates take BPF_ANY only")
        if i >= len(self.slots):
            raise _err(errno.E2BIG, f"index {i} >= max_entries {len(self.slots)}")
        self._bind(i, int.from_bytes(value, "little"))

    def delete(self, key: bytes) -> None:
        i = self._slot_index(key)
        self._check_writable()
        if i >= len(self.slots):
            raise _err(errno.E2BIG, f"index {i} >= max_entries {len(self.slots)}")
        if self.slots[i] is None:
            raise _err(errno.ENOENT, f"slot {i} is empty")
        self._unbind(i)

    def next_key(self, key: bytes | None) -> bytes | None:
        i = self._slot_index(key) if key is not None else len(self.slots)
        if i >= len(self.slots):
            return (0).to_bytes(4, "little")
        return (i + 1).to_bytes(4, "little") if i + 1 < len(self.slots) else None

    def target(self, index: int) -> int | None:
        """The program id a tail call through slot ``index`` jumps to, if any."""
        return self.slots[index] if 0 <= index < len(self.slots) else None


__all__ = ["ProgSlots"]
