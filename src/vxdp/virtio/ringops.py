"""Compiled building blocks of the compiled ring loops: loads, stores, a fence, translation, the chain walk.

Memory model. Guest memory reaches a compiled loop as ``mems``, a tuple of uint8
arrays (one per region, see ``GuestMemory.regions_table``), and ``starts``,
their guest-physical addresses. Integers are read and written with one
access of their width (``rd16`` and friends), never byte by byte.
Every address is range-checked against one region before any access:
addresses >= 2**62 are refused outright (no region lies there), so the sums
below stay far from int64 overflow.

Ordering. The other party runs in another process, concurrently. numba has
no volatile or atomic accesses of its own, so ``@intrinsic``s emit them: each
word is an ``unordered`` atomic load or store (one untorn access, see
`_access`), and ``fence`` is LLVM's ``fence seq_cst``, which is both a
compiler barrier (LLVM moves no memory access across it) and, on x86, a
``lock or`` to the stack, which drains the store buffer (a full barrier). We use it where the virtio spec asks for a
barrier: after reading the other side's ring index and before reading the
entries it covers (load->load: x86 keeps that order anyway, the fence stops
the compiler); before publishing our index after writing the entries
(store->store: likewise); and between publishing our index and reading the
other side's event/flags word to decide about a notification (store->load:
the one reordering x86 TSO allows, so here the fence is a real mfence, as
Linux's ``virtio_mb`` is).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from vxdp.virtio.virtqueue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    RingError,
)

E_AVAIL_IDX = int(RingError.AVAIL_IDX)
E_HEAD_RANGE = int(RingError.HEAD_RANGE)
E_NEXT_RANGE = int(RingError.NEXT_RANGE)
E_CHAIN_LOOP = int(RingError.CHAIN_LOOP)
E_OUT_OF_MEMORY = int(RingError.OUT_OF_MEMORY)
E_INDIRECT_NOT_NEGOTIATED = int(RingError.INDIRECT_NOT_NEGOTIATED)
E_INDIRECT_NEXT = int(RingError.INDIRECT_NEXT)
E_INDIRECT_NESTED = int(RingError.INDIRECT_NESTED)
E_INDIRECT_LEN = int(RingError.INDIRECT_LEN)
E_LEN_OVERFLOW = int(RingError.LEN_OVERFLOW)
E_READ_AFTER_WRITE = int(RingError.READ_AFTER_WRITE)
E_USED_ID = int(RingError.USED_ID)
E_USED_IDX = int(RingError.USED_IDX)
E_USED_LEN = int(RingError.USED_LEN)
E_NUM_BUFFERS = int(RingError.NUM_BUFFERS)
U32_MAX = 0xFFFFFFFF

# Queue parameter array (int64), shared by device and driver loops.
Q_NUM = 0
Q_DESC_R, Q_DESC_O = 1, 2  # region index and offset of the descriptor table
Q_AVAIL_R, Q_AVAIL_O = 3, 4
Q_USED_R, Q_USED_O = 5, 6
Q_EVENT_IDX = 7
Q_INDIRECT = 8
Q_HDR_LEN = 9
Q_MRG = 10
Q_LAST_AVAIL = 11  # device: next avail entry to pop
Q_USED_IDX = 12  # device: our used idx
Q_AVAIL_IDX = 13  # driver: our avail idx
Q_LAST_USED = 14  # driver: next used entry to reap
Q_NFREE = 15  # driver: free descriptors on the stack
Q_BUF_R, Q_BUF_O = 16, 17  # driver: the fixed-size buffer area (one buffer per descriptor id)
Q_BUF_GPA = 18
Q_BUF_SIZE = 19
Q_LEN = 20


@intrinsic
def fence(typingctx):
    """``fence seq_cst``: a compiler barrier and, on x86, a full hardware barrier."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


def _access(bits: int, store: bool):
    """An intrinsic for one ``bits``-wide little-endian load or store at byte ``off`` of a uint8 array.

    Emitted as a single LLVM ``unordered`` atomic of natural alignment, so the
    access is one ``mov`` on x86: a ring index the other process is storing is
    never seen half old, half new (assembling it from bytes did exactly that
    when ``used->idx`` crossed a multiple of 256: the driver then read entries
    the device had not written yet). Ring words are naturally aligned (the
    vring addresses are checked at setup, §2.7); a misaligned header field in a
    guest buffer still gets one plain ``mov``, which x86 performs unaligned.
    Loads return int64 (zero-extended; a 64-bit value above 2**63 comes back
    negative), stores take the low ``bits`` of an int64.
    """
    ity = ir.IntType(bits)

    def pointer(context, builder, aty, arr, offty, off):
        a = context.make_array(aty)(context, builder, arr)
        off = context.cast(builder, off, offty, types.int64)
        return builder.bitcast(builder.gep(a.data, [off]), ity.as_pointer())

    if store:
        @intrinsic
        def st(typingctx, a, off, v):
            def codegen(context, builder, sig, args):
                v64 = context.cast(builder, args[2], sig.args[2], types.int64)
                p = pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
                builder.store_atomic(builder.trunc(v64, ity) if bits < 64 else v64, p, "unordered", bits // 8)
                return context.get_dummy_value()
            return types.void(a, off, v), codegen
        return st

    @intrinsic
    def ld(typingctx, a, off):
        def codegen(context, builder, sig, args):
            p = pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            v = builder.load_atomic(p, "unordered", bits // 8)
            return builder.zext(v, ir.IntType(64)) if bits < 64 else v
        return types.int64(a, off), codegen
    return ld


rd16 = _access(16, store=False)
rd32 = _access(32, store=False)
wr16 = _access(16, store=True)
wr32 = _access(32, store=True)
wr64 = _access(64, store=True)


@njit(inline="always")
def need_event(event, new, old):
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


@njit(inline="always")
def translate(mems, starts, addr, n):
    """(region, offset) of [addr, addr+n) inside one region, or (-1, 0). 0 <= addr < 2**62, 0 <= n < 2**33."""
    for i in range(len(mems)):
        s = starts[i]
        if addr >= s and addr + n <= s + mems[i].size:
            return i, addr - s
    return -1, 0


@njit(cache=True)
def walk(mems, starts, q, head, seg_r, seg_o, seg_l, seg_w):
    """Walk the chain at ``head`` by the rules of ``virtqueue.walk_chain``.

    Fills ``seg_*`` (region, offset, length, writable) and returns
    ``(nseg, readable_len, writable_len, err)``; ``seg_*`` need ``num`` entries.
    """
    num = q[Q_NUM]
    if head >= num:
        return 0, 0, 0, E_HEAD_RANGE
    tr = q[Q_DESC_R]
    to = q[Q_DESC_O]
    tsize = num
    in_ind = False
    idx = head
    count = 0
    rlen = 0
    wlen = 0
    seen_write = False
    nseg = 0
    while True:
        count += 1
        if count > num:
            return nseg, rlen, wlen, E_CHAIN_LOOP
        t = mems[tr]
        d = to + 16 * idx
        hi = np.int64(t[d + 7])
        addr = (rd32(t, d) | (rd16(t, d + 4) << 32) | (np.int64(t[d + 6]) << 48) | ((hi & 0x3F) << 56))
        length = rd32(t, d + 8)
        flags = rd16(t, d + 12)
        nxt = rd16(t, d + 14)
        if flags & DESC_F_INDIRECT:
            if q[Q_INDIRECT] == 0:
                return nseg, rlen, wlen, E_INDIRECT_NOT_NEGOTIATED
            if in_ind:
                return nseg, rlen, wlen, E_INDIRECT_NESTED
            if flags & DESC_F_NEXT:
                return nseg, rlen, wlen, E_INDIRECT_NEXT
            if length == 0 or length % 16 != 0:
                return nseg, rlen, wlen, E_INDIRECT_LEN
            if hi >= 0x40:
                return nseg, rlen, wlen, E_OUT_OF_MEMORY
            r, o = translate(mems, starts, addr, length)
            if r < 0:
                return nseg, rlen, wlen, E_OUT_OF_MEMORY
            tr = r
            to = o
            tsize = length // 16
            in_ind = True
            idx = 0
            continue
        writable = (flags & DESC_F_WRITE) != 0
        if writable:
            seen_write = True
            wlen += length
        else:
            if seen_write:
                return nseg, rlen, wlen, E_READ_AFTER_WRITE
            rlen += length
        if rlen > U32_MAX or wlen > U32_MAX:
            return nseg, rlen, wlen, E_LEN_OVERFLOW
        if hi >= 0x40:
            return nseg, rlen, wlen, E_OUT_OF_MEMORY
        r, o = translate(mems, starts, addr, length)
        if r < 0:
            return nseg, rlen, wlen, E_OUT_OF_MEMORY
        seg_r[nseg] = r
        seg_o[nseg] = o
        seg_l[nseg] = length
        seg_w[nseg] = writable
        nseg += 1
        if (flags & DESC_F_NEXT) == 0:
            return nseg, rlen, wlen, 0
        if nxt >= tsize:
            return nseg, rlen, wlen, E_NEXT_RANGE
        idx = nxt


@njit(cache=True)
def pop_chains(mems, starts, q, max_chains, heads, nsegs, seg_gpa, seg_len, seg_w):
    """Pop up to ``max_chains`` chains without touching the used ring (tests and non-net queues).

    Chain k has head ``heads[k]`` and segments ``[sum(nsegs[:k]), +nsegs[k])``
    of the flat ``seg_*`` arrays (``max_chains * num`` entries). Returns
    ``(chains, err)``; on an error the failing chain is not counted or consumed.
    """
    num = q[Q_NUM]
    a = mems[q[Q_AVAIL_R]]
    ao = q[Q_AVAIL_O]
    avail_idx = rd16(a, ao + 2)
    fence()
    last = q[Q_LAST_AVAIL]
    if ((avail_idx - last) & 0xFFFF) > num:
        return 0, E_AVAIL_IDX
    sr = np.empty(num, np.int64)
    so = np.empty(num, np.int64)
    sl = np.empty(num, np.int64)
    sw = np.empty(num, np.bool_)
    n = 0
    base = 0
    while n < max_chains and ((avail_idx - last) & 0xFFFF) != 0:
        head = rd16(a, ao + 4 + 2 * (last & (num - 1)))
        nseg, _rlen, _wlen, err = walk(mems, starts, q, head, sr, so, sl, sw)
        if err != 0:
            q[Q_LAST_AVAIL] = last
            return n, err
        for s in range(nseg):
            seg_gpa[base + s] = starts[sr[s]] + so[s]
            seg_len[base + s] = sl[s]
            seg_w[base + s] = sw[s]
        heads[n] = head
        nsegs[n] = nseg
        base += nseg
        n += 1
        last = (last + 1) & 0xFFFF
    q[Q_LAST_AVAIL] = last
    return n, 0


def make_q() -> np.ndarray:
    return np.zeros(Q_LEN, np.int64)
