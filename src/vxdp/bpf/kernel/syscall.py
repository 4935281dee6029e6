"""The one door to bpf(2): `sys_bpf`, the command ids, and the error every wrapper raises.

Why one function: every kernel call in `vxdp.bpf.kernel` goes through
``syscall.sys_bpf(cmd, attr)`` (looked up on this module at call time), so a
test can replace it and see each command and its attr, the way aya's
``sys/fake.rs`` does, and there is exactly one place that turns ``-1``/errno
into an exception.

The attr is a ctypes `Structure` holding only the fields of ``union bpf_attr``
one command uses, laid out field by field as in ``/usr/include/linux/bpf.h``.
The kernel copies ``size`` bytes and treats missing tail fields as zero, and it
refuses non-zero bytes beyond what it knows (E2BIG), so a per-command struct
that stops at the last field we fill is both correct and forward compatible.
Pointer fields (``__aligned_u64``) carry ``ctypes.addressof`` of buffers that
the caller keeps alive for the duration of the call.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import platform
from enum import IntEnum

_NR_BPF = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280}

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class Cmd(IntEnum):
    """``enum bpf_cmd`` (uapi), the commands vxdp issues and their neighbours."""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    RAW_TRACEPOINT_OPEN = 17
    BTF_LOAD = 18
    BTF_GET_FD_BY_ID = 19
    TASK_FD_QUERY = 20
    MAP_LOOKUP_AND_DELETE_ELEM = 21
    MAP_FREEZE = 22
    BTF_GET_NEXT_ID = 23
    MAP_LOOKUP_BATCH = 24
    MAP_LOOKUP_AND_DELETE_BATCH = 25
    MAP_UPDATE_BATCH = 26
    MAP_DELETE_BATCH = 27
    LINK_CREATE = 28
    LINK_UPDATE = 29
    LINK_GET_FD_BY_ID = 30
    LINK_GET_NEXT_ID = 31
    ENABLE_STATS = 32
    ITER_CREATE = 33
    LINK_DETACH = 34
    PROG_BIND_MAP = 35


class BpfError(OSError):
    """A bpf(2) call failed. ``.cmd`` names the call, ``.errno`` is the kernel's answer.

    ``.log`` carries the kernel's log text where the command has one (program
    and BTF loads); it is empty otherwise.
    """

    def __init__(self, cmd: Cmd | int, err: int, what: str = "", log: str = ""):
        try:
            cmd = Cmd(cmd)
            name = f"BPF_{cmd.name}"
        except ValueError:
            name = f"bpf cmd {cmd}"
        text = f"{name}{' (' + what + ')' if what else ''}: {strerror(err)}"
        super().__init__(err, text)
        self.cmd = cmd
        self.log = log

    def __str__(self) -> str:
        base = self.strerror or ""
        if self.log:
            return f"{base}\nkernel log:\n{self.log.rstrip()}"
        return base


ENOTSUPP = 524  # kernel-internal "not supported", leaks to user space from map batch ops


def strerror(err: int) -> str:
    """``os.strerror``, plus the kernel-internal codes bpf(2) is known to return."""
    if err == ENOTSUPP:
        return "Operation not supported (ENOTSUPP 524)"
    return os.strerror(err)


def bpf_syscall_number(machine: str | None = None) -> int:
    """The bpf(2) number for this architecture (the generic table's 280, x86_64's own 321)."""
    machine = machine or platform.machine()
    try:
        return _NR_BPF[machine.lower()]
    except KeyError:
        raise OSError(_errno.ENOSYS, f"bpf(2): no syscall number known for machine {machine!r}") from None


_NR = _NR_BPF.get(platform.machine().lower(), -1)


def sys_bpf(cmd: Cmd | int, attr: ctypes.Structure, what: str = "") -> int:
    """Issue ``bpf(cmd, &attr, sizeof(attr))``; return its non-negative result or raise `BpfError`.

    EINTR is retried (the kernel may be interrupted in long test runs and map walks).
    ``what`` is added to the error message (a map or program name) to say which object failed.
    """
    if _NR < 0:
        bpf_syscall_number()  # raises ENOSYS naming the machine
    while True:
        ret = _syscall(_NR, ctypes.c_int(int(cmd)), ctypes.byref(attr),
                       ctypes.c_uint(ctypes.sizeof(attr)))
        if ret >= 0:
            return int(ret)
        err = ctypes.get_errno()
        if err != _errno.EINTR:
            raise BpfError(cmd, err, what)


def call(cmd: Cmd | int, attr: ctypes.Structure, what: str = "") -> int:
    """`sys_bpf` looked up on this module at call time, so tests may replace ``syscall.sys_bpf``."""
    return globals()["sys_bpf"](cmd, attr, what)


def call_or_none(cmd: Cmd | int, attr: ctypes.Structure, what: str = "",
                 missing: int = _errno.ENOENT) -> int | None:
    """`call`, with ``missing`` (ENOENT: no such key, no next id) answered as ``None``."""
    try:
        return call(cmd, attr, what)
    except BpfError as e:
        if e.errno == missing:
            return None
        raise


def close_fd(fd: int) -> None:
    """Close an fd we own, ignoring EBADF (a second close from ``__del__``)."""
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def buf_addr(buf: ctypes.Array | None) -> int:
    """The address a pointer field carries for ``buf`` (0 for no buffer)."""
    return ctypes.addressof(buf) if buf is not None else 0


class FdOwner:
    """Owns one kernel fd: ``close()`` is idempotent, ``__del__`` is the safety net.

    Subclasses set ``self._fd`` once the kernel has given the fd.
    """

    _fd: int = -1

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        close_fd(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 -- a finalizer's safety net: may run at interpreter exit
            pass
