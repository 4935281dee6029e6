"""Unix socket paths a daemon owns: refuse one that is served, reclaim a stale one, remove only our own.

Both daemons bind sockets at paths users choose (``--socket``) or derive from a name
(``/run/vxdp/host-DEV.sock``). Binding over a path used to unlink whatever was there:
a second ``vxdp host serve --name DEV`` took the first one's control socket, and
removed it on exit, leaving the first serving traffic where nobody could reach it.

The rules, and the kernel facts they rest on:

- *Who serves a path* is whoever holds an ``flock`` on ``PATH.lock`` (the file holds
  its pid, for the message). The kernel drops the lock when the holder dies, even by
  ``kill -9``, so a crash never leaves a path claimed.
- *A socket nobody serves* (connect gives ECONNREFUSED: no listener) is stale and is
  removed before we bind. One that accepts a connection belongs to another process (a
  QEMU ``server=on``, a daemon of an older vxdp): we refuse, naming its pid from
  ``SO_PEERCRED``, and never remove it.
- *On exit* the socket is unlinked only if the path still names the inode we bound,
  and the lock file only if it is still ours: what someone else put there stays.

Claiming is a separate step from binding so that a daemon refuses at once, before
seconds of set-up, and binds only when it is ready to serve.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
from pathlib import Path

__all__ = ["PathBusy", "SocketClaim"]

_UCRED = struct.Struct("3i")  # pid, uid, gid


class PathBusy(OSError):
    """The path is served by a live process; ``pid`` names it (0 when unknown)."""

    def __init__(self, path: Path, pid: int, how: str) -> None:
        super().__init__(errno.EADDRINUSE, f"{path} is already served by {self.holder(pid)}{how}")
        self.path, self.pid = path, pid

    @staticmethod
    def holder(pid: int) -> str:
        return f"pid {pid}" if pid else "a process"

    def of(self, what: str) -> str:
        """The refusal said of what the path stands for: ``device DEV is already served by pid N (PATH)``."""
        return f"{what} is already served by {self.holder(self.pid)} (control socket {self.path})"


def _listener_pid(path: Path) -> int | None:
    """The pid of the process listening on ``path``; None if nobody listens (a stale socket)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except TimeoutError:
        return 0  # a listener with a full backlog is still a listener
    else:
        pid, _, _ = _UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        return pid
    finally:
        s.close()


class SocketClaim:
    """A path this process serves: `take` it, `listen` when ready, `release` it when done."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._bound: tuple[int, int] | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @classmethod
    def take(cls, path: str | os.PathLike) -> SocketClaim:
        """Claim ``path``: `PathBusy` if a live process serves it; a stale socket there is removed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock")
        for _ in range(3):  # the lock file may be replaced between our open and our flock
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raw = os.pread(fd, 32, 0)
                os.close(fd)
                pid = int(raw) if raw.strip().isdigit() else 0
                raise PathBusy(path, pid, "") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise OSError(errno.EAGAIN, f"{lock}: replaced while we locked it, three times")
        claim = cls(path, fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            claim._clear_stale()
        except BaseException:
            claim.release()
            raise
        return claim

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{self.path} exists and is not a socket")
        pid = _listener_pid(self.path)
        if pid is not None:
            raise PathBusy(self.path, pid, " (a program that holds no vxdp claim on it: left as it is)")
        os.unlink(self.path)

    def listen(self, backlog: int, *, group: int | None = None) -> socket.socket:
        """Bind and listen at the path (non-blocking is the caller's choice); remember what we bound.

        The socket is created 0600 whatever the process's umask (the umask is what bind(2) applies,
        so it is set around the call: no moment exists where the path is more open); with ``group``
        (a gid) it is then given to that group and opened to it, 0660.
        """
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(str(self.path))
        except OSError:
            s.close()
            raise
        finally:
            os.umask(old)
        try:
            st = os.lstat(self.path)
            self._bound = (st.st_dev, st.st_ino)
            if group is not None:
                os.chown(self.path, -1, group)
                os.chmod(self.path, 0o660)
            s.listen(backlog)
        except OSError:
            s.close()
            self.release()
            raise
        return s

    def release(self) -> None:
        """Remove the socket if the path still names the one we bound, then the lock if still ours. Idempotent."""
        if self._bound is not None:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._bound:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._bound = None
        if self._lock_fd >= 0:
            try:
                if os.fstat(self._lock_fd).st_ino == os.stat(self.lock_path).st_ino:
                    os.unlink(self.lock_path)
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = -1
