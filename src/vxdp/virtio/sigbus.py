"""Survive a peer shrinking the file under our mapping of its memory (SIGBUS).

A shared mapping of a file stays valid only while the file is at least as large: a page past
EOF faults with SIGBUS (BUS_ADRERR), and a frontend holds the fd of its own memory, so it can
``ftruncate`` it to 0 after SET_MEM_TABLE. Python cannot catch that: SIGBUS is synchronous (the
faulting load or store runs again when a handler returns), a Python-level handler only runs
between bytecodes (never, since the faulting instruction is inside numba code or a numpy copy)
and ``faulthandler`` only prints and dies. So:

1. Refused up front (`vxdp.virtio.memory`): a region whose fd is smaller than
   ``mmap_offset + size`` (fstat), whose offset + size does not fit 63 bits, or whose fd is not
   a regular file. memfds, /dev/shm (tmpfs) and hugetlbfs files are regular files and fstat
   gives their size; what it cannot size (character devices such as /dev/zero or DAX devices,
   eventfds, sockets) is refused: no frontend we know hands those over as guest RAM.
2. Sealed where the fd allows it: a memfd created with MFD_ALLOW_SEALING and not yet sealed gets
   F_SEAL_SHRINK from us (the peer can no longer shrink it, SIGBUS is then impossible). QEMU's
   memory-backend-memfd seals by default (``seal=on``: F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)
   and our guest driver does the same. Unsealable fds are NOT refused: QEMU's
   memory-backend-file on /dev/hugepages or /dev/shm (the classic vhost-user setup, DPDK's
   documented one) and ``memfd,seal=off`` cannot be sealed, and refusing them would refuse
   every such VM.
3. For those, this module: a C-level SIGBUS handler (a numba ``cfunc`` installed with
   ``sigaction(SA_SIGINFO)``) that looks the faulting address up in a table of the peer
   mappings we registered. Inside one, it maps an anonymous private zero page over the faulting
   page with ``mmap(MAP_FIXED)`` (trying 4 KiB, then 2 MiB and 1 GiB pages for hugetlbfs
   mappings, whose VMAs split only on huge-page boundaries), counts the fault in the table and
   returns: the instruction runs again on the zero page and the code that faulted carries on
   with zeros. The datapath checks the fault counter (`faults`: one integer load) after every
   batch and the daemon ends that session with one log line; later faults of the same session
   are absorbed the same way. A SIGBUS outside every registered range (a bug of ours) restores
   the previous action and returns, so the process dies as it did before, with its core.
   Unmapping the region later (``munmap`` of its whole range) also removes the patched pages.
   This is what some VMMs do for guest RAM they do not own; ``mmap`` is a plain syscall in glibc
   (not on POSIX's async-signal-safe list, but safe on Linux in practice, and the fault can only
   come from our own accesses to guest memory, never from inside malloc).

The handler is compiled at first `install` (a fraction of a second; not cached, because the
table's address is compiled into it) and stays installed for the life of the process.
"""

from __future__ import annotations

import ctypes
import signal
import threading

import numpy as np

SLOTS = 64  # registered ranges at once (8 regions per memory table; a few tables alive in tests)
_FIELDS = 4  # start, end, faults, last faulting address
_TABLE = np.zeros(SLOTS * _FIELDS + 1, np.int64)  # [-1]: total faults (one load for the datapath)
_OLD = ctypes.create_string_buffer(256)  # the struct sigaction we replaced
_PAGE_SIZES = (4096, 2 << 20, 1 << 30)
_PROT_RW = 0x1 | 0x2
_MAP_PRIVATE_ANON_FIXED = 0x02 | 0x20 | 0x10
_SA_SIGINFO = 0x4
_SA_RESTART = 0x10000000

_lock = threading.Lock()
_handler = None  # the compiled cfunc, kept alive while installed


class GuardFull(Exception):
    """Every slot of the table holds a live mapping."""


def _compile():
    import numba
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def as_ptr(typingctx, addr):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)
        return types.voidptr(addr), codegen

    libc = ctypes.CDLL(None, use_errno=True)
    c_mmap = libc.mmap
    c_mmap.restype = ctypes.c_int64
    c_mmap.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                       ctypes.c_int64]
    c_sigaction = libc.sigaction
    c_sigaction.restype = ctypes.c_int32
    c_sigaction.argtypes = [ctypes.c_int32, ctypes.c_int64, ctypes.c_int64]
    table_addr = _TABLE.ctypes.data
    old_addr = ctypes.addressof(_OLD)
    n = SLOTS
    total = SLOTS * _FIELDS
    sizes = _PAGE_SIZES
    sigbus = int(signal.SIGBUS)

    @numba.cfunc(types.void(types.int32, types.voidptr, types.voidptr), nopython=True)
    def handler(sig, info, ctx):
        addr = numba.carray(info, 4, np.int64)[2]  # siginfo_t.si_addr (offset 16 on 64-bit Linux)
        tbl = numba.carray(as_ptr(table_addr), total + 1, np.int64)
        for i in range(n):
            if tbl[i * 4] <= addr < tbl[i * 4 + 1]:
                for ps in sizes:
                    page = addr & ~(ps - 1)
                    if c_mmap(page, ps, _PROT_RW, _MAP_PRIVATE_ANON_FIXED, -1, 0) == page:
                        tbl[i * 4 + 2] += 1
                        tbl[i * 4 + 3] = addr
                        tbl[total] += 1
                        return
                break
        c_sigaction(sigbus, old_addr, 0)  # not guest memory: fault again under the old action

    return handler


def install() -> None:
    """Install the handler once per process (idempotent)."""
    global _handler
    with _lock:
        if _handler is not None:
            return
        h = _compile()
        act = (ctypes.c_char * 152)()  # x86-64/arm64 glibc: handler, sa_mask[128], sa_flags, restorer
        ctypes.c_uint64.from_buffer(act, 0).value = h.address
        ctypes.c_int32.from_buffer(act, 136).value = _SA_SIGINFO | _SA_RESTART
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.sigaction(int(signal.SIGBUS), ctypes.byref(act), ctypes.byref(_OLD)) != 0:
            raise OSError(ctypes.get_errno(), "sigaction(SIGBUS)")
        _handler = h


def register(start: int, end: int) -> int:
    """Guard ``[start, end)`` (a peer's shared mapping); returns the slot for `unregister`."""
    install()
    with _lock:
        for i in range(SLOTS):
            if _TABLE[i * _FIELDS + 1] == 0:
                _TABLE[i * _FIELDS + 2] = _TABLE[i * _FIELDS + 3] = 0
                _TABLE[i * _FIELDS] = start
                _TABLE[i * _FIELDS + 1] = end  # end last: the handler matches a slot once end > start
                return i
    raise GuardFull(f"{SLOTS} guarded mappings already")


def unregister(slot: int) -> None:
    with _lock:
        _TABLE[slot * _FIELDS + 1] = 0
        _TABLE[slot * _FIELDS] = 0


def slot_faults(slot: int) -> tuple[int, int]:
    """(faults absorbed in this slot, the last faulting address)."""
    return int(_TABLE[slot * _FIELDS + 2]), int(_TABLE[slot * _FIELDS + 3])


def faults() -> int:
    """Faults absorbed in this process so far (any slot): compare with an earlier value."""
    return int(_TABLE[SLOTS * _FIELDS])
