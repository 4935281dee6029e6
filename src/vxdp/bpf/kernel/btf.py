"""Loading BTF into the kernel (BPF_BTF_LOAD), with the kernel's log on refusal.

A program's func_info/line_info and a map's key/value type ids refer to a BTF
object the kernel holds by fd; this module gives that fd an owner. The blob
itself (header, types, strings) is built and parsed by the pure layer; here we
only hand bytes over. As for programs, the first attempt goes without a log and
a refusal is retried with one (grown on ENOSPC), so the error says why.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

from .objects import obj_get_info
from .syscall import BpfError, Cmd, FdOwner, buf_addr, call

LOG_START = 64 * 1024
LOG_MAX = 16 * 1024 * 1024


class KernelBtfError(BpfError):
    """The kernel refused a BTF blob; ``.log`` holds its BTF verifier log."""


class _BtfLoadAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_BTF_LOAD: btf 0, btf_log_buf 8, btf_size 16, btf_log_size 20,
    btf_log_level 24, btf_log_true_size 28 (6.4+, output)."""

    _fields_ = [
        ("btf", ctypes.c_uint64),
        ("btf_log_buf", ctypes.c_uint64),
        ("btf_size", ctypes.c_uint32),
        ("btf_log_size", ctypes.c_uint32),
        ("btf_log_level", ctypes.c_uint32),
        ("btf_log_true_size", ctypes.c_uint32),
    ]


class _BtfInfo(ctypes.Structure):
    """``struct bpf_btf_info``: btf 0, btf_size 8, id 12, name 16, name_len 24, kernel_btf 28."""

    _fields_ = [
        ("btf", ctypes.c_uint64),
        ("btf_size", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("name", ctypes.c_uint64),
        ("name_len", ctypes.c_uint32),
        ("kernel_btf", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class BtfInfo:
    id: int
    size: int


def _load_once(raw: ctypes.Array, size: int, log: ctypes.Array | None) -> int:
    attr = _BtfLoadAttr(btf=buf_addr(raw), btf_size=size, btf_log_buf=buf_addr(log),
                        btf_log_size=len(log) if log is not None else 0, btf_log_level=1 if log is not None else 0)
    return call(Cmd.BTF_LOAD, attr, "btf")


class KernelBtf(FdOwner):
    """A BTF object in the kernel, owned through one fd."""

    def __init__(self, fd: int):
        self._fd = fd

    @classmethod
    def load(cls, raw: bytes) -> KernelBtf:
        """Load a raw BTF blob (header + types + strings, as in an object's ``.BTF``)."""
        if not raw:
            raise ValueError("btf: empty blob")
        buf = ctypes.create_string_buffer(bytes(raw), len(raw))
        try:
            return cls(_load_once(buf, len(raw), None))
        except BpfError:
            pass
        size = LOG_START
        while True:
            log = ctypes.create_string_buffer(size)
            try:
                return cls(_load_once(buf, len(raw), log))
            except BpfError as e:
                if e.errno == errno.ENOSPC and size < LOG_MAX:
                    size = min(size * 4, LOG_MAX)
                    continue
                raise KernelBtfError(Cmd.BTF_LOAD, e.errno, "btf", log.value.decode(errors="replace")) from None

    def info(self) -> BtfInfo:
        i = _BtfInfo()
        obj_get_info(self.fd, i, "btf")
        return BtfInfo(id=i.id, size=i.btf_size)
