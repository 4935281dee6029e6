"""Driver-side batch loops (our guest driver and the benchmark), compiled with numba.

Split out of ``fastring`` (which re-exports them) to keep modules small. Each
rx or tx descriptor owns one fixed-size buffer, ``buf_gpa + id * buf_size``;
the free-descriptor stack and per-head bookkeeping are the numpy arrays of
``virtqueue.DriverQueue``, so the Python driver half and these loops share
them. The device is not trusted either: used ids, lengths, indices and
``num_buffers`` are checked before use. Ordering as in ``ringops``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from vxdp.virtio.ringops import (
    E_NUM_BUFFERS,
    E_USED_ID,
    E_USED_IDX,
    E_USED_LEN,
    Q_AVAIL_IDX,
    Q_AVAIL_O,
    Q_AVAIL_R,
    Q_BUF_GPA,
    Q_BUF_O,
    Q_BUF_R,
    Q_BUF_SIZE,
    Q_DESC_O,
    Q_DESC_R,
    Q_EVENT_IDX,
    Q_HDR_LEN,
    Q_LAST_USED,
    Q_MRG,
    Q_NFREE,
    Q_NUM,
    Q_USED_O,
    Q_USED_R,
    fence,
    need_event,
    rd16,
    rd32,
    wr16,
    wr32,
    wr64,
)
from vxdp.virtio.virtqueue import DESC_F_WRITE, USED_F_NO_NOTIFY


@njit(cache=True)
def _driver_publish(mems, q, avail, old):
    """Publish avail idx behind a fence; decide about a kick (EVENT_IDX aware)."""
    num = q[Q_NUM]
    u = mems[q[Q_USED_R]]
    uo = q[Q_USED_O]
    fence()  # descriptors and avail entries before avail idx
    wr16(mems[q[Q_AVAIL_R]], q[Q_AVAIL_O] + 2, avail)
    q[Q_AVAIL_IDX] = avail
    if avail == old:
        return False
    fence()  # avail idx store before the avail_event / flags load
    if q[Q_EVENT_IDX] != 0:
        return need_event(rd16(u, uo + 4 + 8 * num), avail, old)
    return (rd16(u, uo) & USED_F_NO_NOTIFY) == 0


@njit(cache=True)
def _post(mems, q, free, ndesc, buf_len, length, flags, posted_len):
    """Take a free descriptor, point it at its fixed buffer, put it in the avail ring; returns id."""
    num = q[Q_NUM]
    nfree = q[Q_NFREE] - 1
    q[Q_NFREE] = nfree
    d = free[nfree]
    t = mems[q[Q_DESC_R]]
    o = q[Q_DESC_O] + 16 * d
    wr64(t, o, q[Q_BUF_GPA] + d * q[Q_BUF_SIZE])
    wr32(t, o + 8, length)
    wr16(t, o + 12, flags)
    wr16(t, o + 14, 0)
    ndesc[d] = 1
    buf_len[d] = posted_len
    avail = q[Q_AVAIL_IDX]
    wr16(mems[q[Q_AVAIL_R]], q[Q_AVAIL_O] + 4 + 2 * (avail & (num - 1)), d)
    q[Q_AVAIL_IDX] = (avail + 1) & 0xFFFF
    return d


@njit(cache=True)
def drv_rx_refill(mems, q, free, ndesc, buf_len, max_buffers):
    """Post up to ``max_buffers`` free descriptors as rx buffers of ``buf_size``; returns ``(posted, kick)``."""
    old = q[Q_AVAIL_IDX]
    n = 0
    bsz = q[Q_BUF_SIZE]
    while n < max_buffers and q[Q_NFREE] > 0:
        _post(mems, q, free, ndesc, buf_len, bsz, DESC_F_WRITE, bsz)
        n += 1
    avail = q[Q_AVAIL_IDX]
    q[Q_AVAIL_IDX] = old
    return n, _driver_publish(mems, q, avail, old)


@njit(cache=True)
def _reap_one(mems, q, free, ndesc, shadow_next, buf_len, e_off, check_len):
    """Validate used entry at ``e_off``; free its chain. Returns ``(id, len, err)``."""
    u = mems[q[Q_USED_R]]
    d = rd32(u, e_off)
    ln = rd32(u, e_off + 4)
    if d >= q[Q_NUM] or ndesc[d] == 0:
        return d, ln, E_USED_ID
    if check_len and ln > buf_len[d]:
        return d, ln, E_USED_LEN
    x = d
    nfree = q[Q_NFREE]
    for _ in range(ndesc[d]):
        free[nfree] = x
        nfree += 1
        x = shadow_next[x]
    q[Q_NFREE] = nfree
    ndesc[d] = 0
    return d, ln, 0


@njit(cache=True)
def drv_rx_reap(mems, q, free, ndesc, shadow_next, buf_len, out, out_lens, max_frames):
    """Copy received frames (header stripped) into ``out``; returns ``(count, dropped, err)``.

    With MRG_RXBUF a frame spans ``num_buffers`` used entries; a frame whose
    entries are not all published yet is left for the next call.
    """
    num = q[Q_NUM]
    hdr = q[Q_HDR_LEN]
    mrg = q[Q_MRG] != 0
    u = mems[q[Q_USED_R]]
    uo = q[Q_USED_O]
    b = mems[q[Q_BUF_R]]
    bo = q[Q_BUF_O]
    bsz = q[Q_BUF_SIZE]
    used_idx = rd16(u, uo + 2)
    fence()
    last = q[Q_LAST_USED]
    delta = (used_idx - last) & 0xFFFF
    if delta > num:
        return 0, 0, E_USED_IDX
    slot = out.shape[1]
    limit = min(max_frames, out.shape[0])
    count = 0
    dropped = 0
    err = 0
    done = 0
    while count < limit and done < delta:
        e = uo + 4 + 8 * (last & (num - 1))
        d0 = rd32(u, e)
        if d0 >= num or ndesc[d0] == 0:
            err = E_USED_ID
            break
        ln0 = rd32(u, e + 4)
        nb = 1
        if mrg:
            if ln0 < hdr:
                nb = 1
            else:
                nb = rd16(b, bo + d0 * bsz + 10)
                if nb == 0 or nb > num:
                    err = E_NUM_BUFFERS
                    break
            if done + nb > delta:
                break
        dst = 0
        bad = False
        for k in range(nb):
            ek = uo + 4 + 8 * (last & (num - 1))
            d, ln, err = _reap_one(mems, q, free, ndesc, shadow_next, buf_len, ek, True)
            if err != 0:
                break
            last = (last + 1) & 0xFFFF
            done += 1
            start = hdr if k == 0 else 0
            if ln < start:
                bad = True
                continue
            n = ln - start
            if bad or dst + n > slot:
                bad = True
                continue
            po = bo + d * bsz + start
            out[count, dst:dst + n] = b[po:po + n]
            dst += n
        if err != 0:
            break
        if bad:
            dropped += 1
        else:
            out_lens[count] = dst
            count += 1
    q[Q_LAST_USED] = last
    if q[Q_EVENT_IDX] != 0:
        wr16(mems[q[Q_AVAIL_R]], q[Q_AVAIL_O] + 4 + 2 * num, last)
    return count, dropped, err


@njit(cache=True)
def drv_tx_post(mems, q, free, ndesc, buf_len, data, lens, nframes):
    """Copy frames into free tx buffers behind a zeroed header and post them.

    Returns ``(consumed, posted, kick)``: frames [0, consumed) are handled, of
    which ``consumed - posted`` were too large for a buffer and dropped.
    """
    hdr = q[Q_HDR_LEN]
    bsz = q[Q_BUF_SIZE]
    b = mems[q[Q_BUF_R]]
    bo = q[Q_BUF_O]
    old = q[Q_AVAIL_IDX]
    slot = data.shape[1]
    posted = 0
    i = 0
    while i < nframes and q[Q_NFREE] > 0:
        flen = np.int64(lens[i])
        if flen > slot or hdr + flen > bsz:
            i += 1
            continue
        d = free[q[Q_NFREE] - 1]
        p = bo + d * bsz
        b[p:p + hdr] = 0
        b[p + hdr:p + hdr + flen] = data[i, :flen]
        _post(mems, q, free, ndesc, buf_len, hdr + flen, 0, 0)
        posted += 1
        i += 1
    avail = q[Q_AVAIL_IDX]
    q[Q_AVAIL_IDX] = old
    return i, posted, _driver_publish(mems, q, avail, old)


@njit(cache=True)
def drv_tx_reap(mems, q, free, ndesc, shadow_next, buf_len, max_entries):
    """Free completed tx buffers; returns ``(count, err)``. The used length of tx is not checked."""
    num = q[Q_NUM]
    u = mems[q[Q_USED_R]]
    uo = q[Q_USED_O]
    used_idx = rd16(u, uo + 2)
    fence()
    last = q[Q_LAST_USED]
    delta = (used_idx - last) & 0xFFFF
    if delta > num:
        return 0, E_USED_IDX
    n = 0
    err = 0
    while n < delta and n < max_entries:
        _d, _ln, err = _reap_one(mems, q, free, ndesc, shadow_next, buf_len,
                                 uo + 4 + 8 * (last & (num - 1)), False)
        if err != 0:
            break
        last = (last + 1) & 0xFFFF
        n += 1
    q[Q_LAST_USED] = last
    if q[Q_EVENT_IDX] != 0:
        wr16(mems[q[Q_AVAIL_R]], q[Q_AVAIL_O] + 4 + 2 * num, last)
    return n, err
