"""The kernel engine's object lifetimes, counted by the kernel: a closed prog_array goes even when
someone opens it by id right after (the kernel's double-clear leak, `vxdp.engine.kernel`), and BTF
objects go with the last program that used them; a refused BTF blob is not kept."""

from __future__ import annotations

import os
import struct

import pytest
from testpaths import SAMPLES_BUILD

from vxdp.bpf import elf, link
from vxdp.bpf.isa import EXIT, Insn, PseudoSrc, lddw
from vxdp.bpf.kernel.objects import btf_ids, map_get_fd_by_id, map_ids
from vxdp.bpf.mapspec import MapSpec, MapType
from vxdp.engine.kernel import KernelEngine
from vxdp.testing.kobjects import btf_variant
from vxdp.testing.proc import poll

pytestmark = pytest.mark.privileged
U32 = struct.Struct("<I")


def _tail_caller(table_fd: int) -> list[Insn]:
    """r2 = table; r3 = 0; tail_call; r0 = XDP_PASS; exit: a program that uses (and holds) the table."""
    return [*lddw(2, table_fd, PseudoSrc.MAP_FD), Insn(0xB7, 3, 0, 0, 0), Insn(0x85, 0, 0, 0, 12),
            Insn(0xB7, 0, 0, 0, 2), Insn(EXIT)]


def test_a_freed_prog_array_goes_even_when_opened_by_id_right_after():
    """What bpftool (or any scanner) does while we close: open the array by id and close it. On the
    plain close 1 to 49 of 50 arrays lived on, empty, for ever; the engine's close waits for the
    kernel's clear, so none survives."""
    ids = []
    eng = KernelEngine(name_prefix="vxtk_")
    for _ in range(50):
        table = eng.create_map(MapSpec("jt", MapType.PROG_ARRAY, 4, 4, 4))
        prog = eng.load_program("caller", _tail_caller(table.handle))
        table.update(U32.pack(0), U32.pack(prog))  # holds its own user, which tail-calls slot 0
        mid = table.info().id
        ids.append(mid)
        eng.free_program(prog)
        eng.free_map(table)
        try:
            os.close(map_get_fd_by_id(mid))  # a scanner's user reference, dropped at once
        except OSError:
            pass  # already gone
    eng.close()
    left = poll(lambda: set(ids) & map_ids(), lambda s: not s, timeout=10, what="freed prog_arrays gone")
    assert left == set()


def test_btf_goes_with_the_last_program_using_it_and_a_refused_blob_is_not_kept():
    obj = elf.load_object(SAMPLES_BUILD / "xdp1.o")
    linked = link.link(obj, "xdp_prog1")
    eng = KernelEngine(name_prefix="vxtb_")
    try:
        maps = {n: eng.create_map(s).handle for n, s in obj.maps.items()}
        insns = link.resolve_maps(linked, maps)
        before = btf_ids()

        def load(btf: bytes) -> int:
            return eng.load_program("xdp_prog1", insns, btf=btf, func_info=linked.func_info,
                                    line_info=linked.line_info)

        shared = [load(obj.btf_raw) for _ in range(3)]
        assert len(btf_ids() - before) == 1  # one object for one blob
        for fd in shared[:2]:
            eng.free_program(fd)
        assert len(btf_ids() - before) == 1  # still used by the third
        eng.free_program(shared[2])
        assert btf_ids() - before == set()
        for n in range(30):  # a new blob every load, each program freed: nothing accumulates
            eng.free_program(load(btf_variant(obj.btf_raw, n)))
        assert btf_ids() - before == set() and eng._btf == {}
        bad = b"\x9f\xeb" + bytes(1 << 16)  # BTF magic, then nonsense: the kernel refuses it
        eng.free_program(load(bad))
        assert eng._btf == {} and btf_ids() - before == set()
    finally:
        eng.close()
