"""The kernel's own view of BPF objects, for tests that count what a daemon left behind.

Names, not the daemon's word: a test asks the kernel which programs, maps and BTF objects exist
(``BPF_*_GET_NEXT_ID``) and, for programs and maps, their names, so a leak shows even when the
daemon believes it freed everything. Device names from `device_name` are unique per process and
fixed-width, so the ``<device>_`` prefix of the kernel names cannot match another test's device.
"""

from __future__ import annotations

import itertools
import os
import struct
import time

from ..bpf.kernel.maps import KernelMap
from ..bpf.kernel.objects import btf_ids, map_get_fd_by_id, map_ids, prog_get_fd_by_id, prog_ids
from ..bpf.kernel.prog import KernelProgram

__all__ = ["btf_ids", "btf_variant", "device_name", "kernel_ids", "map_names", "names_left", "prog_names",
           "wait_gone"]

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_seq = itertools.count()


def _b36(n: int, width: int) -> str:
    out = ""
    for _ in range(width):
        n, d = divmod(n, 36)
        out = _B36[d] + out
    return out


def device_name(letter: str) -> str:
    """A device name of 7 characters (the part of a kernel name that names the device): ``letter``,
    this process's pid in 4 base-36 digits, a per-process sequence in 2; never the same for two live
    processes (pid < 36**4) nor twice in one (up to 1296 names), and no name a prefix of another."""
    pid = os.getpid()
    if pid >= 36 ** 4:
        raise RuntimeError(f"pid {pid} does not fit 4 base-36 digits; device names would collide")
    return letter[0] + _b36(pid, 4) + _b36(next(_seq), 2)


def prog_names(prefix: str) -> dict[int, str]:
    """Live kernel programs whose name starts with ``prefix``: id -> name."""
    out = {}
    for pid in prog_ids():
        try:
            fd = prog_get_fd_by_id(pid)
        except OSError:
            continue
        with KernelProgram.from_fd(fd) as p:
            if p.name.startswith(prefix):
                out[pid] = p.name
    return out


def map_names(prefix: str) -> dict[int, str]:
    """Live kernel maps whose name starts with ``prefix``: id -> name.

    Opening a map by id takes a user reference: a kernel (6.18) prog_array whose owner closes its
    last fd while we hold one is cleared twice, and one reference leaks if the first clear has not
    run yet (``prog_array_map_clear`` ignores what ``schedule_work`` returns). The offload service
    waits for its own prog_arrays' clears, so this is safe for them; another process's may leak."""
    out = {}
    for mid in map_ids():
        try:
            fd = map_get_fd_by_id(mid)
        except OSError:
            continue
        m = KernelMap.from_fd(fd)
        try:
            name = m.info().name
        finally:
            m.close()
        if name.startswith(prefix):
            out[mid] = name
    return out


def kernel_ids() -> tuple[frozenset[int], frozenset[int]]:
    """The ids of every live program and map, read without opening any (a baseline for `names_left`)."""
    return frozenset(prog_ids()), frozenset(map_ids())


def wait_gone(ids: set[int] | frozenset[int], live, timeout: float = 10.0) -> set[int]:
    """Poll ``live()`` (ids only) until none of ``ids`` is in it or ``timeout`` passed; the ids left.

    The kernel frees a map a program used after an RCU grace period and a work item, so a test that
    has closed everything still sees the map for a while: it waits for the ids, it does not assert
    on a time."""
    deadline = time.monotonic() + timeout
    while True:
        left = set(ids) & set(live())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def names_left(prefix: str, since: tuple[frozenset[int], frozenset[int]],
               timeout: float = 10.0) -> tuple[list[str], list[str]]:
    """Names of live programs and maps starting with ``prefix``, once what was made after ``since``
    (a `kernel_ids`) had the time to go.

    The wait reads ids only: opening a dying prog_array by id (as `map_names` does) while the
    kernel's clear of it is queued leaks the array (see `map_names`), so scanning names in a loop
    while the objects die would make the leak it looks for."""
    progs, maps = kernel_ids()
    wait_gone(progs - since[0], prog_ids, timeout)
    wait_gone(maps - since[1], map_ids, timeout)
    return sorted(prog_names(prefix).values()), sorted(map_names(prefix).values())


def btf_variant(raw: bytes, n: int, pad: int = 0) -> bytes:
    """``raw`` (a BTF blob) with one more string at the end of its string section: a blob that differs
    for every ``n`` (``pad`` bytes longer) and describes the same types, so func_info and line_info
    still fit it."""
    hdr_len, _type_off, _type_len, str_off, str_len = struct.unpack_from("<IIIII", raw, 4)
    end = hdr_len + str_off + str_len
    extra = f"vxdp_variant_{n}".encode() + b"x" * pad + b"\0"
    out = bytearray(raw[:end] + extra + raw[end:])
    struct.pack_into("<I", out, 4 + 16, str_len + len(extra))
    return bytes(out)
