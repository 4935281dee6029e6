"""The daemons' control sockets: one JSON object per line, request then reply, over AF_UNIX.

``vxdp host serve`` and ``vxdp guest run`` each listen on a control socket
(``/run/vxdp/host-DEV.sock``, ``/run/vxdp/guest-NAME.sock``) for the CLI and
the Python API. Control traffic is rare and small, so the protocol is the
plainest that a person can also speak with ``socat``:

    -> {"method": "prog.show", "params": {...}}
    <- {"result": ...}             or   {"error": {"code": "ENOENT", "errno": 2, "message": "..."}}

The server side is a `Server` the daemon's event loop polls (its fileno and
its connections' filenos); a handler is a plain function of the params that
returns a JSON-able result or raises `RpcError` (or an `OSError`, whose errno
travels as is). The client is `call()`, blocking, with a timeout.
"""

from __future__ import annotations

import errno as errno_mod
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .sockpath import SocketClaim

RUN_DIR_ENV = "VXDP_RUN_DIR"
DEFAULT_RUN_DIR = "/run/vxdp"
MAX_LINE = 64 << 20  # a map dump or a program can be large; a line past this is refused

Handler = Callable[..., Any]


def run_dir() -> Path:
    """Where daemons keep their control sockets (``$VXDP_RUN_DIR``, else ``/run/vxdp``)."""
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))


def host_socket(dev: str) -> Path:
    return run_dir() / f"host-{dev}.sock"


def guest_socket(name: str) -> Path:
    return run_dir() / f"guest-{name}.sock"


class RpcError(Exception):
    """A request the daemon refused: ``code`` is an errno name, ``message`` says why."""

    def __init__(self, code: str, message: str, *, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    @property
    def errno(self) -> int:
        return getattr(errno_mod, self.code, errno_mod.EIO)

    def to_json(self) -> dict[str, Any]:
        doc = {"code": self.code, "errno": self.errno, "message": self.message}
        if self.data is not None:
            doc["data"] = self.data
        return doc

    @classmethod
    def from_exception(cls, e: BaseException) -> RpcError:
        if isinstance(e, RpcError):
            return e
        if isinstance(e, OSError) and e.errno:
            data = getattr(e, "log", None) or None
            return cls(errno_mod.errorcode.get(e.errno, "EIO"), e.strerror or str(e), data=data)
        # str() of a KeyError is its repr, quotes and all: the message is its argument
        message = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
        return cls("EINVAL", message)


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_allowed(pid: int, uid: int, gid: int, group: int | None) -> bool:
    """Root, our own user, or (with ``group``) a process whose primary or supplementary groups hold it."""
    if uid in (0, os.geteuid()):
        return True
    if group is None:
        return False
    if gid == group:
        return True
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return str(group) in line.split()[1:]
    except OSError:
        pass
    return False


class Server:
    """A control socket served from an event loop (`attach`), or polled by hand (`filenos`, `process`)."""

    def __init__(self, path: str | os.PathLike | SocketClaim, handlers: dict[str, Handler], *,
                 unknown: Callable[[str], RpcError] | None = None, group: int | None = None) -> None:
        """Serve at ``path``, or at a `SocketClaim` taken earlier (`sockpath.PathBusy` if another daemon
        serves the path; a stale socket there is replaced). ``unknown(method)`` says why a method this
        daemon lacks is refused (default: unknown method).

        Who may ask: the socket is 0600 (0660 and owned by ``group`` when given), and each connection's
        peer is checked again with SO_PEERCRED (`peer_allowed`): root, the daemon's own user, or a member
        of ``group``. The file mode alone is not enough: a path can be chmod'ed, or opened before."""
        self.claim = path if isinstance(path, SocketClaim) else SocketClaim.take(path)
        self.path = self.claim.path
        self.handlers = handlers
        self.unknown = unknown or (lambda method: RpcError("EOPNOTSUPP", f"unknown method {method!r}"))
        self.group = group
        try:
            self.sock = self.claim.listen(16, group=group)
        except BaseException:
            self.claim.release()
            raise
        self.sock.setblocking(False)
        self.conns: dict[int, _Conn] = {}
        self._loop: Any = None

    def attach(self, loop: Any) -> None:
        """Serve from ``loop`` (`vxdp.eventloop.Loop`): a reader for the listening socket, and one per
        connection from its accept until its close. A connection's reader goes before its fd is
        closed, so a new connection that gets the same fd number is never mistaken for the old one."""
        self._loop = loop
        loop.add_reader(self.sock.fileno(), lambda: self.process(self.sock.fileno()))

    def filenos(self) -> list[int]:
        return [self.sock.fileno(), *self.conns]

    def process(self, fd: int) -> None:
        """Accept on the listening socket, or read and answer complete requests on a connection."""
        if fd == self.sock.fileno():
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return
            refused = self._refusal(sock)
            if refused is not None:
                sock.setblocking(True)
                sock.settimeout(1.0)
                try:
                    sock.sendall(json.dumps({"error": refused.to_json()}).encode() + b"\n")
                except OSError:
                    pass
                sock.close()
                return
            fd = sock.fileno()
            self.conns[fd] = _Conn(sock)
            if self._loop is not None:
                self._loop.add_reader(fd, lambda: self.process(fd))
            return
        conn = self.conns.get(fd)
        if conn is None:
            return
        try:
            data = conn.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        conn.buf += data
        if len(conn.buf) > MAX_LINE:
            self._reply(conn, {"error": RpcError("E2BIG", "request line too long").to_json()})
            self._drop(fd)
            return
        while b"\n" in conn.buf:
            line, _, rest = bytes(conn.buf).partition(b"\n")
            conn.buf = bytearray(rest)
            if not self._reply(conn, self.dispatch(line)):
                self._drop(fd)
                return

    def _refusal(self, sock: socket.socket) -> RpcError | None:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if peer_allowed(pid, uid, gid, self.group):
            return None
        return RpcError("EACCES", f"uid {uid} (pid {pid}) may not use this daemon: root, uid {os.geteuid()}"
                                  + (f" or group {self.group}" if self.group is not None else "") + " only")

    def dispatch(self, line: bytes) -> dict[str, Any]:
        """One request line to one reply object; never raises."""
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("method"), str):
                raise RpcError("EINVAL", 'a request is {"method": NAME, "params": {...}}')
            handler = self.handlers.get(req["method"])
            if handler is None:
                raise self.unknown(req["method"])
            params = req.get("params") or {}
            if not isinstance(params, dict):
                raise RpcError("EINVAL", "params must be an object")
            return {"result": handler(**params)}
        except json.JSONDecodeError as e:
            return {"error": RpcError("EINVAL", f"not JSON: {e}").to_json()}
        except TypeError as e:  # wrong parameters for the handler
            return {"error": RpcError("EINVAL", str(e)).to_json()}
        except Exception as e:  # noqa: BLE001 - the daemon answers every request and keeps serving
            return {"error": RpcError.from_exception(e).to_json()}

    def _reply(self, conn: _Conn, doc: dict[str, Any]) -> bool:
        try:
            conn.sock.setblocking(True)
            conn.sock.sendall(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
            conn.sock.setblocking(False)
            return True
        except OSError:
            return False

    def _drop(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is not None:
            if self._loop is not None:
                self._loop.remove_reader(fd)
            conn.sock.close()

    def close(self) -> None:
        for fd in list(self.conns):
            self._drop(fd)
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()
        self.claim.release()


def call(path: str | os.PathLike, method: str, /, *, timeout: float = 30.0, **params: Any) -> Any:
    """Send one request to a daemon's control socket and return its result (or raise `RpcError`).

    ``path`` and ``method`` are positional-only, so a request may carry params of those names."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise RpcError("ENOENT", f"no daemon listening on {path}") from None
        except PermissionError:
            raise RpcError("EACCES", f"{path}: permission denied (the daemon's sockets are 0600, or 0660 for "
                                     f"its --group)") from None
        sock.sendall(json.dumps({"method": method, "params": params}).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise RpcError("ECONNRESET", f"{path}: the daemon closed the connection")
            buf += chunk
            if len(buf) > MAX_LINE:
                raise RpcError("E2BIG", f"{path}: reply too long")
    except TimeoutError:
        raise RpcError("ETIMEDOUT", f"{path}: no reply to {method} within {timeout:g} s: the daemon is busy or "
                                    f"stuck (its log says which; `vxdp host show` / `vxdp guest show` answer "
                                    f"while it serves)") from None
    finally:
        sock.close()
    doc = json.loads(bytes(buf).partition(b"\n")[0])
    if "error" in doc:
        err = doc["error"]
        raise RpcError(err.get("code", "EIO"), err.get("message", ""), data=err.get("data"))
    return doc.get("result")
