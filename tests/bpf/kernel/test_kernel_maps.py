"""KernelMap against the real kernel: every map type vxdp runs, element and batch ops, errors, fds."""

from __future__ import annotations

import errno
import os
import struct

import pytest
from kernel_asm import ret_insns

from vxdp.bpf.kernel.maps import KernelMap, MapError, sanitize_name
from vxdp.bpf.kernel.objects import map_get_fd_by_id, map_ids
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.kernel.syscall import ENOTSUPP, BpfError, Cmd
from vxdp.bpf.mapspec import (
    MapFlag,
    MapOrigin,
    MapSpec,
    MapType,
    UpdateFlag,
    percpu_value_stride,
    possible_cpus,
)

pytestmark = pytest.mark.privileged

K = struct.Struct("<I")
ELEM_TYPES = [MapType.ARRAY, MapType.HASH, MapType.PERCPU_ARRAY, MapType.PERCPU_HASH, MapType.LRU_HASH]


def key(i: int) -> bytes:
    return K.pack(i)


def make(t: MapType, max_entries: int = 8, value_size: int = 8, **kw) -> KernelMap:
    return KernelMap.create(MapSpec(f"t_{t.name.lower()}", t, 4, value_size, max_entries, **kw))


def val(m: KernelMap, byte: int) -> bytes:
    return bytes([byte]) * m.value_bytes


def fd_open(fd: int) -> bool:
    return os.path.exists(f"/proc/self/fd/{fd}")


@pytest.mark.parametrize("t", ELEM_TYPES, ids=lambda t: t.name)
def test_update_lookup_next_key(t):
    with make(t) as m:
        assert m.spec.type == t
        if t in (MapType.PERCPU_ARRAY, MapType.PERCPU_HASH):
            assert m.value_bytes == possible_cpus() * percpu_value_stride(8)
        else:
            assert m.value_bytes == 8
        m.update(key(3), val(m, 0x33))
        assert m.lookup(key(3)) == val(m, 0x33)
        m.update(key(3), val(m, 0x44), UpdateFlag.EXIST)
        assert m.lookup(key(3)) == val(m, 0x44)
        if t in (MapType.ARRAY, MapType.PERCPU_ARRAY):
            assert m.lookup(key(0)) == bytes(m.value_bytes)  # arrays are preallocated, zeroed
            assert m.next_key(None) == key(0)
            assert list(m.keys()) == [key(i) for i in range(8)]
            assert m.next_key(key(7)) is None
        else:
            assert m.lookup(key(0)) is None
            assert m.next_key(None) == key(3)
            assert m.next_key(key(3)) is None
            assert dict(m.items()) == {key(3): val(m, 0x44)}


@pytest.mark.parametrize("t", [MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH], ids=lambda t: t.name)
def test_hash_errors(t):
    with make(t) as m:
        m.update(key(1), val(m, 1))
        with pytest.raises(BpfError) as e:
            m.update(key(1), val(m, 2), UpdateFlag.NOEXIST)
        assert e.value.errno == errno.EEXIST and e.value.cmd == Cmd.MAP_UPDATE_ELEM
        with pytest.raises(BpfError) as e:
            m.update(key(2), val(m, 2), UpdateFlag.EXIST)
        assert e.value.errno == errno.ENOENT
        m.delete(key(1))
        assert m.lookup(key(1)) is None
        with pytest.raises(BpfError) as e:
            m.delete(key(1))
        assert e.value.errno == errno.ENOENT and "MAP_DELETE_ELEM" in str(e.value)


def test_hash_full_is_e2big_and_lru_evicts():
    with make(MapType.HASH, max_entries=4) as h:
        for i in range(4):
            h.update(key(i), val(h, i))
        with pytest.raises(BpfError) as e:
            h.update(key(99), val(h, 9))
        assert e.value.errno == errno.E2BIG
    with make(MapType.LRU_HASH, max_entries=64) as lru:
        for i in range(300):
            lru.update(key(i), val(lru, i & 0xFF))  # never full: the LRU evicts
        n = len(list(lru.keys()))
        assert 0 < n <= 64
        assert lru.lookup(key(299)) == val(lru, 299 & 0xFF)  # the newest survives


@pytest.mark.parametrize("t", [MapType.ARRAY, MapType.PERCPU_ARRAY], ids=lambda t: t.name)
def test_array_errors(t):
    with make(t, max_entries=4) as m:
        with pytest.raises(BpfError) as e:
            m.delete(key(1))
        assert e.value.errno == errno.EINVAL
        with pytest.raises(BpfError) as e:
            m.update(key(4), val(m, 1))  # index out of range
        assert e.value.errno == errno.E2BIG
        assert m.lookup(key(4)) is None  # out of range lookup: ENOENT
        with pytest.raises(BpfError) as e:
            m.update(key(1), val(m, 1), UpdateFlag.NOEXIST)  # every index exists
        assert e.value.errno == errno.EEXIST


def test_bad_sizes_are_caught_before_the_kernel():
    with make(MapType.HASH) as m:
        with pytest.raises(MapError, match="key of 2 bytes"):
            m.lookup(b"\0\0")
        with pytest.raises(MapError, match="value of 3 bytes"):
            m.update(key(0), b"abc")
    with pytest.raises(MapError):
        KernelMap.create(MapSpec("bad", MapType.HASH, 4, 0, 8))


def test_create_refused_names_the_map():
    with pytest.raises(BpfError) as e:
        KernelMap.create(MapSpec("nosuchtype", 9999, 4, 8, 8))  # type: ignore[arg-type]
    assert e.value.errno == errno.EINVAL and "MAP_CREATE" in str(e.value) and "nosuchtype" in str(e.value)


def test_prog_array():
    with make(MapType.PROG_ARRAY, max_entries=4, value_size=4) as pa, \
            KernelProgram.load(ret_insns(2), name="pa_target") as prog:
        assert pa.lookup(key(0)) is None  # empty slots are missing
        pa.update(key(1), K.pack(prog.fd))
        assert K.unpack(pa.lookup(key(1)))[0] == prog.info().id  # user space reads back the prog id
        with pytest.raises(BpfError) as e:
            pa.update(key(2), K.pack(pa.fd))  # a map fd is not a program
        assert e.value.errno == errno.EINVAL
        with pytest.raises(BpfError) as e:
            pa.update(key(4), K.pack(prog.fd))
        assert e.value.errno == errno.E2BIG
        pa.delete(key(1))  # fd arrays do allow delete
        assert pa.lookup(key(1)) is None
        with pytest.raises(BpfError) as e:
            pa.delete(key(1))
        assert e.value.errno == errno.ENOENT


@pytest.mark.parametrize("t", ELEM_TYPES, ids=lambda t: t.name)
def test_batch_round_trip(t):
    n = 16
    with make(t, max_entries=n) as m:
        keys = [key(i) for i in range(n)]
        values = [val(m, i + 1) for i in range(n)]
        assert m.update_batch(keys, values) == n
        assert dict(m.items_batched(count=5)) == dict(zip(keys, values))
        assert dict(m.items()) == dict(zip(keys, values))
        if t in (MapType.ARRAY, MapType.PERCPU_ARRAY):
            with pytest.raises(BpfError) as e:
                m.delete_batch(keys[:2])
            assert e.value.errno == ENOTSUPP  # arrays have no batch delete (6.18)
            with pytest.raises(BpfError) as e:
                m.lookup_and_delete_batch()
            assert e.value.errno == ENOTSUPP
        else:
            assert m.delete_batch(keys[:4]) == 4
            assert sorted(m.keys()) == sorted(keys[4:])
            got: dict[bytes, bytes] = {}
            token = None
            for _ in range(n + 1):
                r = m.lookup_and_delete_batch(token, count=n)
                got.update(r.items())
                if r.next_batch is None:
                    break
                token = r.next_batch
            assert got == dict(zip(keys[4:], values[4:]))
            assert list(m.keys()) == []


def test_info_and_name_sanitising():
    assert sanitize_name("my-map:with/odd chars.and_long") == "my_map_with_odd"
    with make(MapType.HASH, max_entries=12, value_size=24) as m:
        i = m.info()
        assert (i.type, i.key_size, i.value_size, i.max_entries) == (MapType.HASH, 4, 24, 12)
        assert i.name == "t_hash" and i.id in map_ids()


def test_rodata_is_filled_and_frozen():
    spec = MapSpec("obj.rodata", MapType.ARRAY, 4, 16, 1, flags=MapFlag.RDONLY_PROG,
                   origin=MapOrigin.RODATA, data=b"hello")
    with KernelMap.create(spec) as m:
        assert m.lookup(key(0)) == b"hello".ljust(16, b"\0")
        assert m.info().map_flags & MapFlag.RDONLY_PROG
        with pytest.raises(BpfError) as e:
            m.update(key(0), bytes(16))
        assert e.value.errno == errno.EPERM
        assert m.frozen
        m.freeze()  # a second freeze through us is a no-op; the kernel itself refuses it:
        with KernelMap.from_fd(map_get_fd_by_id(m.info().id)) as other, pytest.raises(BpfError) as e:
            other.freeze()
        assert e.value.errno == errno.EPERM  # a frozen map is read-only to every fd (6.18)


def test_freeze_makes_a_map_read_only_to_user_space_and_names_the_call():
    with make(MapType.HASH) as m:
        m.update(key(1), val(m, 1))
        m.freeze()
        assert m.lookup(key(1)) == val(m, 1)
        for op in (lambda: m.update(key(2), val(m, 2)), lambda: m.delete(key(1))):
            with pytest.raises(BpfError) as e:
                op()
            assert e.value.errno == errno.EPERM
        with KernelMap.from_fd(map_get_fd_by_id(m.info().id)) as other, pytest.raises(BpfError) as e:
            other.freeze()
        assert e.value.errno == errno.EPERM and e.value.cmd == Cmd.MAP_FREEZE
        assert "BPF_MAP_FREEZE (map 't_hash')" in str(e.value)


def test_rdonly_prog_map_with_initial_data_is_frozen_on_create():
    """Not only ``.rodata``: any map read-only to programs that comes with an initial image
    (`freezes_after_init`), so the verifier sees its values as constants."""
    spec = MapSpec("cfg", MapType.ARRAY, 4, 8, 1, flags=MapFlag.RDONLY_PROG, data=b"\x05")
    with KernelMap.create(spec) as m:
        assert m.frozen and m.lookup(key(0)) == b"\x05" + bytes(7)
        with pytest.raises(BpfError) as e:
            m.update(key(0), bytes(8))
        assert e.value.errno == errno.EPERM
    with make(MapType.ARRAY, flags=MapFlag.RDONLY_PROG) as m:  # no initial data: left writable
        assert not m.frozen
        m.update(key(0), val(m, 3))


def test_data_map_is_filled_not_frozen():
    spec = MapSpec("obj.data", MapType.ARRAY, 4, 8, 1, origin=MapOrigin.DATA, data=b"\x01\x02")
    with KernelMap.create(spec) as m:
        assert m.lookup(key(0)) == b"\x01\x02" + bytes(6)
        m.update(key(0), bytes(8))
        assert m.lookup(key(0)) == bytes(8)


def test_close_releases_the_fd_and_the_map():
    before = map_ids()
    m = make(MapType.HASH)
    fd, map_id = m.fd, m.info().id
    assert fd_open(fd) and map_id in map_ids()
    m.close()
    assert not fd_open(fd)
    assert m.closed
    m.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        m.lookup(key(0))
    assert map_id not in map_ids()  # map ids are freed synchronously on last close
    assert map_ids() - before == set()


def test_from_fd_adopts_a_map_by_id():
    from vxdp.bpf.kernel.objects import map_get_fd_by_id

    with make(MapType.ARRAY, max_entries=2) as m:
        m.update(key(1), val(m, 7))
        with KernelMap.from_fd(map_get_fd_by_id(m.info().id)) as other:
            assert other.spec.max_entries == 2 and other.spec.type == MapType.ARRAY
            assert other.lookup(key(1)) == val(m, 7)


def test_dropping_the_last_reference_closes_the_fd():
    m = make(MapType.ARRAY, max_entries=1)
    fd = m.fd
    assert fd_open(fd)
    del m  # __del__ is the safety net
    assert not fd_open(fd)


@pytest.mark.privileged
def test_items_batched_grows_count_past_a_full_bucket():
    # 64 keys in a 64-entry hash put two or more in some bucket; count=1 must still see them all
    with make(MapType.HASH, max_entries=64) as m:
        keys = [key(i) for i in range(64)]
        values = [val(m, i + 1) for i in range(64)]
        assert m.update_batch(keys, values) == 64
        assert dict(m.items_batched(count=1)) == dict(zip(keys, values))
