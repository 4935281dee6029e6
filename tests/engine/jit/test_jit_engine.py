"""The JIT engine's own promises: batches equal single runs, run-time checks abort a packet and
count it without harming the process, refusals are clear, and it is an engine like the others."""

from __future__ import annotations

import numpy as np
import pytest
from testpaths import SAMPLES_BUILD, sample_objects

from vxdp import packets
from vxdp.bpf.asm import assemble
from vxdp.bpf.elf import load_object as parse_object
from vxdp.bpf.isa import XdpAction
from vxdp.bpf.link import link, resolve_maps
from vxdp.bpf.mapspec import MapSpec, MapType
from vxdp.engine import make_engine
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.jit.analysis import observe
from vxdp.engine.jit.engine import JitEngine, JitError
from vxdp.engine.jit.irtypes import JitLoadError
from vxdp.engine.loader import load_object
from vxdp.engine.verifier.errors import VerifierRejected

# A packet byte picks a stack slot: an access the verifier bounds only by a range (checked at run time).
VAR_STACK = """
r0 = 2
r2 = *(u32 *)(r1 +0)
r3 = *(u32 *)(r1 +4)
r4 = r2
r4 += 1
if r4 > r3 goto out
r5 = *(u8 *)(r2 +0)
r5 {op}
r6 = r10
r6 += -16
r6 += r5
*(u8 *)(r6 +0) = 1
r0 = 3
out:
exit
"""


def _frames(packets_: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    frames = np.zeros((len(packets_), 4096), np.uint8)
    geometry = np.zeros((len(packets_), 3), np.int32)
    for i, p in enumerate(packets_):
        frames[i, 256:256 + len(p)] = np.frombuffer(p, np.uint8)
        geometry[i] = (256, 256, 256 + len(p))
    return frames, geometry


def test_make_engine_gives_the_jit():
    engine = make_engine("jit")
    try:
        assert engine.name == "jit" and isinstance(engine, JitEngine)
    finally:
        engine.close()


def test_a_cpu_outside_the_possible_ones_is_refused():
    """Inlined per-CPU lookups index storage by the CPU: one past the possible CPUs never runs."""
    engine = JitEngine(ncpus=2)
    try:
        prog = engine.load_program("p", assemble("r0 = 2\nexit"))
        engine.cpu = 1
        assert engine.run(prog, bytes(64)).action == XdpAction.PASS
        engine.cpu = 2
        with pytest.raises(JitError, match="cpu 2"):
            engine.run(prog, bytes(64))
    finally:
        engine.close()


def test_a_failed_run_time_check_aborts_the_packet_and_is_counted():
    """Notes from the safe program (slot = byte & 7), code of an unsafe one (byte << 20): what a
    verifier bug would give. Packets whose byte is 0 stay inside the stack and pass; the others fault."""
    safe, unsafe = assemble(VAR_STACK.format(op="&= 7")), assemble(VAR_STACK.format(op="<<= 20"))
    engine = JitEngine()
    try:
        assert engine.programs == {}
        notes = observe(safe, {})
        assert notes.needs_check(11) and not notes.needs_check(6)  # the store through r6; the packet load
        prog = engine.install("unsafe", unsafe, notes)
        pkts = [bytes([b]) + bytes(63) for b in (0, 5, 0, 200, 1)]
        frames, geometry = _frames(pkts)
        actions = engine.run_frames(prog, frames, geometry)
        assert list(actions) == [3, XdpAction.ABORTED, 3, XdpAction.ABORTED, XdpAction.ABORTED]
        assert engine.faults == 3
        assert "pc 11" in engine.last_fault and "outside every region" in engine.last_fault
        r = engine.run(prog, bytes(64))  # the process and the engine go on
        assert r.action == 3 and r.fault is None
        r = engine.run(prog, b"\x07" + bytes(63))
        assert r.action == XdpAction.ABORTED and r.fault and engine.faults == 4
        good = engine.load_program("safe", safe)  # the verified program: in range for every byte
        assert list(engine.run_frames(good, *_frames(pkts))) == [3] * 5
    finally:
        engine.close()


def test_verifier_refusal_goes_up_with_its_log():
    engine = JitEngine()
    try:
        with pytest.raises(VerifierRejected) as e:
            engine.load_program("bad", assemble("r0 = *(u64 *)(r10 -8)\nr1 = *(u64 *)(r0 +0)\nexit"))
        assert e.value.log and "R0" in e.value.log or "r0" in e.value.log.lower()
    finally:
        engine.close()


def test_a_helper_the_jit_lacks_is_refused_at_load_by_name():
    engine = JitEngine()
    try:
        with pytest.raises(JitLoadError, match="redirect"):
            engine.load_program("redir", assemble("r1 = 1\nr2 = 0\ncall bpf_redirect\nexit"))
    finally:
        engine.close()


@pytest.mark.parametrize("sample", ["xdp1", "xdp2"])
def test_a_batch_equals_runs_one_by_one(sample):
    """The same frames through run_batch on one engine and run() on another (and the interpreter):
    the same actions, the same packets out, the same maps."""
    obj = parse_object(str(SAMPLES_BUILD / f"{sample}.o"))
    pkts = [f for f in packets.mix(300)]
    batch_side, single_side = load_object(JitEngine(), obj), load_object(JitEngine(), obj)
    interp = load_object(InterpEngine(), obj)
    try:
        frames, geometry = _frames(pkts)
        actions = batch_side.engine.run_frames(batch_side.program_handle(), frames, geometry)
        for i, p in enumerate(pkts):
            one = single_side.run(p)
            ref = interp.run(p)
            lo, _, hi = geometry[i]
            assert (int(actions[i]), frames[i, lo:hi].tobytes()) == (one.action, one.packet) == (ref.action, ref.packet)
        for name, m in batch_side.maps.items():
            assert dict(m.items()) == dict(single_side.maps[name].items()) == dict(interp.maps[name].items()), name
        assert batch_side.engine.faults == 0
    finally:
        for side in (batch_side, single_side, interp):
            side.close()


def test_prog_array_slot_reaches_the_target_natively():
    """A user-space update of a prog_array slot makes the tail call go there; an empty slot falls through."""
    engine = JitEngine()
    try:
        jmp = engine.create_map(MapSpec("jmp", MapType.PROG_ARRAY, 4, 4, 2))
        target = engine.load_program("t", assemble("r0 = 3\nexit"))
        main = engine.load_program("m", assemble(
            f"r2 = map[fd:{jmp.handle}] ll\nr3 = 1\ncall bpf_tail_call\nr0 = 1\nexit"))
        assert engine.run(main, bytes(64)).action == XdpAction.DROP
        jmp.update((1).to_bytes(4, "little"), target.to_bytes(4, "little"))
        assert engine.run(main, bytes(64)).action == XdpAction.TX
        assert jmp.lookup((1).to_bytes(4, "little")) == target.to_bytes(4, "little")
    finally:
        engine.close()


def _checked(stem: str) -> list[int]:
    obj = parse_object(str(next(p for p in sample_objects() if p.stem == stem)))
    handles = {n: i + 1 for i, n in enumerate(obj.maps)}
    linked = link(obj, obj.program().name)
    insns = resolve_maps(linked, handles)
    notes = observe(insns, {handles[n]: s for n, s in obj.maps.items()}, func_info=bool(linked.func_info))
    return [pc for pc, insn in enumerate(insns) if insn.code & 7 in (1, 2, 3) and notes.needs_check(pc)]


def test_run_time_checks_go_only_where_the_verifier_saw_a_range():
    """xdp1 and xdp2 touch only bytes the verifier pinned down (constant stack and map value offsets,
    packet bytes proven below data_end): no check. global_data indexes its .data array with a bounded
    variable: those accesses, and only those, are checked."""
    assert _checked("xdp1") == [] and _checked("xdp2") == []
    checked = _checked("global_data")
    assert checked and len(checked) <= 4
