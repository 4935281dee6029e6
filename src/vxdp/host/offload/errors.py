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
