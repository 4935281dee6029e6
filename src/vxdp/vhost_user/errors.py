"""The two error families of the vhost-user layer, after h11's ``_util.py``.

``RemoteProtocolError``: the peer sent something the spec (or our policy) forbids. It carries
enough to answer the peer (the request code and whether a reply was wanted) and whether the
byte stream is still in sync (``fatal``): a bad header or an oversize message desynchronises
the stream and the connection must be closed; a well-framed message with a bad payload can be
refused and the stream read on.

``LocalProtocolError``: our caller misused the API (sent a reply from a frontend, passed fds
with a message that carries none, ...). It is a bug on our side, never the peer's fault.
"""

from __future__ import annotations

import errno as _errno


class ProtocolError(Exception):
    """Base of both families; never raised itself."""


class LocalProtocolError(ProtocolError):
    """Our own caller broke the rules (a bug here, not the peer's)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol.

    ``request`` is the request code of the offending message when the header was readable,
    ``flags`` its header flags, ``errno`` the value an error ack carries, ``fatal`` whether
    the byte stream can no longer be trusted (the connection must be closed).
    """

    def __init__(
        self,
        msg: str,
        *,
        request: int | None = None,
        flags: int = 0,
        errno: int = _errno.EINVAL,
        fatal: bool = False,
    ) -> None:
        super().__init__(msg)
        self.request = request
        self.flags = flags
        self.errno = errno
        self.fatal = fatal


class RequestFailed(RemoteProtocolError):
    """The backend answered a request with a non-zero ack (frontend side)."""
