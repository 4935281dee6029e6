"""A sans-IO vhost-user connection (h11's shape): bytes and fds in, messages out.

The caller owns the socket. ``receive_data(data, fds)`` only buffers; ``next_event()``
returns one complete ``Message`` (with its fds), ``NEED_DATA`` or ``CLOSED``;
``send(msg)`` returns ``(bytes, fds)`` to write with one ``sendmsg``.

Which message do fds belong to? Over an AF_UNIX stream socket the kernel attaches
SCM_RIGHTS to the first byte of the sender's ``sendmsg`` (the start of a message), and a
``recvmsg`` returns right after the chunk that carried fds: a read may hold earlier fd-less
bytes followed by the start of the fd-carrying message, never bytes after it. So the fds of
one ``receive_data`` call belong to the message that holds the LAST byte of that data. Our
transport also reads header and payload separately, which keeps this trivially true.

Errors: a header we cannot trust (wrong version, payload over ``max_payload``) or end of
stream inside a message is fatal: every fd still buffered is closed and the connection stays
broken (each later ``next_event`` raises again). A well-framed message that is bad (unknown
request, wrong size, wrong fd count, bad fields) is consumed, its fds are closed, and a
non-fatal ``RemoteProtocolError`` is raised; the next message can be read.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Iterable

from . import messages as m
from .errors import LocalProtocolError, RemoteProtocolError


class Role(enum.Enum):
    BACKEND = "backend"  # receives requests, sends replies
    FRONTEND = "frontend"  # sends requests, receives replies


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


NEED_DATA = _Sentinel.NEED_DATA
CLOSED = _Sentinel.CLOSED
Event = m.Message | _Sentinel


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Connection:
    """One side of a vhost-user stream, without I/O."""

    def __init__(self, role: Role, max_payload: int = m.MAX_PAYLOAD) -> None:
        self.role = role
        self.max_payload = max_payload
        self._buf = bytearray()
        self._pos = 0  # stream offset of self._buf[0]
        self._fd_marks: list[tuple[int, list[int]]] = []  # (stream offset after the chunk, fds)
        self._eof = False
        self._error: RemoteProtocolError | None = None

    # ----------------------------------------------------------------- input
    def receive_data(self, data: bytes, fds: Iterable[int] = ()) -> None:
        """Buffer bytes (b"" = the peer closed) and the fds that arrived with them."""
        fds = list(fds)
        if self._eof:
            close_fds(fds)
            raise LocalProtocolError("receive_data after end of stream")
        if not data:
            if fds:
                close_fds(fds)
                raise LocalProtocolError("fds without data (a stream socket cannot do that)")
            self._eof = True
            return
        if self._error is not None:
            close_fds(fds)  # a broken stream keeps nothing
            return
        self._buf += data
        if fds:
            self._fd_marks.append((self._pos + len(self._buf), fds))

    @property
    def broken(self) -> bool:
        return self._error is not None

    @property
    def pending_fds(self) -> int:
        return sum(len(f) for _, f in self._fd_marks)

    def close(self) -> None:
        """Drop buffered bytes and close every buffered fd."""
        for _, fds in self._fd_marks:
            close_fds(fds)
        self._fd_marks.clear()
        self._buf.clear()

    def _fail(self, err: RemoteProtocolError) -> RemoteProtocolError:
        err.fatal = True
        self._error = err
        self.close()
        return err

    def next_event(self) -> Event:
        """The next complete message, NEED_DATA, or CLOSED (clean end of stream)."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        if len(buf) < m.HEADER_SIZE:
            if self._eof:
                if buf:
                    raise self._fail(RemoteProtocolError(f"stream ended inside a header ({len(buf)} bytes)"))
                self.close()
                return CLOSED
            return NEED_DATA
        request, flags, size = m.HEADER.unpack_from(buf)
        name = m.req_name(request)
        if flags & m.VERSION_MASK != m.VERSION:
            raise self._fail(
                RemoteProtocolError(f"{name}: header version {flags & m.VERSION_MASK}, expected 1",
                                    request=request, flags=flags, errno=errno.EPROTO)
            )
        if size > self.max_payload:
            raise self._fail(
                RemoteProtocolError(f"{name}: payload size {size} over the {self.max_payload}-byte limit",
                                    request=request, flags=flags, errno=errno.EMSGSIZE)
            )
        end = m.HEADER_SIZE + size
        if len(buf) < end:
            if self._eof:
                raise self._fail(RemoteProtocolError(f"{name}: stream ended inside a {size}-byte payload",
                                                     request=request, flags=flags))
            return NEED_DATA
        body = bytes(buf[m.HEADER_SIZE:end])
        stream_end = self._pos + end
        fds: list[int] = []
        while self._fd_marks and self._fd_marks[0][0] <= stream_end:
            fds.extend(self._fd_marks.pop(0)[1])
        del buf[:end]
        self._pos = stream_end
        try:
            if flags & ~m.KNOWN_FLAGS:
                raise RemoteProtocolError(f"{name}: unknown header flags 0x{flags & ~m.KNOWN_FLAGS:x}",
                                          request=request, flags=flags)
            if self.role is Role.BACKEND:
                msg = m.decode_request(request, flags, body, len(fds))
            else:
                msg = m.decode_reply(request, flags, body, len(fds))
        except RemoteProtocolError:
            close_fds(fds)
            raise
        if fds:
            msg = m.Message(msg.request, msg.payload, msg.flags, tuple(fds))
        return msg

    # ----------------------------------------------------------------- output
    def send(self, msg: m.Message) -> tuple[bytes, list[int]]:
        """Encode a message for one sendmsg. Backends send replies, frontends requests."""
        m.check_outgoing(msg, as_reply=self.role is Role.BACKEND)
        data = msg.encode()
        if len(data) - m.HEADER_SIZE > self.max_payload:
            raise LocalProtocolError(f"{m.req_name(msg.request)}: payload over {self.max_payload} bytes")
        return data, list(msg.fds)
