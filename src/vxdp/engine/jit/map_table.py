"""The map operations themselves, compiled once with numba and used from both sides.

Every function takes the address of a map's descriptor (`vxdp.engine.jit.maps`
writes it; the word layout is the JIT contract's, the indices are below) and
addresses of keys and values, so the same code runs when a JIT'd program calls
`vxdp.engine.jit.map_runtime`'s C entry points and when user space calls these
functions from Python with numpy buffers: one implementation of the table logic.

Hash maps are preallocated like the kernel's: ``max_entries`` elements, each a
key slot (``kstride`` = key size rounded up to 8, zero padded so keys compare and
hash as 8-byte words), ``nslots`` value slots (one, or one per CPU), and four
int32 links: the bucket chain, the previous and next element in the map's order
list, and spare. Buckets are a power of two >= 2 * max_entries, each the head of
a chain (-1 empty); free elements form a list through the chain link.

The order list is what makes iteration and LRU match the interpreter (an
insertion-ordered dict): new elements go to the tail; for LRU types an update
or a program lookup moves its element to the tail and a full insert evicts the
head (exact LRU; the kernel's is approximate). User-space lookups are not a use,
as in the kernel (``lookup_elem_sys_only``). ``next_key`` walks the list, and a
missing key starts it again from the head, as the kernel does.

Nothing here allocates, raises or calls Python: a full map is -E2BIG, a bad flag
-EINVAL, as the helpers return them to programs. The bodies are ``inline="always"``
(numba does not inline one cached function into another), so each C entry point
is one function with no inner calls; user space calls the ``cache=True`` wrappers
at the end (`hash_update`, `hash_find`, ...).

Why everything, down to the pointer intrinsics and the C entry points, is in this
one module: numba's cache (``cache=True``) checks only the source file that
defines a function, not the modules its callees come from. With the entry
points elsewhere an edit here would leave their cached machine code stale (a
test caught exactly that); in one file, any edit recompiles all of it.
"""

from __future__ import annotations

import errno

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# -- raw memory: an integer address as a typed view, in one place ----------------------------------------------
# numba has no pointer arithmetic on integers: `as_ptr` is a one-instruction ``inttoptr`` intrinsic, and
# `u8`/`i32`/`i64` wrap the pointer in a ``carray`` (no bounds checks: the sizes come from the descriptor the
# runtime itself wrote). `load16`/`load32`/`load64` read at any alignment in one ``mov`` each (a program's key
# may sit at any stack offset).

@intrinsic
def as_ptr(typingctx, addr):
    """``inttoptr``: the ``void *`` at integer address ``addr``."""
    def codegen(context, builder, sig, args):
        a = context.cast(builder, args[0], sig.args[0], types.int64)
        return builder.inttoptr(a, cgutils.voidptr_t)
    return types.voidptr(addr), codegen


def _loader(bits: int):
    """An intrinsic: the ``bits``-wide little-endian integer at ``addr`` (any alignment, one ``mov``), as uint64."""
    ity = ir.IntType(bits)

    @intrinsic
    def load(typingctx, addr):
        def codegen(context, builder, sig, args):
            a = context.cast(builder, args[0], sig.args[0], types.int64)
            v = builder.load(builder.inttoptr(a, ity.as_pointer()), align=1)
            return builder.zext(v, ir.IntType(64)) if bits < 64 else v
        return types.uint64(addr), codegen
    return load


load16, load32, load64 = _loader(16), _loader(32), _loader(64)


@njit(inline="always")
def u8(addr, n):
    return carray(as_ptr(addr), n, np.uint8)


@njit(inline="always")
def i32(addr, n):
    return carray(as_ptr(addr), n, np.int32)


@njit(inline="always")
def i64(addr, n):
    return carray(as_ptr(addr), n, np.int64)


# descriptor words (the JIT contract)
W_KIND, W_KEY_SIZE, W_VALUE_SIZE, W_MAX_ENTRIES, W_NCPUS, W_STRIDE, W_VALUES, W_RDONLY_PROG, W_FROZEN = range(9)
# private words of hash maps
W_BUCKETS, W_BUCKET_MASK, W_META, W_KEYS, W_STATE, W_KSTRIDE, W_NSLOTS = range(9, 16)
DESC_WORDS = 16

KIND_ARRAY, KIND_PERCPU_ARRAY, KIND_HASH, KIND_PERCPU_HASH, KIND_LRU_HASH, KIND_LRU_PERCPU_HASH, KIND_PROG_ARRAY = (
    range(1, 8))

META_WORDS = 4  # int32 per element
M_CHAIN, M_PREV, M_NEXT = 0, 1, 2
S_COUNT, S_FREE, S_HEAD, S_TAIL, S_SEED = range(5)  # the hash state words (int64)
STATE_WORDS = 5

ANY, NOEXIST, EXIST = 0, 1, 2
ENOENT, E2BIG, EEXIST, EINVAL = errno.ENOENT, errno.E2BIG, errno.EEXIST, errno.EINVAL

_K = np.uint64(0x9E3779B97F4A7C15)
_S29 = np.uint64(29)
_S33 = np.uint64(33)
_F1 = np.uint64(0xFF51AFD7ED558CCD)
_F2 = np.uint64(0xC4CEB9FE1A85EC53)


@njit(inline="always")
def key_word(key, i, key_size):
    """The ``i``-th 8-byte word of a ``key_size``-byte key, zero padded past its end (never read past it)."""
    off = i * 8
    rest = key_size - off
    if rest >= 8:
        return load64(key + off)
    w = np.uint64(0)
    shift = 0
    if rest >= 4:
        w = load32(key + off)
        shift = 4
    if rest - shift >= 2:
        w |= load16(key + off + shift) << np.uint64(8 * shift)
        shift += 2
    if rest - shift >= 1:
        w |= np.uint64(u8(key + off + shift, 1)[0]) << np.uint64(8 * shift)
    return w


@njit(inline="always")
def key_hash(key, key_size, seed):
    """Multiply-xorshift over the key's 8-byte words, then murmur3's 64-bit finaliser, so every key bit
    reaches the low bits a bucket index takes (a plain multiply carries high bits only upwards)."""
    h = seed ^ np.uint64(0xCBF29CE484222325)
    for i in range((key_size + 7) // 8):
        h = (h ^ key_word(key, i, key_size)) * _K
        h ^= h >> _S29
    h ^= h >> _S33
    h *= _F1
    h ^= h >> _S33
    h *= _F2
    return h ^ (h >> _S33)


@njit(inline="always")
def _bucket(d, key):
    """The bucket of ``key``: the hash is seeded per map (random at creation), so a sender who picks keys
    cannot aim them all at one chain."""
    seed = np.uint64(i64(d[W_STATE], STATE_WORDS)[S_SEED])
    return np.int64(key_hash(key, d[W_KEY_SIZE], seed) & np.uint64(d[W_BUCKET_MASK]))


@njit(inline="always")
def _cpu(d, cpu):
    return cpu if 0 <= cpu < d[W_NCPUS] else 0


@njit(inline="always")
def _copy(dst, src, n):
    a, b = u8(dst, n), u8(src, n)
    for i in range(n):
        a[i] = b[i]


@njit(inline="always")
def _zero(dst, n):
    a = u8(dst, n)
    for i in range(n):
        a[i] = 0


# -- arrays ------------------------------------------------------------------------------------------

@njit(inline="always")
def array_slot(d, index, cpu):
    """Address of element ``index``'s value for ``cpu`` (per-CPU arrays are CPU-major)."""
    if d[W_KIND] == KIND_PERCPU_ARRAY:
        return d[W_VALUES] + (_cpu(d, cpu) * d[W_MAX_ENTRIES] + index) * d[W_STRIDE]
    return d[W_VALUES] + index * d[W_STRIDE]


@njit(inline="always")
def _array_update(desc, key, value, flags, cpu, user):
    """0 or -errno. ``user``: ``value`` is user space's buffer (every CPU's slot at ``stride`` for a
    per-CPU array); else it is one value of a program's, written to ``cpu``'s slot only."""
    d = i64(desc, DESC_WORDS)
    if flags < 0 or flags > EXIST:
        return -EINVAL
    index = np.int64(i32(key, 1)[0]) & 0xFFFFFFFF
    if index >= d[W_MAX_ENTRIES]:
        return -E2BIG
    if flags == NOEXIST:
        return -EEXIST
    size = d[W_VALUE_SIZE]
    if user and d[W_KIND] == KIND_PERCPU_ARRAY:
        for c in range(d[W_NCPUS]):
            _copy(array_slot(d, index, c), value + c * d[W_STRIDE], size)
    else:
        _copy(array_slot(d, index, cpu), value, size)
    return 0


# -- hash tables ---------------------------------------------------------------------------------------

@njit(inline="always")
def elem_key(d, e):
    return d[W_KEYS] + e * d[W_KSTRIDE]


@njit(inline="always")
def elem_value(d, e, cpu):
    """Address of element ``e``'s value slot for ``cpu`` (slot 0 of a plain hash)."""
    slot = _cpu(d, cpu) if d[W_NSLOTS] > 1 else 0
    return d[W_VALUES] + (e * d[W_NSLOTS] + slot) * d[W_STRIDE]


@njit(inline="always")
def _same_key(d, e, key):
    ks = d[W_KEY_SIZE]
    stored = elem_key(d, e)
    for i in range((ks + 7) // 8):
        if key_word(key, i, ks) != load64(stored + i * 8):
            return False
    return True


@njit(inline="always")
def _hash_find(desc, key):
    """The element holding ``key``, or -1."""
    d = i64(desc, DESC_WORDS)
    buckets = i32(d[W_BUCKETS], d[W_BUCKET_MASK] + 1)
    meta = i32(d[W_META], d[W_MAX_ENTRIES] * META_WORDS)
    b = _bucket(d, key)
    e = buckets[b]
    while e >= 0:
        if _same_key(d, e, key):
            return np.int64(e)
        e = meta[e * META_WORDS + M_CHAIN]
    return np.int64(-1)


@njit(inline="always")
def _unlink_order(meta, st, e):
    prev, nxt = meta[e * META_WORDS + M_PREV], meta[e * META_WORDS + M_NEXT]
    if prev >= 0:
        meta[prev * META_WORDS + M_NEXT] = nxt
    else:
        st[S_HEAD] = nxt
    if nxt >= 0:
        meta[nxt * META_WORDS + M_PREV] = prev
    else:
        st[S_TAIL] = prev


@njit(inline="always")
def _append_order(meta, st, e):
    tail = st[S_TAIL]
    meta[e * META_WORDS + M_PREV] = tail
    meta[e * META_WORDS + M_NEXT] = -1
    if tail >= 0:
        meta[tail * META_WORDS + M_NEXT] = e
    else:
        st[S_HEAD] = e
    st[S_TAIL] = e


@njit(inline="always")
def _is_lru(d):
    return d[W_KIND] == KIND_LRU_HASH or d[W_KIND] == KIND_LRU_PERCPU_HASH


@njit(inline="always")
def _hash_touch(desc, e):
    """A use of element ``e``: for LRU types it becomes the most recently used."""
    d = i64(desc, DESC_WORDS)
    if _is_lru(d):
        meta = i32(d[W_META], d[W_MAX_ENTRIES] * META_WORDS)
        st = i64(d[W_STATE], STATE_WORDS)
        if st[S_TAIL] != e:
            _unlink_order(meta, st, e)
            _append_order(meta, st, e)


@njit(inline="always")
def _hash_remove(desc, e):
    """Take element ``e`` out of its chain and the order list and free it."""
    d = i64(desc, DESC_WORDS)
    buckets = i32(d[W_BUCKETS], d[W_BUCKET_MASK] + 1)
    meta = i32(d[W_META], d[W_MAX_ENTRIES] * META_WORDS)
    st = i64(d[W_STATE], STATE_WORDS)
    b = _bucket(d, elem_key(d, e))
    cur, prev = buckets[b], -1
    while cur >= 0 and cur != e:
        prev, cur = cur, meta[cur * META_WORDS + M_CHAIN]
    if cur == e:
        if prev >= 0:
            meta[prev * META_WORDS + M_CHAIN] = meta[e * META_WORDS + M_CHAIN]
        else:
            buckets[b] = meta[e * META_WORDS + M_CHAIN]
    _unlink_order(meta, st, e)
    meta[e * META_WORDS + M_CHAIN] = st[S_FREE]
    st[S_FREE] = e
    st[S_COUNT] -= 1


@njit(inline="always")
def _hash_delete(desc, key):
    e = _hash_find(desc, key)
    if e < 0:
        return -ENOENT
    _hash_remove(desc, e)
    return 0


@njit(inline="always")
def _hash_update(desc, key, value, flags, cpu, user):
    """0 or -errno, the interpreter's (and kernel's) rules. ``user``: ``value`` is user space's buffer
    (every CPU's slot at ``stride`` for a per-CPU map), written whole; else one program value written to
    ``cpu``'s slot, the other CPUs' slots of a new element zeroed. An existing element is written in
    place, so value pointers programs hold stay valid."""
    d = i64(desc, DESC_WORDS)
    if flags < 0 or flags > EXIST:
        return -EINVAL
    e = _hash_find(desc, key)
    if e >= 0 and flags == NOEXIST:
        return -EEXIST
    if e < 0 and flags == EXIST:
        return -ENOENT
    nslots, stride, size = d[W_NSLOTS], d[W_STRIDE], d[W_VALUE_SIZE]
    if e < 0:
        st = i64(d[W_STATE], STATE_WORDS)
        if st[S_COUNT] >= d[W_MAX_ENTRIES]:
            if not _is_lru(d):
                return -E2BIG
            _hash_remove(desc, st[S_HEAD])
        meta = i32(d[W_META], d[W_MAX_ENTRIES] * META_WORDS)
        buckets = i32(d[W_BUCKETS], d[W_BUCKET_MASK] + 1)
        e = st[S_FREE]
        st[S_FREE] = meta[e * META_WORDS + M_CHAIN]
        st[S_COUNT] += 1
        ks = d[W_KEY_SIZE]
        kdst = elem_key(d, e)
        _zero(kdst, d[W_KSTRIDE])
        _copy(kdst, key, ks)
        b = _bucket(d, key)
        meta[e * META_WORDS + M_CHAIN] = buckets[b]
        buckets[b] = e
        _append_order(meta, st, e)
        if nslots > 1 and not user:
            _zero(elem_value(d, e, 0), nslots * stride)
    else:
        _hash_touch(desc, e)
    if user and nslots > 1:
        for c in range(nslots):
            _copy(elem_value(d, e, c), value + c * stride, size)
    else:
        _copy(elem_value(d, e, cpu), value, size)
    return 0


@njit(inline="always")
def _hash_next(desc, key, has_key):
    """The element after ``key`` in the order list (the head if there is no key or it is missing); -1 at the end."""
    d = i64(desc, DESC_WORDS)
    st = i64(d[W_STATE], STATE_WORDS)
    if has_key:
        e = _hash_find(desc, key)
        if e >= 0:
            meta = i32(d[W_META], d[W_MAX_ENTRIES] * META_WORDS)
            return np.int64(meta[e * META_WORDS + M_NEXT])
    return st[S_HEAD]


# -- the program side: what map_runtime's C entry points run -----------------------------------------------

@njit(inline="always")
def _is_hash(kind):
    return KIND_HASH <= kind <= KIND_LRU_PERCPU_HASH


@njit(inline="always")
def _prog_lookup(desc, key, cpu):
    """Address of the value (``cpu``'s slot), 0 if absent. A program lookup is a use for LRU types."""
    d = i64(desc, DESC_WORDS)
    kind = d[W_KIND]
    if kind == KIND_ARRAY or kind == KIND_PERCPU_ARRAY:
        index = np.int64(i32(key, 1)[0]) & 0xFFFFFFFF
        if index >= d[W_MAX_ENTRIES]:
            return np.int64(0)
        return array_slot(d, index, cpu)
    if not _is_hash(kind):  # a prog_array, or a closed map (kind 0)
        return np.int64(0)
    e = _hash_find(desc, key)
    if e < 0:
        return np.int64(0)
    _hash_touch(desc, e)
    return elem_value(d, e, cpu)


@njit(inline="always")
def _prog_update(desc, key, value, flags, cpu):
    d = i64(desc, DESC_WORDS)
    kind = d[W_KIND]
    if kind == KIND_ARRAY or kind == KIND_PERCPU_ARRAY:
        return _array_update(desc, key, value, flags, cpu, False)
    if not _is_hash(kind):
        return np.int64(-EINVAL)
    return _hash_update(desc, key, value, flags, cpu, False)


@njit(inline="always")
def _prog_delete(desc, key, cpu):
    d = i64(desc, DESC_WORDS)
    if not _is_hash(d[W_KIND]):
        return np.int64(-EINVAL)
    return _hash_delete(desc, key)


# -- what user space calls (and the warm-up types): compiled entry points over the inlined bodies ----------------

@njit(cache=True, nogil=True)
def array_update(desc, key, value, flags, cpu, user):
    return _array_update(desc, key, value, flags, cpu, user)


@njit(cache=True, nogil=True)
def hash_find(desc, key):
    return _hash_find(desc, key)


@njit(cache=True, nogil=True)
def hash_update(desc, key, value, flags, cpu, user):
    return _hash_update(desc, key, value, flags, cpu, user)


@njit(cache=True, nogil=True)
def hash_delete(desc, key):
    return _hash_delete(desc, key)


@njit(cache=True, nogil=True)
def hash_next(desc, key, has_key):
    return _hash_next(desc, key, has_key)


# -- the C entry points (the JIT contract's ABI) ---------------------------------------------------------------
# int64 arguments and result: on x86-64 a pointer and a 64-bit integer travel in the same registers, and one
# integer type means the table functions above are compiled once for both callers.

_i64 = types.int64


@cfunc(_i64(_i64, _i64, _i64), nopython=True, cache=True)
def c_lookup(desc, key, cpu):
    return _prog_lookup(desc, key, cpu)


@cfunc(_i64(_i64, _i64, _i64, _i64, _i64), nopython=True, cache=True)
def c_update(desc, key, value, flags, cpu):
    return _prog_update(desc, key, value, flags, cpu)


@cfunc(_i64(_i64, _i64, _i64), nopython=True, cache=True)
def c_delete(desc, key, cpu):
    return _prog_delete(desc, key, cpu)
