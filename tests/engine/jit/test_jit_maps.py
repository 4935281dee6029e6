"""The JIT's native maps: user space sees the kernel's semantics (the same operations on a kernel map of
the same spec give the same answers and errnos), programs' native functions see the same memory.

LRU maps are compared with the interpreter's (the kernel's LRU is approximate by design; ours and the
interpreter's evict the least recently used exactly), every other type with the host kernel's.
"""

from __future__ import annotations

import ctypes
import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vxdp.bpf.kernel.maps import KernelMap
from vxdp.bpf.mapspec import MapSpec, MapType, UpdateFlag, percpu_value_stride, possible_cpus
from vxdp.engine.interp.maps import MapSpecError, make_map
from vxdp.engine.jit import map_runtime as rt
from vxdp.engine.jit.maps import NativeKind, make_native_map

NCPU = possible_cpus()
LOOKUP = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(rt.ADDRESSES["lookup"])
UPDATE = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                          ctypes.c_int64)(rt.ADDRESSES["update"])
DELETE = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(rt.ADDRESSES["delete"])

KERNEL_TYPES = [MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.HASH, MapType.PERCPU_HASH]


def _spec(t: MapType, key_size: int = 4, value_size: int = 8, max_entries: int = 4) -> MapSpec:
    return MapSpec(f"m_{t.name.lower()}"[:15], t, 4 if "ARRAY" in t.name else key_size, value_size, max_entries)


def _outcome(f, *args):
    try:
        return ("ok", f(*args))
    except OSError as e:
        return ("errno", e.errno)


ops = st.lists(st.tuples(st.sampled_from(["update", "lookup", "delete", "next"]), st.integers(0, 6),
                         st.integers(0, 2 ** 64 - 1), st.sampled_from([0, 1, 2])), max_size=40)


def _run(m, spec: MapSpec, seq) -> list:
    vsize = spec.user_value_size(NCPU) if spec.is_percpu else spec.value_size
    out = []
    for op, k, v, flags in seq:
        key = k.to_bytes(spec.key_size, "little")
        value = (v.to_bytes(8, "little") * (vsize // 8 + 1))[:vsize]
        if op == "update":
            out.append(_outcome(m.update, key, value, UpdateFlag(flags)))
        elif op == "lookup":
            out.append(_outcome(m.lookup, key))
        elif op == "delete":
            out.append(_outcome(m.delete, key))
        else:
            out.append(_outcome(m.next_key, key if k % 2 else None))
    out.append(sorted(m.items()))
    return out


@pytest.mark.privileged
@pytest.mark.parametrize("t", KERNEL_TYPES, ids=lambda t: t.name.lower())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops)
def test_user_space_semantics_are_the_kernels(t, seq):
    spec = _spec(t)
    k = KernelMap.create(spec)
    try:
        want = _run(k, spec, seq)
    finally:
        k.close()
    got = _run(make_native_map(spec, 1), spec, seq)
    if t in (MapType.HASH, MapType.PERCPU_HASH):  # the kernel walks buckets, we insertion order
        want = [w for w, (op, *_) in zip(want, [*seq, ("end",)]) if op != "next"]
        got = [g for g, (op, *_) in zip(got, [*seq, ("end",)]) if op != "next"]
    assert got == want


@pytest.mark.parametrize("t", [MapType.LRU_HASH, MapType.LRU_PERCPU_HASH, MapType.HASH], ids=lambda t: t.name)
@settings(max_examples=80, deadline=None)
@given(seq=ops)
def test_hash_and_lru_maps_agree_with_the_interpreter_order_included(t, seq):
    spec = _spec(t)
    assert _run(make_native_map(spec, 1), spec, seq) == _run(make_map(spec, 1, {}), spec, seq)


def test_programs_and_user_space_share_the_memory():
    spec = MapSpec("flows", MapType.HASH, 8, 16, 2)
    m = make_native_map(spec, 1)
    key = (ctypes.c_uint8 * 8)(*range(8))
    value = (ctypes.c_uint8 * 16)(*([7] * 16))
    assert LOOKUP(m.desc, ctypes.addressof(key), 0) == 0
    assert UPDATE(m.desc, ctypes.addressof(key), ctypes.addressof(value), 0, 0) == 0
    assert m.lookup(bytes(range(8))) == bytes([7] * 16)
    at = LOOKUP(m.desc, ctypes.addressof(key), 0)
    ctypes.c_uint64.from_address(at).value = 0x1122334455667788  # a program writing through the pointer
    assert m.lookup(bytes(range(8)))[:8] == (0x1122334455667788).to_bytes(8, "little")
    m.update(bytes(range(8)), bytes(16))  # user space replaces the value: same element, same address
    assert LOOKUP(m.desc, ctypes.addressof(key), 0) == at
    assert UPDATE(m.desc, ctypes.addressof(key), ctypes.addressof(value), 1, 0) == -errno.EEXIST
    other = (ctypes.c_uint8 * 8)(*([9] * 8))
    assert UPDATE(m.desc, ctypes.addressof(other), ctypes.addressof(value), 0, 0) == 0
    third = (ctypes.c_uint8 * 8)(*([5] * 8))
    assert UPDATE(m.desc, ctypes.addressof(third), ctypes.addressof(value), 0, 0) == -errno.E2BIG  # full
    assert UPDATE(m.desc, ctypes.addressof(third), ctypes.addressof(value), 7, 0) == -errno.EINVAL
    assert DELETE(m.desc, ctypes.addressof(other), 0) == 0 and DELETE(m.desc, ctypes.addressof(other), 0) == -errno.ENOENT
    assert dict(m.items()) == {bytes(range(8)): bytes(16)}


def test_a_program_writes_only_its_cpus_slot_and_a_new_element_starts_zeroed():
    spec = MapSpec("pc", MapType.PERCPU_HASH, 4, 8, 4)
    m = make_native_map(spec, 1, ncpus=2)
    key = (ctypes.c_uint8 * 4)(1, 0, 0, 0)
    value = (ctypes.c_uint8 * 8)(*([3] * 8))
    assert UPDATE(m.desc, ctypes.addressof(key), ctypes.addressof(value), 0, 1) == 0
    assert m.lookup(bytes([1, 0, 0, 0])) == bytes(8) + bytes([3] * 8)
    arr = make_native_map(MapSpec("pa", MapType.PERCPU_ARRAY, 4, 4, 2), 2, ncpus=2)
    at = LOOKUP(arr.desc, ctypes.addressof(key), 1)
    ctypes.c_uint32.from_address(at).value = 42
    stride = percpu_value_stride(4)
    assert arr.lookup(bytes([1, 0, 0, 0])) == bytes(stride) + (42).to_bytes(4, "little") + bytes(stride - 4)


def test_the_descriptor_is_as_the_contract_says():
    m = make_native_map(MapSpec("a", MapType.ARRAY, 4, 12, 3), 1)
    words = (ctypes.c_int64 * 16).from_address(m.desc)
    assert list(words[:6]) == [NativeKind.ARRAY, 4, 12, 3, m.ncpus, 16]
    m.update(bytes([2, 0, 0, 0]), bytes(range(12)))
    assert ctypes.string_at(words[6] + 2 * 16, 12) == bytes(range(12))
    assert words[8] == 0
    m.freeze()
    assert words[8] == 1
    with pytest.raises(OSError) as e:
        m.update(bytes(4), bytes(12))
    assert e.value.errno == errno.EPERM


def test_prog_arrays_keep_entry_points_for_the_jit_and_ids_for_user_space():
    entries = {5: 0xABC000}
    m = make_native_map(MapSpec("jmp", MapType.PROG_ARRAY, 4, 4, 4), 1, resolve_prog=lambda p: entries.get(p, 0))
    m.update(bytes([1, 0, 0, 0]), (5).to_bytes(4, "little"))
    assert m.lookup(bytes([1, 0, 0, 0])) == (5).to_bytes(4, "little") and m.entry_of(1) == 0xABC000
    words = (ctypes.c_int64 * 16).from_address(m.desc)
    assert ctypes.c_uint64.from_address(words[6] + 8).value == 0xABC000
    with pytest.raises(OSError) as e:
        m.update(bytes([2, 0, 0, 0]), (6).to_bytes(4, "little"))
    assert e.value.errno == errno.EBADF
    m.delete(bytes([1, 0, 0, 0]))
    assert m.entry_of(1) == 0 and m.lookup(bytes([1, 0, 0, 0])) is None


def test_bad_lengths_and_types_are_the_interpreters_errors():
    m = make_native_map(MapSpec("h", MapType.HASH, 8, 8, 4), 1)
    with pytest.raises(MapSpecError):
        m.update(bytes(4), bytes(8))
    with pytest.raises(MapSpecError):
        m.update(bytes(8), bytes(4))
    with pytest.raises(OSError) as e:
        make_native_map(MapSpec("d", MapType.DEVMAP, 4, 4, 4), 1)
    assert e.value.errno == errno.EINVAL and "not supported by the JIT" in str(e.value)
