"""What a device's BTF costs: each distinct blob its live programs hold is charged to its map memory.

Why a ledger: a guest may send a new BTF blob with every PROG_LOAD; the kernel makes one BTF object
per blob and the device keeps the blob (STATE_EXPORT gives it back), so the memory grows with the
distinct blobs held, not with the loads. The ledger counts the programs per blob (by SHA-256): the
first charges its size (refused with ENOSPC, rule ``quota.max_map_memory``, past what is left), the
last one's free releases it; the engine closes the kernel object at the same moment
(`vxdp.engine.kernel`). One copy of a blob is kept per device, shared by its programs.
"""

from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass

from .errors import OffloadError
from .policy import Quota


@dataclass
class _Held:
    blob: bytes
    users: int = 0


class BtfLedger:
    """The BTF blobs of one device's live programs, and how many programs hold each."""

    def __init__(self) -> None:
        self._held: dict[bytes, _Held] = {}

    def charge(self, device: str, prog: str, btf: bytes | None, used: int, quota: Quota) -> tuple[bytes, int]:
        """(the device's copy of ``btf``, bytes to charge) for loading ``prog`` with it; `hold` once loaded."""
        if not btf:
            return b"", 0
        held = self._held.get(hashlib.sha256(btf).digest())
        if held is not None:
            return held.blob, 0
        if used + len(btf) > quota.max_map_memory:
            raise OffloadError(errno.ENOSPC, f"policy: program {prog!r}: BTF of {len(btf)} bytes; device "
                               f"{device} uses {used} of {quota.max_map_memory} bytes of map memory "
                               "(BTF is charged to it)", "quota.max_map_memory")
        return bytes(btf), len(btf)

    def hold(self, blob: bytes) -> None:
        """A program loaded with ``blob`` (the copy `charge` gave) is live."""
        if blob:
            self._held.setdefault(hashlib.sha256(blob).digest(), _Held(blob)).users += 1

    def release(self, blob: bytes) -> int:
        """A program with ``blob`` went: the bytes no longer charged (its size if it was the last)."""
        key = hashlib.sha256(blob).digest() if blob else None
        held = self._held.get(key) if key is not None else None
        if held is None:
            return 0
        held.users -= 1
        if held.users > 0:
            return 0
        del self._held[key]
        return len(held.blob)

    @property
    def charged(self) -> int:
        """Bytes charged now: the size of each distinct blob held."""
        return sum(len(h.blob) for h in self._held.values())

    def clear(self) -> None:
        self._held.clear()
