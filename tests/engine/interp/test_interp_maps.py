"""User-space map semantics: the same random operations on a kernel map and an interpreter map.

Every operation's result or errno must be equal. Hash iteration order is the
one thing the kernel leaves open, so ``next_key`` is compared as "is a key of
the map" there, and LRU maps are sized so that nothing is evicted (the
kernel's LRU is approximate); eviction is tested on the interpreter alone.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from interp_asm import alu, call, exit_, jmp, ld64, ldx, mov, prog, stx
from interp_asm import st as st_imm

from vxdp.bpf.helpers import Helper
from vxdp.bpf.isa import AluOp, JmpOp, PseudoSrc
from vxdp.bpf.kernel.maps import KernelMap
from vxdp.bpf.mapspec import MapSpec, MapType, UpdateFlag, percpu_value_stride, possible_cpus
from vxdp.engine.interp.engine import InterpEngine

TYPES = [MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH,
         MapType.LRU_PERCPU_HASH]
ORDERED = {MapType.ARRAY, MapType.PERCPU_ARRAY}


def _spec(t: MapType) -> MapSpec:
    max_entries = 64 if t in (MapType.LRU_HASH, MapType.LRU_PERCPU_HASH) else 4
    return MapSpec(f"m{int(t)}", t, 4, 12, max_entries)


def _value_len(spec: MapSpec) -> int:
    return percpu_value_stride(spec.value_size) * possible_cpus() if spec.is_percpu else spec.value_size


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


def _ops(spec: MapSpec):
    key = st.integers(0, 6).map(lambda k: k.to_bytes(4, "little"))
    stride = percpu_value_stride(spec.value_size)

    def value(raw: bytes) -> bytes:
        if not spec.is_percpu:
            return raw[:spec.value_size]
        return b"".join(raw[:spec.value_size] + bytes(stride - spec.value_size) for _ in range(possible_cpus()))

    op = st.tuples(st.sampled_from(["lookup", "update", "update", "delete", "next_key"]),
                   st.one_of(key, st.none()), st.binary(min_size=12, max_size=12).map(value),
                   st.sampled_from([UpdateFlag.ANY, UpdateFlag.NOEXIST, UpdateFlag.EXIST]))
    return st.lists(op.filter(lambda o: o[1] is not None or o[0] == "next_key"), max_size=40)


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.parametrize("map_type", TYPES, ids=lambda t: t.name)
def test_random_user_ops_match_kernel(map_type):
    spec = _spec(map_type)

    @settings(max_examples=int(__import__("os").environ.get("VXDP_MAPOPS_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_ops(spec))
    def run(ops):
        engine = InterpEngine()
        with KernelMap.create(spec) as km:
            im = engine.create_map(spec)
            for op in ops:
                k, i = _do(km, op), _do(im, op)
                if op[0] == "next_key" and map_type not in ORDERED:
                    # order is the kernel's business; each answer must be a key of its map
                    assert k is None or km.lookup(k) is not None
                    assert i is None or im.lookup(i) is not None
                    if op[1] is None or km.lookup(op[1]) is None:
                        # None or a missing key starts the walk: the first key, if any
                        assert (k is None) == (i is None) == (next(iter(km.keys()), None) is None)
                        assert i == next(iter(im.keys()), None)
                    continue
                assert k == i, op
            assert sorted(km.keys()) == sorted(im.keys())
            for key in km.keys():  # noqa: SIM118 -- a map, not a dict: keys() walks GET_NEXT_KEY
                assert km.lookup(key) == im.lookup(key)

    run()


@pytest.mark.privileged
def test_prog_array_user_ops_match_kernel():
    from vxdp.bpf.kernel.prog import KernelProgram
    spec = MapSpec("pa", MapType.PROG_ARRAY, 4, 4, 3)
    engine = InterpEngine()
    im = engine.create_map(spec)
    h = engine.load_program("p", prog(mov(0, imm=2), exit_()))
    with KernelMap.create(spec) as km, KernelProgram.load(prog(mov(0, imm=2), exit_()), name="p") as kp:
        k0, k5 = b"\0\0\0\0", b"\5\0\0\0"

        def user_ops(m, handle: int) -> list:
            out = []
            for call_ in (lambda: m.update(k5, handle.to_bytes(4, "little")),
                          lambda: m.update(k0, handle.to_bytes(4, "little"), UpdateFlag.NOEXIST),
                          lambda: m.delete(k0),
                          lambda: m.update(k0, handle.to_bytes(4, "little")),
                          lambda: m.next_key(None), lambda: m.next_key(b"\2\0\0\0"),
                          lambda: m.delete(k0)):
                try:
                    out.append(call_())
                except OSError as e:
                    out.append(("errno", e.errno))
            return out

        results = [user_ops(km, kp.fd), user_ops(im, h)]
        assert results[0] == results[1]
        assert results[1][:3] == [("errno", errno.E2BIG), ("errno", errno.EINVAL), ("errno", errno.ENOENT)]


def test_array_semantics_by_hand(interp):
    m = interp.create_map(MapSpec("a", MapType.ARRAY, 4, 4, 2))
    assert m.lookup(b"\0\0\0\0") == bytes(4)
    assert m.lookup(b"\2\0\0\0") is None
    with pytest.raises(OSError) as e:
        m.update(b"\2\0\0\0", b"abcd")
    assert e.value.errno == errno.E2BIG
    with pytest.raises(OSError) as e:
        m.delete(b"\0\0\0\0")
    assert e.value.errno == errno.EINVAL
    assert list(m.keys()) == [b"\0\0\0\0", b"\1\0\0\0"]
    assert m.next_key(b"\x09\0\0\0") == b"\0\0\0\0"


def test_lru_evicts_least_recently_used(interp):
    m = interp.create_map(MapSpec("lru", MapType.LRU_HASH, 4, 4, 3))
    for k in range(3):
        m.update(k.to_bytes(4, "little"), bytes(4))
    # a program lookup of key 0 makes key 1 the least recently used
    insns = prog(st_imm(4, 10, -4, 0), ld64(1, m.handle, PseudoSrc.MAP_FD), mov(2, 10), alu(AluOp.ADD, 2, imm=-4),
                 call(Helper.map_lookup_elem), mov(0, imm=2), exit_())
    interp.run(interp.load_program("touch", insns), bytes(64))
    m.update((9).to_bytes(4, "little"), bytes(4))
    assert m.lookup((1).to_bytes(4, "little")) is None
    assert sorted(int.from_bytes(k, "little") for k in m.keys()) == [0, 2, 9]  # noqa: SIM118 -- a map, not a dict


def test_hash_full_is_e2big_but_replace_works(interp):
    m = interp.create_map(MapSpec("h", MapType.HASH, 4, 4, 1))
    m.update(b"\1\0\0\0", b"aaaa")
    with pytest.raises(OSError) as e:
        m.update(b"\2\0\0\0", b"bbbb")
    assert e.value.errno == errno.E2BIG
    m.update(b"\1\0\0\0", b"cccc")
    assert m.lookup(b"\1\0\0\0") == b"cccc"


def test_program_writes_alias_value_and_percpu_slots(interp):
    """A program's store through a looked-up value pointer is seen by user space, in its CPU's slot only."""
    m = interp.create_map(MapSpec("pc", MapType.PERCPU_ARRAY, 4, 8, 1))
    insns = prog(st_imm(4, 10, -4, 0), ld64(1, m.handle, PseudoSrc.MAP_FD), mov(2, 10), alu(AluOp.ADD, 2, imm=-4),
                 call(Helper.map_lookup_elem), jmp(JmpOp.JEQ, 0, 2, imm=0),
                 st_imm(8, 0, 0, 0x1234), mov(0, imm=2), exit_(), mov(0, imm=1), exit_())
    interp.cpu = 1
    assert interp.run(interp.load_program("w", insns), bytes(64)).action == 2
    ncpus = interp.ncpus
    expected = bytearray(8 * ncpus)
    expected[8:16] = (0x1234).to_bytes(8, "little")
    assert m.lookup(b"\0\0\0\0") == bytes(expected)


@pytest.mark.privileged
def test_program_side_map_ops_match_kernel():
    """update NOEXIST twice, lookup, delete twice from a program; return codes stored in an array."""
    from interp_oracle import run_both
    hspec = MapSpec("h", MapType.HASH, 4, 8, 4)
    engine = InterpEngine()
    ih = engine.create_map(hspec)

    def build(h: int) -> list:
        body = [st_imm(4, 10, -4, 7), st_imm(8, 10, -16, 99), mov(9, 1)]
        for i, (helper, flags) in enumerate([(Helper.map_update_elem, 1), (Helper.map_update_elem, 1),
                                             (Helper.map_update_elem, 2), (Helper.map_delete_elem, 0),
                                             (Helper.map_delete_elem, 0)]):
            body += [ld64(1, h, PseudoSrc.MAP_FD), mov(2, 10), alu(AluOp.ADD, 2, imm=-4),
                     mov(3, 10), alu(AluOp.ADD, 3, imm=-16), mov(4, imm=flags), call(helper),
                     stx(8, 10, 0, -24 - 8 * i)]
        body += [mov(1, 9), ldx(4, 2, 1, 0), ldx(4, 3, 1, 4), mov(4, 2), alu(AluOp.ADD, 4, imm=40),
                 jmp(JmpOp.JLE, 4, 2, src=3), mov(0, imm=1), exit_()]
        for i in range(5):
            body += [ldx(8, 5, 10, -24 - 8 * i), stx(8, 2, 5, 8 * i)]
        return prog(*body, mov(0, imm=2), exit_())

    with KernelMap.create(hspec) as kh:
        both = run_both(build(ih.handle), bytes(64), engine=engine, kernel_insns=build(kh.fd))
    assert both.interp.packet == both.kernel_packet
    rcs = [int.from_bytes(both.interp.packet[8 * i:8 * i + 8], "little", signed=True) for i in range(5)]
    assert rcs == [0, -errno.EEXIST, 0, 0, -errno.ENOENT]


@pytest.mark.privileged
@pytest.mark.parametrize("map_type", [*TYPES, MapType.PROG_ARRAY], ids=lambda t: t.name)
def test_frozen_map_refuses_user_writes_as_the_kernel(map_type):
    """After BPF_MAP_FREEZE user space reads but no longer writes: EPERM before any other check
    (an array delete is EPERM, not EINVAL); a second freeze is EPERM too (kernel 6.18)."""
    spec = MapSpec("fz", map_type, 4, 4, 4) if map_type == MapType.PROG_ARRAY else _spec(map_type)
    engine = InterpEngine()
    im = engine.create_map(spec)
    k0 = b"\0\0\0\0"
    value = bytes(_value_len(spec)) if map_type != MapType.PROG_ARRAY else bytes(4)
    with KernelMap.create(spec) as km:

        def frozen_ops(m) -> list:
            if map_type not in (MapType.PROG_ARRAY, *ORDERED):
                m.update(k0, value)  # one entry to delete
            m.freeze()
            out = []
            for call_ in (lambda: m.update(k0, value), lambda: m.update(k0, value, UpdateFlag.NOEXIST),
                          lambda: m.delete(k0), lambda: m.lookup(b"\7\0\0\0")):
                try:
                    out.append(call_())
                except OSError as e:
                    out.append(("errno", e.errno))
            return out

        results = [frozen_ops(km), frozen_ops(im)]
        with pytest.raises(OSError) as again:
            im.freeze()
        assert again.value.errno == errno.EPERM
        assert results[0] == results[1]
        assert results[1][:3] == [("errno", errno.EPERM)] * 3
