"""Thin socket I/O for vhost-user: AF_UNIX SOCK_STREAM with SCM_RIGHTS, both socket modes.

Kernel facts relied on: SCM_RIGHTS fds ride on the first byte of a ``sendmsg``; a
``recvmsg`` on a stream socket never returns bytes from past the chunk that carried fds, and
fds that do not fit the control buffer are closed by the kernel (MSG_CTRUNC is set). We read
the 12-byte header with ``recvmsg`` (taking any fds) and then the payload, so each read lies
inside one message. Fds that arrive but are not handed on (truncated control data, a
connection error) are closed here.

Two readers: `recv_message_bytes` blocks until one message is read (a frontend's `Channel`, which
waits for its reply anyway); `MessageReader` never blocks (a backend's event loop): it reads what
the socket has, at most up to the end of the current message's header or payload (so the rule
above still holds: a message's fds come with its header's first byte), and says since when a
message has been incomplete, so the caller can end a session whose peer stalls inside one with
one deadline per message rather than a timeout per read.
"""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass

from vxdp.sockpath import SocketClaim

from . import messages as m
from .connection import CLOSED, NEED_DATA, Connection, close_fds
from .errors import LocalProtocolError, RemoteProtocolError

_FD_SIZE = 4


def recv_message_bytes(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Read one message's bytes (header + payload as announced) and its fds. Returns
    (b"", []) at end of stream; a short message at EOF returns what was read."""
    data, fds, flags, _addr = socket.recv_fds(sock, m.HEADER_SIZE, m.MAX_FDS, socket.MSG_WAITALL)
    fds = list(fds)
    if flags & socket.MSG_CTRUNC:
        close_fds(fds)
        raise RemoteProtocolError(f"more than {m.MAX_FDS} fds with one message", fatal=True)
    if len(data) < m.HEADER_SIZE:
        return data, fds
    _req, _flags, size = m.HEADER.unpack(data)
    if size > m.MAX_PAYLOAD or size == 0:
        return data, fds  # the Connection reports an oversize message; don't read it
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            break
        body += chunk
    return data + body, fds


@dataclass
class MessageReader:
    """Incremental, non-blocking reads of a socket for a ``Connection`` (see the module docstring)."""

    have: int = 0  # bytes of the current message read so far
    need: int = m.HEADER_SIZE  # bytes the current message has in all (known once its header is)
    header: bytes = b""
    since: float | None = None  # monotonic time of the current message's first byte; None between messages

    def read(self, sock: socket.socket, clock=time.monotonic) -> tuple[bytes, list[int]] | None:
        """One non-blocking read: ``(data, fds)`` (``b""`` at end of stream), or None if the socket
        has nothing now. Fds beyond ``MAX_FDS`` raise a fatal RemoteProtocolError (closed here)."""
        want = self.need - self.have
        try:
            data, fds, flags, _addr = socket.recv_fds(sock, want, m.MAX_FDS, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        fds = list(fds)
        if flags & socket.MSG_CTRUNC:
            close_fds(fds)
            raise RemoteProtocolError(f"more than {m.MAX_FDS} fds with one message", fatal=True)
        if not data:
            return data, fds
        if self.have == 0:
            self.since = clock()
        self.have += len(data)
        if self.have <= m.HEADER_SIZE:
            self.header += data
            if self.have == m.HEADER_SIZE:
                _req, _flags, size = m.HEADER.unpack(self.header)
                # an oversize header is the Connection's to report: read no payload for it
                self.need = m.HEADER_SIZE + (size if 0 < size <= m.MAX_PAYLOAD else 0)
        if self.have >= self.need:
            self.have, self.need, self.header, self.since = 0, m.HEADER_SIZE, b"", None
        return data, fds

    def overdue(self, timeout_s: float, now: float) -> bool:
        """A message has been incomplete for longer than ``timeout_s``."""
        return self.since is not None and now - self.since > timeout_s


def send_message(sock: socket.socket, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Write one encoded message, its fds with the first byte."""
    if len(fds) > m.MAX_FDS:
        raise LocalProtocolError(f"{len(fds)} fds (at most {m.MAX_FDS})")
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def listen(path: str | SocketClaim, backlog: int = 4, *, group: int | None = None) -> tuple[socket.socket,
                                                                                            SocketClaim]:
    """Server mode: claim ``path`` (`vxdp.sockpath`: refused if a live process serves it, a stale socket
    replaced), bind (0600, or 0660 for ``group``) and listen. The caller closes the socket, then
    releases the claim, which removes the path only if it is still ours."""
    claim = path if isinstance(path, SocketClaim) else SocketClaim.take(path)
    try:
        return claim.listen(backlog, group=group), claim
    except BaseException:
        claim.release()
        raise


def connect(path: str, retries: int = 0, interval: float = 0.1) -> socket.socket:
    """Client mode: connect, retrying ``retries`` times while the server is not up yet."""
    for attempt in range(retries + 1):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            s.close()
            if attempt == retries:
                raise ConnectionError(f"vhost-user: cannot connect to {path}: {exc.strerror}") from exc
            time.sleep(interval)
    raise AssertionError("unreachable")


class Channel:
    """A blocking pairing of a socket and a ``Connection`` (one message at a time)."""

    def __init__(self, sock: socket.socket, conn: Connection) -> None:
        self.sock = sock
        self.conn = conn

    def send(self, msg: m.Message) -> None:
        data, fds = self.conn.send(msg)
        send_message(self.sock, data, fds)

    def recv(self) -> m.Message:
        """Block for the next message; ConnectionError at end of stream."""
        while True:
            ev = self.conn.next_event()
            if ev is CLOSED:
                raise ConnectionError("vhost-user peer closed the connection")
            if ev is not NEED_DATA:
                return ev  # type: ignore[return-value]
            data, fds = recv_message_bytes(self.sock)
            self.conn.receive_data(data, fds)

    def exchange(self, msg: m.Message) -> m.Message | None:
        """Send a request; return its reply when one is due (for ``frontend.run``)."""
        self.send(msg)
        return self.recv() if m.expects_reply(msg) else None

    def close(self) -> None:
        self.conn.close()
        try:
            self.sock.close()
        except OSError as exc:  # pragma: no cover - close of a valid socket
            if exc.errno != errno.EBADF:
                raise
