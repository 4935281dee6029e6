"""The JIT's native maps: user-space semantics against the kernel, the program side against the interpreter.

User space: the same random operations on a real kernel map (bpf(2)) and a
native map give the same results and errnos (hash iteration order is the
kernel's business, so ``next_key`` is compared as "a key of the map", and LRU
maps are sized not to evict: the kernel's LRU is approximate). The interpreter
is the oracle for what the kernel leaves open: iteration order, exact LRU
eviction, and the program-side helpers, which are called here through their C
addresses with ctypes, exactly as JIT'd code calls them.
"""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vxdp.bpf.isa import Cls, Insn, JmpOp
from vxdp.bpf.kernel.maps import KernelMap
from vxdp.bpf.mapspec import (
    MapFlag,
    MapOrigin,
    MapSpec,
    MapType,
    UpdateFlag,
    percpu_value_stride,
    possible_cpus,
)
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.interp.maps import MapSpecError
from vxdp.engine.jit import map_table
from vxdp.engine.jit.map_runtime import ADDRESSES
from vxdp.engine.jit.maps import NativeKind, make_native_map

TYPES = [MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH,
         MapType.LRU_PERCPU_HASH]
HASHES = [MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH]
LRUS = {MapType.LRU_HASH, MapType.LRU_PERCPU_HASH}
ORDERED = {MapType.ARRAY, MapType.PERCPU_ARRAY}
EXAMPLES = int(os.environ.get("VXDP_MAPOPS_EXAMPLES", "60"))

_lookup = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64)(ADDRESSES["lookup"])
_update = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint64,
                           ctypes.c_uint64)(ADDRESSES["update"])
_delete = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64)(ADDRESSES["delete"])


def k(i: int) -> bytes:
    return i.to_bytes(4, "little")


def _user_value(spec: MapSpec, raw: bytes, ncpus: int) -> bytes:
    """User space's value buffer from ``value_size`` bytes: every CPU's slot, zero padded, for per-CPU maps
    (each CPU's slot made different so a mixed-up slot shows)."""
    if not spec.is_percpu:
        return raw[:spec.value_size]
    pad = bytes(percpu_value_stride(spec.value_size) - spec.value_size)
    return b"".join(bytes((b + c) & 0xFF for b in raw[:spec.value_size]) + pad for c in range(ncpus))


def _do(m, op):
    kind, key, value, flags = op
    try:
        if kind == "lookup":
            return m.lookup(key)
        if kind == "update":
            return m.update(key, value, flags)
        if kind == "delete":
            return m.delete(key)
        return m.next_key(key)
    except OSError as e:
        return ("errno", e.errno)


def _user_ops(spec: MapSpec, ncpus: int):
    key = st.integers(0, 6).map(lambda i: (i * 0x01010101).to_bytes(spec.key_size, "little"))
    op = st.tuples(st.sampled_from(["lookup", "update", "update", "delete", "next_key"]),
                   st.one_of(key, st.none()),
                   st.binary(min_size=spec.value_size, max_size=spec.value_size).map(
                       lambda raw: _user_value(spec, raw, ncpus)),
                   st.sampled_from([UpdateFlag.ANY, UpdateFlag.NOEXIST, UpdateFlag.EXIST]))
    return st.lists(op.filter(lambda o: o[1] is not None or o[0] == "next_key"), max_size=40)


def _kernel_spec(t: MapType, key_size: int = 4, value_size: int = 12) -> MapSpec:
    return MapSpec(f"j{int(t)}", t, key_size, value_size, 64 if t in LRUS else 4)


# -- user space against the kernel --------------------------------------------------------------------

@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.parametrize("sizes", [(4, 12), (13, 5)], ids=lambda s: f"k{s[0]}v{s[1]}")
@pytest.mark.parametrize("map_type", TYPES, ids=lambda t: t.name)
def test_random_user_ops_match_kernel(map_type, sizes):
    """Every answer and errno equal; odd sizes too (a 13-byte key, a 5-byte value padded to 8 per CPU)."""
    spec = _kernel_spec(map_type, 4 if map_type in ORDERED else sizes[0], sizes[1])

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_user_ops(spec, possible_cpus()))
    def run(ops):
        nm = make_native_map(spec, 1)
        with KernelMap.create(spec) as km:
            for op in ops:
                kr, nr = _do(km, op), _do(nm, op)
                if op[0] == "next_key" and map_type not in ORDERED:
                    assert kr is None or km.lookup(kr) is not None
                    assert nr is None or nm.lookup(nr) is not None
                    if op[1] is None or km.lookup(op[1]) is None:
                        assert (kr is None) == (nr is None)
                        assert nr == next(iter(nm.keys()), None)
                    continue
                assert kr == nr, op
            assert sorted(km.keys()) == sorted(nm.keys())
            for key in km.keys():  # noqa: SIM118 -- a map, not a dict: keys() walks GET_NEXT_KEY
                assert km.lookup(key) == nm.lookup(key)
        nm.close()

    run()


@pytest.mark.parametrize("map_type", TYPES, ids=lambda t: t.name)
def test_random_user_ops_match_interp_exactly(map_type):
    """Where the kernel leaves the order open the interpreter fixes it (insertion order, exact LRU); the
    native map agrees on every answer, next_key included, with maps small enough to fill and evict."""
    spec = MapSpec("u", map_type, 4, 12, 4)
    ncpus = 3

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_user_ops(spec, ncpus))
    def run(ops):
        im = InterpEngine(ncpus=ncpus).create_map(spec)
        nm = make_native_map(spec, 1, ncpus=ncpus)
        for op in ops:
            assert _do(im, op) == _do(nm, op), op
        assert list(im.items()) == list(nm.items())

    run()


@pytest.mark.privileged
def test_prog_array_user_ops_match_kernel():
    from vxdp.bpf.kernel.prog import KernelProgram
    spec = MapSpec("pa", MapType.PROG_ARRAY, 4, 4, 3)
    entries = {7: 0x1000, 8: 0x2000}

    def resolve(prog_id: int) -> int:
        if prog_id not in entries:
            raise OSError(errno.EBADF, f"no program {prog_id}")
        return entries[prog_id]

    nm = make_native_map(spec, 1, resolve_prog=resolve)
    insns = [Insn(Cls.ALU64 | 0xB0, 0, 0, 0, 2), Insn(Cls.JMP | JmpOp.EXIT)]  # r0 = 2; exit
    with KernelMap.create(spec) as km, KernelProgram.load(insns, name="p") as kp:

        def user_ops(m, handle: int) -> list:
            out = []
            for call_ in (lambda: m.update(k(5), handle.to_bytes(4, "little")),
                          lambda: m.update(k(0), handle.to_bytes(4, "little"), UpdateFlag.NOEXIST),
                          lambda: m.delete(k(0)),
                          lambda: m.update(k(0), handle.to_bytes(4, "little")),
                          lambda: m.next_key(None), lambda: m.next_key(k(2)),
                          lambda: m.lookup(k(1)),
                          lambda: m.delete(k(0)), lambda: m.delete(k(9))):
                try:
                    out.append(call_())
                except OSError as e:
                    out.append(("errno", e.errno))
            return out

        results = [user_ops(km, kp.fd), user_ops(nm, 7)]
        assert results[0] == results[1]
        assert results[1][:3] == [("errno", errno.E2BIG), ("errno", errno.EINVAL), ("errno", errno.ENOENT)]
        with pytest.raises(OSError) as e:
            km.update(k(1), (2**31 - 1).to_bytes(4, "little"))
        with pytest.raises(OSError) as n:
            nm.update(k(1), (99).to_bytes(4, "little"))
        assert e.value.errno == n.value.errno == errno.EBADF


@pytest.mark.privileged
@pytest.mark.parametrize("map_type", [*TYPES, MapType.PROG_ARRAY], ids=lambda t: t.name)
def test_frozen_map_refuses_user_writes_as_the_kernel(map_type):
    spec = MapSpec("fz", map_type, 4, 4, 4) if map_type == MapType.PROG_ARRAY else _kernel_spec(map_type)
    nm = make_native_map(spec, 1)
    value = bytes(spec.user_value_size()) if map_type != MapType.PROG_ARRAY else bytes(4)
    with KernelMap.create(spec) as km:

        def frozen_ops(m) -> list:
            if map_type not in (MapType.PROG_ARRAY, *ORDERED):
                m.update(k(0), value)
            m.freeze()
            out = []
            for call_ in (lambda: m.update(k(0), value), lambda: m.update(k(0), value, UpdateFlag.NOEXIST),
                          lambda: m.delete(k(0)), lambda: m.lookup(k(7))):
                try:
                    out.append(call_())
                except OSError as e:
                    out.append(("errno", e.errno))
            return out

        results = [frozen_ops(km), frozen_ops(nm)]
    assert results[0] == results[1]
    assert results[1][:3] == [("errno", errno.EPERM)] * 3
    with pytest.raises(OSError) as again:
        nm.freeze()
    assert again.value.errno == errno.EPERM
    assert int(np.frombuffer(ctypes.string_at(nm.desc, 16 * 8), np.uint64)[map_table.W_FROZEN]) == 1


# -- the program side, through the C entry points -----------------------------------------------------------

class Native:
    """Calls the map's C entry points as JIT'd code does (ctypes buffers for the program's key and value)."""

    def __init__(self, m):
        self.m = m

    def lookup_ptr(self, key: bytes, cpu: int) -> int:
        return _lookup(self.m.desc, key, cpu) or 0

    def lookup(self, key: bytes, cpu: int) -> bytes | None:
        p = self.lookup_ptr(key, cpu)
        return ctypes.string_at(p, self.m.spec.value_size) if p else None

    def write(self, key: bytes, cpu: int, data: bytes) -> bool:
        p = self.lookup_ptr(key, cpu)
        if p:
            ctypes.memmove(p, data, len(data))
        return bool(p)

    def update(self, key: bytes, value: bytes, flags: int, cpu: int) -> int:
        return _update(self.m.desc, key, value, flags, cpu)

    def delete(self, key: bytes, cpu: int) -> int:
        return _delete(self.m.desc, key, cpu)


class Interp:
    """The same operations on an interpreter map (its program-side API, on ``cpu``)."""

    def __init__(self, m):
        self.m = m

    def lookup(self, key: bytes, cpu: int) -> bytes | None:
        self.m.cpu = cpu
        v = self.m.prog_lookup(key)
        return None if v is None else bytes(v)

    def write(self, key: bytes, cpu: int, data: bytes) -> bool:
        self.m.cpu = cpu
        v = self.m.prog_lookup(key)
        if v is not None:
            v[:len(data)] = data
        return v is not None

    def update(self, key: bytes, value: bytes, flags: int, cpu: int) -> int:
        self.m.cpu = cpu
        return self.m.prog_update(key, value, flags)

    def delete(self, key: bytes, cpu: int) -> int:
        self.m.cpu = cpu
        return self.m.prog_delete(key)


def _mixed_ops(spec: MapSpec, ncpus: int):
    key = st.integers(0, 6).map(k)
    raw = st.binary(min_size=spec.value_size, max_size=spec.value_size)
    cpu = st.integers(0, ncpus - 1)
    flags = st.sampled_from([0, 1, 2, 3, 1 << 40])
    return st.lists(st.one_of(
        st.tuples(st.just("p_lookup"), key, cpu),
        st.tuples(st.just("p_write"), key, cpu, raw),
        st.tuples(st.just("p_update"), key, cpu, raw, flags),
        st.tuples(st.just("p_delete"), key, cpu),
        st.tuples(st.just("u_lookup"), key),
        st.tuples(st.just("u_update"), key, raw.map(lambda r: _user_value(spec, r, ncpus)),
                  st.sampled_from([0, 1, 2])),
        st.tuples(st.just("u_delete"), key),
        st.tuples(st.just("u_next"), st.one_of(st.none(), key)),
    ), max_size=50)


def _apply(m, side, op):
    name, key = op[0], op[1]
    if name == "p_lookup":
        return side.lookup(key, op[2])
    if name == "p_write":
        return side.write(key, op[2], op[3])
    if name == "p_update":
        return side.update(key, op[3], op[4], op[2])
    if name == "p_delete":
        return side.delete(key, op[2])
    if name == "u_update":
        return _do(m, ("update", key, op[2], op[3]))
    return _do(m, ({"u_lookup": "lookup", "u_delete": "delete", "u_next": "next_key"}[name], key, None, 0))


@pytest.mark.parametrize("map_type", TYPES, ids=lambda t: t.name)
def test_program_and_user_ops_match_interp(map_type):
    """Program-side helpers (C entry points) and user-space calls interleaved on one map: every result the
    same as the interpreter's, so programs and user space see and change the same memory, per CPU."""
    spec = MapSpec("p", map_type, 4, 12, 4)
    ncpus = 3

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_mixed_ops(spec, ncpus))
    def run(ops):
        im = InterpEngine(ncpus=ncpus).create_map(spec)
        nm = make_native_map(spec, 1, ncpus=ncpus)
        ni, nn = Interp(im), Native(nm)
        for op in ops:
            assert _apply(im, ni, op) == _apply(nm, nn, op), op
        assert list(im.items()) == list(nm.items())

    run()


@pytest.mark.parametrize("map_type", HASHES, ids=lambda t: t.name)
def test_value_addresses_are_stable_and_shared(map_type):
    spec = MapSpec("s", map_type, 8, 16, 8)
    ncpus = 2
    m = make_native_map(spec, 1, ncpus=ncpus)
    n = Native(m)
    key = b"flowkey1"
    assert n.update(key, b"A" * 16, 0, 1) == 0
    p = n.lookup_ptr(key, 1)
    assert p % 8 == 0  # 8-byte aligned: programs use atomics on values
    for i in range(5):  # other keys come and go
        assert n.update(b"other%03d" % i, b"B" * 16, 0, 0) == 0
    assert n.delete(b"other002", 0) == 0
    assert n.update(key, b"C" * 16, UpdateFlag.EXIST, 1) == 0  # rewrite in place
    assert n.lookup_ptr(key, 1) == p
    ctypes.memmove(p, b"from the program", 16)
    user = m.lookup(key)
    assert (user[16:32] if spec.is_percpu else user) == b"from the program"
    m.update(key, _user_value(spec, b"from user space!", ncpus))
    assert n.lookup_ptr(key, 1) == p
    assert ctypes.string_at(p, 16) == (bytes((b + 1) & 0xFF for b in b"from user space!") if spec.is_percpu
                                       else b"from user space!")


def test_percpu_program_update_writes_only_its_cpu():
    spec = MapSpec("pc", MapType.PERCPU_HASH, 4, 4, 4)
    m = make_native_map(spec, 1, ncpus=3)
    n = Native(m)
    assert n.update(k(1), b"\1\1\1\1", 0, 2) == 0  # a new element: the other CPUs' slots zeroed
    assert m.lookup(k(1)) == bytes(16) + b"\1\1\1\1" + bytes(4)
    m.update(k(1), b"\5" * 24)
    assert n.update(k(1), b"\2\2\2\2", 0, 0) == 0  # existing: only CPU 0's slot changes
    assert m.lookup(k(1)) == b"\2\2\2\2" + bytes(4) + (b"\5" * 4 + bytes(4)) * 2
    m.delete(k(1))  # its element is reused by the next insert: the old slots must not show through
    assert n.update(k(2), b"\3\3\3\3", 0, 1) == 0
    assert m.lookup(k(2)) == bytes(8) + b"\3\3\3\3" + bytes(12)


def test_program_side_errnos():
    h = Native(make_native_map(MapSpec("h", MapType.HASH, 4, 8, 2), 1, ncpus=1))
    assert [h.update(k(i), bytes(8), 0, 0) for i in range(3)] == [0, 0, -errno.E2BIG]
    assert h.update(k(0), bytes(8), UpdateFlag.NOEXIST, 0) == -errno.EEXIST
    assert h.update(k(5), bytes(8), UpdateFlag.EXIST, 0) == -errno.ENOENT
    assert h.update(k(0), bytes(8), 4, 0) == -errno.EINVAL
    assert [h.delete(k(0), 0), h.delete(k(0), 0)] == [0, -errno.ENOENT]
    assert h.lookup_ptr(k(0), 0) == 0
    a = Native(make_native_map(MapSpec("a", MapType.ARRAY, 4, 8, 2), 1, ncpus=1))
    assert a.update(k(2), bytes(8), 0, 0) == -errno.E2BIG
    assert a.update(k(1), bytes(8), UpdateFlag.NOEXIST, 0) == -errno.EEXIST
    assert a.update(k(1), bytes(8), 7, 0) == -errno.EINVAL
    assert a.delete(k(1), 0) == -errno.EINVAL
    assert a.lookup_ptr(k(2), 0) == 0 and a.lookup_ptr(k(1), 0) != 0
    pa = make_native_map(MapSpec("pa", MapType.PROG_ARRAY, 4, 4, 2), 1, resolve_prog=lambda i: 0x4000 + i)
    assert _lookup(pa.desc, k(0), 0) is None
    assert _update(pa.desc, k(0), bytes(4), 0, 0) == -errno.EINVAL
    assert _delete(pa.desc, k(0), 0) == -errno.EINVAL


def test_lru_program_lookup_is_a_use():
    """Exact LRU, as the interpreter's: a program lookup makes a key recent, a user lookup does not."""
    m = make_native_map(MapSpec("lru", MapType.LRU_HASH, 4, 4, 3), 1, ncpus=1)
    for i in range(3):
        m.update(k(i), bytes(4))
    assert Native(m).lookup(k(0), 0) == bytes(4)
    m.lookup(k(1))
    m.update(k(9), bytes(4))
    assert m.lookup(k(1)) is None
    assert list(m.keys()) == [k(2), k(0), k(9)]


# -- the descriptor and the map's shape -------------------------------------------------------------------------

def _words(m) -> list[int]:
    return [int(w) for w in np.frombuffer(ctypes.string_at(m.desc, 16 * 8), np.uint64)]


@pytest.mark.parametrize("map_type", [*TYPES, MapType.PROG_ARRAY], ids=lambda t: t.name)
def test_descriptor_words(map_type):
    spec = MapSpec("d", map_type, 4, 4 if map_type == MapType.PROG_ARRAY else 12, 5, flags=MapFlag.RDONLY_PROG)
    m = make_native_map(spec, 1, ncpus=3)
    w = _words(m)
    assert w[:6] == [int(NativeKind[map_type.name]), 4, spec.value_size, 5, 3, (spec.value_size + 7) & ~7]
    assert NativeKind[map_type.name] == {MapType.ARRAY: 1, MapType.PERCPU_ARRAY: 2, MapType.HASH: 3,
                                         MapType.PERCPU_HASH: 4, MapType.LRU_HASH: 5, MapType.LRU_PERCPU_HASH: 6,
                                         MapType.PROG_ARRAY: 7}[map_type]
    assert w[7:9] == [1, 0]
    assert w[6] % 8 == 0
    if map_type == MapType.ARRAY:
        m.update(k(3), b"x" * 12)
        assert ctypes.string_at(w[6] + 3 * 16, 12) == b"x" * 12
        assert ctypes.string_at(w[6], 16) == bytes(16)
    elif map_type == MapType.PERCPU_ARRAY:
        m.update(k(3), b"".join(bytes([65 + c]) * 12 + bytes(4) for c in range(3)))
        for c in range(3):
            assert ctypes.string_at(w[6] + (c * 5 + 3) * 16, 12) == bytes([65 + c]) * 12
        assert Native(m).lookup_ptr(k(3), 2) == w[6] + (2 * 5 + 3) * 16
    elif map_type == MapType.PROG_ARRAY:
        m.resolve_prog = lambda i: 0xABC000 + i
        m.update(k(2), (4).to_bytes(4, "little"))
        table = np.frombuffer(ctypes.string_at(w[6], 5 * 8), np.uint64)
        assert list(table) == [0, 0, 0xABC004, 0, 0]
        assert m.lookup(k(2)) == (4).to_bytes(4, "little")
        m.delete(k(2))
        assert not np.frombuffer(ctypes.string_at(w[6], 5 * 8), np.uint64).any()
        m.update(k(1), (4).to_bytes(4, "little"))
        m.update(k(3), (5).to_bytes(4, "little"))
        m.unlink_program(4)  # the engine frees program 4's code: no jump to it remains
        assert list(np.frombuffer(ctypes.string_at(w[6], 5 * 8), np.uint64)) == [0, 0, 0, 0xABC005, 0]
        assert m.lookup(k(1)) == (4).to_bytes(4, "little")
    m.close()
    assert _words(m)[0] == 0  # a closed map's descriptor says no kind: the entry points find nothing there
    assert (_lookup(m.desc, k(0), 0), _update(m.desc, k(0), bytes(16), 0, 0), _delete(m.desc, k(0), 0)) == (
        None, -errno.EINVAL, -errno.EINVAL)


def test_global_data_written_and_rodata_frozen():
    data = bytes(range(10))
    ro = make_native_map(MapSpec(".rodata", MapType.ARRAY, 4, 12, 1, flags=MapFlag.RDONLY_PROG,
                                 origin=MapOrigin.RODATA, data=data), 1)
    assert ro.lookup(k(0)) == data + bytes(2)
    assert ro.frozen and _words(ro)[8] == 1 and _words(ro)[7] == 1
    with pytest.raises(OSError) as e:
        ro.update(k(0), bytes(12))
    assert e.value.errno == errno.EPERM
    assert Native(ro).lookup(k(0), 0) == data + bytes(2)  # programs read it in place
    bss = make_native_map(MapSpec(".bss", MapType.ARRAY, 4, 8, 1, origin=MapOrigin.BSS), 1)
    assert not bss.frozen and bss.lookup(k(0)) == bytes(8)
    assert Native(bss).write(k(0), 0, b"counter!")
    assert bss.lookup(k(0)) == b"counter!"


def _outcome(call_, m):
    try:
        return "ok", call_(m)
    except MapSpecError as e:
        return "MapSpecError", str(e)


@pytest.mark.parametrize("map_type", [*TYPES, MapType.PROG_ARRAY], ids=lambda t: t.name)
def test_bad_lengths_are_the_interpreters_errors(map_type):
    """Wrong key or value lengths: `MapSpecError` with the interpreter's words (an empty hash map's next_key
    answers None before it looks at the key, there as here)."""
    spec = MapSpec("b", map_type, 4, 4, 2)
    im, nm = InterpEngine(ncpus=2).create_map(spec), make_native_map(spec, 1, ncpus=2)
    good_value = bytes(spec.user_value_size(2))
    calls = (lambda m: m.lookup(b"\0\0\0"), lambda m: m.update(b"\0" * 5, good_value),
             lambda m: m.update(k(0), good_value + b"\0"), lambda m: m.delete(b""),
             lambda m: m.next_key(b"\0\0"))
    assert [_outcome(c, im) for c in calls] == [_outcome(c, nm) for c in calls]
    if map_type in HASHES:
        for m in (im, nm):
            m.update(k(1), good_value)
    outcomes = [_outcome(c, nm) for c in calls]
    assert [_outcome(c, im) for c in calls] == outcomes
    assert [o[0] for o in outcomes] == ["MapSpecError"] * 5


@pytest.mark.parametrize("spec", [
    MapSpec("ringbuf", MapType.RINGBUF, 0, 0, 4096), MapSpec("lpm", MapType.LPM_TRIE, 8, 4, 4),
    MapSpec("arr", MapType.ARRAY, 8, 4, 4), MapSpec("h0", MapType.HASH, 0, 4, 4),
    MapSpec("h", MapType.HASH, 4, 4, 0), MapSpec("pa", MapType.PROG_ARRAY, 4, 8, 4),
], ids=lambda s: s.name)
def test_refused_specs_are_einval(spec):
    with pytest.raises(OSError) as e:
        make_native_map(spec, 1)
    assert e.value.errno == errno.EINVAL
    if spec.name in ("ringbuf", "lpm"):
        assert spec.type.name in str(e.value)


@pytest.mark.parametrize("spec", [
    MapSpec("big", MapType.ARRAY, 4, 1 << 20, 1 << 12), MapSpec("huge", MapType.HASH, 8, 8, 0xFFFFFFFF),
    MapSpec("wide", MapType.HASH, 1 << 31, 8, 1), MapSpec("pa", MapType.PROG_ARRAY, 4, 4, 1 << 30),
    MapSpec("pc", MapType.PERCPU_ARRAY, 4, 1 << 24, 64),
], ids=lambda s: s.name)
def test_oversized_specs_are_enomem_before_allocating(spec):
    """A spec is input (a guest sends it): storage past MAX_MAP_BYTES is refused at once, nothing allocated."""
    with pytest.raises(OSError) as e:
        make_native_map(spec, 1, ncpus=2)
    assert e.value.errno == errno.ENOMEM
    assert spec.name in str(e.value)


def test_warmup_types_every_user_space_call():
    """After `map_warmup.maps`, using every kind of map from Python compiles nothing new (`vxdp.jitcache`)."""
    from vxdp import jitcache
    from vxdp.engine.jit import map_warmup

    map_warmup.maps()
    before = jitcache.signatures()
    for map_type in TYPES:
        spec = MapSpec("w", map_type, 4, 16, 4)
        m = make_native_map(spec, 1, ncpus=2)
        m.update(k(1), bytes(spec.user_value_size(2)), UpdateFlag.EXIST if map_type in ORDERED else UpdateFlag.ANY)
        assert len(list(m.items())) == (4 if map_type in ORDERED else 1)
        if map_type not in ORDERED:
            m.delete(k(1))
    after = jitcache.signatures()
    assert {n: s for n, s in after.items() if "engine.jit" in n} == {n: s for n, s in before.items()
                                                                    if "engine.jit" in n}
    assert any("map_table.hash_update" in n for n in after)


@pytest.mark.parametrize("key_size", [1, 2, 3, 5, 6, 7, 8, 9, 13, 16, 20])
def test_every_key_size_hashes_and_compares_all_its_bytes(key_size):
    """Keys are hashed and compared in 8-, 4-, 2- and 1-byte pieces: keys that differ only in their last byte
    (or first) are different keys, and the program side finds what user space stored, at any key address."""
    import random
    rnd = random.Random(key_size)
    spec = MapSpec("ks", MapType.HASH, key_size, 8, 64)
    im, nm = InterpEngine(ncpus=1).create_map(spec), make_native_map(spec, 1, ncpus=1)
    base = bytes(rnd.randrange(256) for _ in range(key_size))
    keys = {base[:-1] + bytes([b]) for b in range(20)} | {bytes([b]) + base[1:] for b in range(20)}
    keys |= {bytes(rnd.randrange(256) for _ in range(key_size)) for _ in range(30)}
    keys = sorted(keys)[:64]
    for i, key in enumerate(keys):
        for m in (im, nm):
            m.update(key, i.to_bytes(8, "little"))
    assert list(im.items()) == list(nm.items())
    for i, key in enumerate(keys):
        for shift in range(3):  # a key at odd addresses, as on a program's stack
            buf = ctypes.create_string_buffer(bytes(shift) + key, shift + key_size)
            p = _lookup(nm.desc, ctypes.cast(ctypes.addressof(buf) + shift, ctypes.c_char_p), 0)
            assert ctypes.string_at(p, 8) == i.to_bytes(8, "little")
    for key in keys[::2]:
        im.delete(key)
        nm.delete(key)
    assert list(im.items()) == list(nm.items())


def _longest_chain(m) -> int:
    longest = 0
    for head in m.buckets:
        n, e = 0, int(head)
        while e >= 0:
            n, e = n + 1, int(m.meta[e * map_table.META_WORDS + map_table.M_CHAIN])
        longest = max(longest, n)
    return longest


@pytest.mark.parametrize("key_size,make", [
    (4, lambda i: i.to_bytes(4, "little")), (16, lambda i: bytes(12) + i.to_bytes(4, "big")),
    (13, lambda i: (i << 64).to_bytes(13, "little")),
], ids=["counter", "high-bytes", "odd-size"])
def test_hash_spreads_structured_keys(key_size, make):
    """Full maps of counter-like keys keep short chains (a lookup walks a few elements, not a list), and two
    maps of one spec hash differently (a per-map random seed: keys cannot be chosen to collide everywhere)."""
    spec = MapSpec("spread", MapType.HASH, key_size, 8, 2048)
    maps = [make_native_map(spec, 1, ncpus=1) for _ in range(2)]
    for m in maps:
        for i in range(2048):
            m.update(make(i), bytes(8))
        assert _longest_chain(m) <= 10
    assert not np.array_equal(maps[0].buckets, maps[1].buckets)
