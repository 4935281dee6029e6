"""The one error family of the offload service: what the guest (or operator) asked for was refused.

Every refusal, whatever layer found it (policy, handle table, rewriting, the
kernel), becomes an `OffloadError` carrying an errno-style code, a message that
names what was refused and where, the policy rule that refused it (``rule``,
e.g. ``helpers.allow`` or ``quota.maps``; ``None`` when no policy rule was
involved, e.g. the kernel said ENOENT), and for a program the kernel's verifier
refused, the verifier log. The command codec turns it into a status + errno +
message reply at one boundary; nothing else crosses that boundary.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from typing import Any


class OffloadError(Exception):
    """A refused offload request: ``errno``, ``message``, the refusing ``rule`` and a verifier ``log``."""

    def __init__(self, errno: int, message: str, rule: str | None = None, log: str | None = None):
        super().__init__(errno, message)
        self.errno = errno
        self.message = message
        self.rule = rule
        self.log = log

    def __str__(self) -> str:
        return f"{self.message} (rule {self.rule})" if self.rule else self.message

    def __repr__(self) -> str:
        return f"OffloadError(errno={self.errno}, message={self.message!r}, rule={self.rule!r})"


def engine_call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on an engine or its map, its errors as `OffloadError`: an ``OSError`` keeps the
    errno the engine gave (the kernel's, or the one an engine outside it gives in its place), a
    ``ValueError`` (a key or value of the wrong size, refused before any syscall) is EINVAL."""
    try:
        return fn(*args)
    except OSError as e:
        raise OffloadError(e.errno or _errno.EIO, f"{what}: {e.strerror or e}") from None
    except ValueError as e:
        raise OffloadError(_errno.EINVAL, str(e)) from None


# Linux's kernel-internal errnos (include/linux/errno.h, 512..530) never reach user space from a
# system call's own path, but bpf(2) passes some through (ENOTSUPP 524 from the verifier and map
# code): a guest must see the Linux errno user space knows.
_KERNEL_INTERNAL = {
    512: 4, 513: 4, 514: 4, 516: 4,  # ERESTART* -> EINTR
    515: 25,  # ENOIOCTLCMD -> ENOTTY
    517: 11,  # EPROBE_DEFER -> EAGAIN
    518: 116,  # EOPENSTALE -> ESTALE
    519: 22,  # ENOPARAM -> EINVAL
    521: 9,  # EBADHANDLE -> EBADF
    522: 5,  # ENOTSYNC -> EIO
    523: 22,  # EBADCOOKIE -> EINVAL
    524: 95,  # ENOTSUPP -> EOPNOTSUPP
    525: 22,  # ETOOSMALL -> EINVAL
    526: 5,  # ESERVERFAULT -> EIO
    527: 22,  # EBADTYPE -> EINVAL
    528: 11,  # EJUKEBOX -> EAGAIN
    529: 5,  # EIOCBQUEUED -> EIO
    530: 11,  # ERECALLCONFLICT -> EAGAIN
}


def linux_errno(code: int) -> int:
    """``code`` as user space knows it: a kernel-internal errno (512..530) mapped, any other kept."""
    return _KERNEL_INTERNAL.get(code, 5 if 512 <= code <= 530 else code)
