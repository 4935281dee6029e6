"""The JIT's maps on the program side: lookup, update and delete as native functions.

JIT'd code calls these per packet through C function pointers (`ADDRESSES`), so they
are numba ``cfunc``s: no Python runs in them. Each takes the address of a map's
*descriptor* (16 little-endian u64 words, laid out by `vxdp.engine.jit.maps`):

====  ===========================================================================
word  meaning
====  ===========================================================================
0     kind (`maps.NativeKind`)
1-4   key_size, value_size, max_entries, ncpus
5     value stride: round_up(value_size, 8)
6     values: element ``e`` of CPU ``c`` at ``values + (e * ncpus' + c) * stride``
      (``ncpus'`` is 1 for maps that are not per-CPU); a PROG_ARRAY's entry table
7, 8  BPF_F_RDONLY_PROG, frozen
9     keys: element ``e``'s key at ``keys + e * key_size`` (hash maps)
10    buckets: ``nbuckets`` i32 heads of the hash chains (-1: empty)
11    links: i32[4 * max_entries]: chain next, order prev, order next, in use
12    header: i64[8]: count, free head, order head, order tail, nbuckets
====  ===========================================================================

Hash maps are preallocated (as the kernel's are by default): ``max_entries``
elements on a free list, chained in ``nbuckets`` (a power of two, at least
``max_entries``) buckets by a multiply-xorshift hash of the key (eight bytes at a time). Live elements are kept in
one doubly-linked *order* list: insertion order, or for the LRU types recency
(an update or a program's lookup moves the element to the tail; a full insert
evicts the head), which is the interpreter's rule, so the two engines agree on
every map's contents and on what user space's ``next_key`` walks. An element's
value stays at one address while it lives: programs write through the pointer
a lookup returned.

The same ``njit`` functions serve user space (`maps.NativeMap` passes numpy
buffers' addresses), so there is one implementation of each table rule.
"""

from __future__ import annotations

import errno

from numba import carray, cfunc, njit, types
from numba.core.extending import intrinsic

KIND_ARRAY, KIND_PERCPU_ARRAY, KIND_HASH, KIND_PERCPU_HASH, KIND_LRU_HASH, KIND_LRU_PERCPU_HASH, \
    KIND_PROG_ARRAY = 1, 2, 3, 4, 5, 6, 7
D_KIND, D_KEY, D_VALUE, D_MAX, D_NCPUS, D_STRIDE, D_VALUES, D_RDONLY, D_FROZEN, D_KEYS, D_BUCKETS, D_LINKS, \
    D_HEADER = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
DESC_WORDS = 16
H_COUNT, H_FREE, H_HEAD, H_TAIL, H_NBUCKETS = 0, 1, 2, 3, 4
HEADER_WORDS = 8
L_CHAIN, L_PREV, L_NEXT, L_USED = 0, 1, 2, 3
LINK_WORDS = 4
ANY, NOEXIST, EXIST = 0, 1, 2
_EINVAL, _ENOENT, _EEXIST, _E2BIG = errno.EINVAL, errno.ENOENT, errno.EEXIST, errno.E2BIG


def _pointer_to(ty):
    """An intrinsic turning an address (u64) into a typed pointer, for `numba.carray`."""

    @intrinsic
    def cast(typingctx, addr):
        if not isinstance(addr, types.Integer):
            return None
        sig = types.CPointer(ty)(addr)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

        return sig, codegen

    return cast


_u8p, _i32p, _i64p = (_pointer_to(t) for t in (types.uint8, types.int32, types.int64))


@njit(cache=True, nogil=True, inline="always")
def _desc(d):
    """The descriptor's words as int64 (addresses fit: no unsigned arithmetic to type anywhere)."""
    return carray(_i64p(d), (DESC_WORDS,))


@njit(cache=True, nogil=True, inline="always")
def _is_hash(kind):
    return KIND_HASH <= kind <= KIND_LRU_PERCPU_HASH


@njit(cache=True, nogil=True, inline="always")
def _is_percpu(kind):
    return kind == KIND_PERCPU_ARRAY or kind == KIND_PERCPU_HASH or kind == KIND_LRU_PERCPU_HASH


@njit(cache=True, nogil=True, inline="always")
def _slots(kind, ncpus):
    return ncpus if _is_percpu(kind) else 1


_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as an int64: multiplications wrap, as wanted


@njit(cache=True, nogil=True)
def _hash_at(addr, n):
    """A multiply-xorshift hash of the ``n`` bytes at ``addr``, eight at a time (loads may be unaligned:
    x86-64 takes them at full speed), the tail byte by byte."""
    words = n >> 3
    w = carray(_i64p(addr), (words,)) if words else carray(_i64p(addr), (0,))
    h = n * _GOLDEN
    for i in range(words):
        h = (h ^ w[i]) * _GOLDEN
    tail = carray(_u8p(addr + (words << 3)), (n & 7,))
    for i in range(n & 7):
        h = (h ^ int(tail[i])) * _GOLDEN
    return h ^ ((h >> 29) & 0x7FFFFFFFF)


@njit(cache=True, nogil=True)
def _same_key(a, b, n):
    """Whether the ``n`` bytes at addresses ``a`` and ``b`` are equal (words, then the tail)."""
    words = n >> 3
    if words:
        x, y = carray(_i64p(a), (words,)), carray(_i64p(b), (words,))
        for i in range(words):
            if x[i] != y[i]:
                return False
    tx, ty = carray(_u8p(a + (words << 3)), (n & 7,)), carray(_u8p(b + (words << 3)), (n & 7,))
    for i in range(n & 7):
        if tx[i] != ty[i]:
            return False
    return True


@njit(cache=True, nogil=True)
def find(d, key_addr):
    """The element holding the key at ``key_addr``, or -1 (hash maps)."""
    w = _desc(d)
    ks = int(w[D_KEY])
    hdr = carray(_i64p(w[D_HEADER]), (HEADER_WORDS,))
    nb = hdr[H_NBUCKETS]
    buckets = carray(_i32p(w[D_BUCKETS]), (nb,))
    links = carray(_i32p(w[D_LINKS]), (int(w[D_MAX]) * LINK_WORDS,))
    keys = w[D_KEYS]
    e = buckets[_hash_at(key_addr, ks) & (nb - 1)]
    while e >= 0:
        if _same_key(keys + e * ks, key_addr, ks):
            return e
        e = links[e * LINK_WORDS + L_CHAIN]
    return -1


@njit(cache=True, nogil=True)
def _unlink_order(links, hdr, e):
    p, n = links[e * LINK_WORDS + L_PREV], links[e * LINK_WORDS + L_NEXT]
    if p >= 0:
        links[p * LINK_WORDS + L_NEXT] = n
    else:
        hdr[H_HEAD] = n
    if n >= 0:
        links[n * LINK_WORDS + L_PREV] = p
    else:
        hdr[H_TAIL] = p


@njit(cache=True, nogil=True)
def _append_order(links, hdr, e):
    t = hdr[H_TAIL]
    links[e * LINK_WORDS + L_PREV] = t
    links[e * LINK_WORDS + L_NEXT] = -1
    if t >= 0:
        links[t * LINK_WORDS + L_NEXT] = e
    else:
        hdr[H_HEAD] = e
    hdr[H_TAIL] = e


@njit(cache=True, nogil=True)
def _remove(d, e):
    """Take live element ``e`` out of its chain and the order list, onto the free list."""
    w = _desc(d)
    ks, mx = int(w[D_KEY]), int(w[D_MAX])
    hdr = carray(_i64p(w[D_HEADER]), (HEADER_WORDS,))
    nb = hdr[H_NBUCKETS]
    buckets = carray(_i32p(w[D_BUCKETS]), (nb,))
    links = carray(_i32p(w[D_LINKS]), (mx * LINK_WORDS,))
    b = _hash_at(w[D_KEYS] + e * ks, ks) & (nb - 1)
    prev, cur = -1, buckets[b]
    while cur >= 0 and cur != e:
        prev, cur = cur, links[cur * LINK_WORDS + L_CHAIN]
    nxt = links[e * LINK_WORDS + L_CHAIN]
    if prev >= 0:
        links[prev * LINK_WORDS + L_CHAIN] = nxt
    else:
        buckets[b] = nxt
    _unlink_order(links, hdr, e)
    links[e * LINK_WORDS + L_USED] = 0
    links[e * LINK_WORDS + L_CHAIN] = hdr[H_FREE]
    hdr[H_FREE] = e
    hdr[H_COUNT] -= 1


@njit(cache=True, nogil=True)
def value_address(d, e, cpu):
    """Where element ``e``'s value for ``cpu`` lives (its only value for a map that is not per-CPU)."""
    w = _desc(d)
    kind = int(w[D_KIND])
    per = _slots(kind, int(w[D_NCPUS]))
    c = cpu if per > 1 else 0
    return w[D_VALUES] + (e * per + c) * w[D_STRIDE]


@njit(cache=True, nogil=True)
def hash_update(d, key_addr, value_addr, flags, cpu, all_cpus):
    """Insert or replace; ``all_cpus``: ``value_addr`` holds a slot per CPU (user space), else one value
    for ``cpu`` (a program; a new per-CPU element's other slots are zeroed). 0 or -errno."""
    w = _desc(d)
    kind, ks, vs, mx = int(w[D_KIND]), int(w[D_KEY]), int(w[D_VALUE]), int(w[D_MAX])
    stride, ncpus = int(w[D_STRIDE]), int(w[D_NCPUS])
    hdr = carray(_i64p(w[D_HEADER]), (HEADER_WORDS,))
    links = carray(_i32p(w[D_LINKS]), (mx * LINK_WORDS,))
    lru = kind == KIND_LRU_HASH or kind == KIND_LRU_PERCPU_HASH
    e = find(d, key_addr)
    if e >= 0 and flags == NOEXIST:
        return -_EEXIST
    if e < 0 and flags == EXIST:
        return -_ENOENT
    fresh = e < 0
    if fresh:
        if hdr[H_FREE] < 0:
            if not lru:
                return -_E2BIG
            _remove(d, int(hdr[H_HEAD]))
        e = int(hdr[H_FREE])
        hdr[H_FREE] = links[e * LINK_WORDS + L_CHAIN]
        keys = carray(_u8p(w[D_KEYS]), (mx * ks,))
        key = carray(_u8p(key_addr), (ks,))
        keys[e * ks:(e + 1) * ks] = key
        nb = hdr[H_NBUCKETS]
        buckets = carray(_i32p(w[D_BUCKETS]), (nb,))
        b = _hash_at(key_addr, ks) & (nb - 1)
        links[e * LINK_WORDS + L_CHAIN] = buckets[b]
        buckets[b] = e
        links[e * LINK_WORDS + L_USED] = 1
        _append_order(links, hdr, e)
        hdr[H_COUNT] += 1
    elif lru:
        _unlink_order(links, hdr, e)
        _append_order(links, hdr, e)
    per = _slots(kind, ncpus)
    vals = carray(_u8p(w[D_VALUES] + e * per * stride), (per * stride,))
    if all_cpus:
        src = carray(_u8p(value_addr), (per * stride,))
        for c in range(per):
            vals[c * stride:c * stride + vs] = src[c * stride:c * stride + vs]
    else:
        src = carray(_u8p(value_addr), (vs,))
        c = cpu if per > 1 else 0
        if fresh and per > 1:
            vals[:] = 0
        vals[c * stride:c * stride + vs] = src
    return 0


@njit(cache=True, nogil=True)
def hash_delete(d, key_addr):
    e = find(d, key_addr)
    if e < 0:
        return -_ENOENT
    _remove(d, e)
    return 0


@njit(cache=True, nogil=True)
def hash_next(d, key_addr, has_key):
    """The element after the key's in the order list (the first one without a key, or for a key that is
    not in the map); -1 at the end."""
    w = _desc(d)
    hdr = carray(_i64p(w[D_HEADER]), (HEADER_WORDS,))
    if not has_key:
        return int(hdr[H_HEAD])
    e = find(d, key_addr)
    if e < 0:
        return int(hdr[H_HEAD])
    links = carray(_i32p(w[D_LINKS]), (int(w[D_MAX]) * LINK_WORDS,))
    return links[e * LINK_WORDS + L_NEXT]


@njit(cache=True, nogil=True, inline="always")
def _array_index(w, key_addr):
    """An array's u32 key, little-endian."""
    k = carray(_u8p(key_addr), (4,))
    return int(k[0]) | int(k[1]) << 8 | int(k[2]) << 16 | int(k[3]) << 24


@njit(cache=True, nogil=True)
def prog_lookup(d, key_addr, cpu):
    w = _desc(d)
    kind = int(w[D_KIND])
    if _is_hash(kind):
        e = find(d, key_addr)
        if e < 0:
            return 0
        if kind == KIND_LRU_HASH or kind == KIND_LRU_PERCPU_HASH:
            mx = int(w[D_MAX])
            links = carray(_i32p(w[D_LINKS]), (mx * LINK_WORDS,))
            hdr = carray(_i64p(w[D_HEADER]), (HEADER_WORDS,))
            _unlink_order(links, hdr, e)
            _append_order(links, hdr, e)
        return value_address(d, e, cpu)
    if kind == KIND_ARRAY or kind == KIND_PERCPU_ARRAY:
        i = _array_index(w, key_addr)
        if i >= int(w[D_MAX]):
            return 0
        if kind == KIND_PERCPU_ARRAY:
            return w[D_VALUES] + (cpu * int(w[D_MAX]) + i) * w[D_STRIDE]
        return w[D_VALUES] + i * w[D_STRIDE]
    return 0


@njit(cache=True, nogil=True)
def prog_update(d, key_addr, value_addr, flags, cpu):
    w = _desc(d)
    kind = int(w[D_KIND])
    if flags > EXIST:
        return -_EINVAL
    if _is_hash(kind):
        return hash_update(d, key_addr, value_addr, flags, cpu, False)
    if kind == KIND_ARRAY or kind == KIND_PERCPU_ARRAY:
        i = _array_index(w, key_addr)
        if i >= int(w[D_MAX]):
            return -_E2BIG
        if flags == NOEXIST:
            return -_EEXIST
        vs = int(w[D_VALUE])
        dst = prog_lookup(d, key_addr, cpu)
        carray(_u8p(dst), (vs,))[:] = carray(_u8p(value_addr), (vs,))
        return 0
    return -_EINVAL


@njit(cache=True, nogil=True)
def prog_delete(d, key_addr, cpu):
    w = _desc(d)
    kind = int(w[D_KIND])
    if _is_hash(kind):
        return hash_delete(d, key_addr)
    return -_EINVAL


# every argument a 64-bit integer (addresses included: the same registers as pointers in the C ABI)
_I64 = types.int64
_SIG_LOOKUP = _I64(_I64, _I64, _I64)
_SIG_UPDATE = _I64(_I64, _I64, _I64, _I64, _I64)
_SIG_DELETE = _I64(_I64, _I64, _I64)


@cfunc(_SIG_LOOKUP, nopython=True, cache=True)
def _c_lookup(d, key, cpu):
    return prog_lookup(d, key, cpu)


@cfunc(_SIG_UPDATE, nopython=True, cache=True)
def _c_update(d, key, value, flags, cpu):
    return prog_update(d, key, value, flags, cpu)


@cfunc(_SIG_DELETE, nopython=True, cache=True)
def _c_delete(d, key, cpu):
    return prog_delete(d, key, cpu)


ADDRESSES: dict[str, int] = {"lookup": _c_lookup.address, "update": _c_update.address,
                             "delete": _c_delete.address}
"""C entry points for JIT'd code: lookup(desc, key, cpu) -> value address or 0; update(desc, key, value,
flags, cpu) -> 0 or -errno; delete(desc, key, cpu) -> 0 or -errno."""

__all__ = ["ADDRESSES", "hash_delete", "hash_next", "hash_update", "prog_lookup", "value_address"]
