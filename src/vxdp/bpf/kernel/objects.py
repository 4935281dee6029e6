"""Kernel-wide BPF objects by id, pinning, and BPF_OBJ_GET_INFO_BY_FD.

Why ids: an fd is per process, an id is per kernel. Walking
``BPF_{PROG,MAP}_GET_NEXT_ID`` gives every live program and map on the host,
which is how tests prove that closing our objects really freed them (the set of
ids after equals the set before), and how ``bpftool`` finds objects it did not
create. The walk is racy by nature (objects come and go); each id is a
snapshot.
"""

from __future__ import annotations

import ctypes
import os

from .syscall import BpfError, Cmd, buf_addr, call, call_or_none


class _GetIdAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_*_GET_NEXT_ID / BPF_*_GET_FD_BY_ID: start_id (or prog/map id) @0, next_id @4, open_flags @8."""

    _fields_ = [("start_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class _ObjAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_OBJ_PIN / BPF_OBJ_GET: pathname @0, bpf_fd @8, file_flags @12."""

    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_OBJ_GET_INFO_BY_FD: bpf_fd @0, info_len @4, info @8."""

    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


def _next_id(cmd: Cmd, start: int) -> int | None:
    attr = _GetIdAttr(start_id=start)
    if call_or_none(cmd, attr) is None:
        return None
    return attr.next_id


def prog_get_next_id(start: int = 0) -> int | None:
    """The id of the first program after ``start``; ``None`` past the last one."""
    return _next_id(Cmd.PROG_GET_NEXT_ID, start)


def map_get_next_id(start: int = 0) -> int | None:
    """The id of the first map after ``start``; ``None`` past the last one."""
    return _next_id(Cmd.MAP_GET_NEXT_ID, start)


def _all_ids(step) -> set[int]:
    ids: set[int] = set()
    cur = step(0)
    while cur is not None and len(ids) < 1 << 24:  # ids are 31-bit; bound the walk anyway
        ids.add(cur)
        cur = step(cur)
    return ids


def prog_ids() -> set[int]:
    """Every program id alive in the kernel now."""
    return _all_ids(prog_get_next_id)


def map_ids() -> set[int]:
    """Every map id alive in the kernel now."""
    return _all_ids(map_get_next_id)


def btf_ids() -> set[int]:
    """Every BTF object id alive in the kernel now (vmlinux's and modules' included)."""
    return _all_ids(lambda start: _next_id(Cmd.BTF_GET_NEXT_ID, start))


def prog_get_fd_by_id(prog_id: int) -> int:
    """A new fd (the caller owns it) for the program with ``prog_id``; `BpfError` ENOENT if gone."""
    return call(Cmd.PROG_GET_FD_BY_ID, _GetIdAttr(start_id=prog_id), f"prog id {prog_id}")


def map_get_fd_by_id(map_id: int, open_flags: int = 0) -> int:
    """A new fd (the caller owns it) for the map with ``map_id``; `BpfError` ENOENT if gone."""
    return call(Cmd.MAP_GET_FD_BY_ID, _GetIdAttr(start_id=map_id, open_flags=open_flags), f"map id {map_id}")


def obj_pin(fd: int, path: str | os.PathLike) -> None:
    """Pin the object behind ``fd`` at ``path`` on a bpffs mount (it then outlives every fd)."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    call(Cmd.OBJ_PIN, _ObjAttr(pathname=buf_addr(p), bpf_fd=fd), os.fsdecode(path))


def obj_get(path: str | os.PathLike, file_flags: int = 0) -> int:
    """A new fd (the caller owns it) for the object pinned at ``path``."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    return call(Cmd.OBJ_GET, _ObjAttr(pathname=buf_addr(p), file_flags=file_flags), os.fsdecode(path))


def obj_get_info(fd: int, info: ctypes.Structure, what: str = "") -> int:
    """Fill ``info`` (a ``bpf_prog_info``/``bpf_map_info`` struct) for ``fd``; return the length the kernel wrote.

    Pointer fields set in ``info`` before the call (map_ids, ...) are output
    buffers the kernel fills, each bounded by its count field.
    """
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    call(Cmd.OBJ_GET_INFO_BY_FD, attr, what)
    return attr.info_len


__all__ = [
    "BpfError",
    "btf_ids",
    "map_get_fd_by_id",
    "map_get_next_id",
    "map_ids",
    "obj_get",
    "obj_get_info",
    "obj_pin",
    "prog_get_fd_by_id",
    "prog_get_next_id",
    "prog_ids",
]
