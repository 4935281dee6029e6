"""Random programs our verifier accepts: the JIT's native code and the interpreter agree on each.

The programs come from the verifier's own generator (`test_verifier_fuzz.template` and
`line`): a checked packet pointer, a map value and the stack, with random offsets, sizes,
ALU and 32-bit operations, spills and fills, bounded variable offsets, map lookups, atomics,
helper and subprogram calls. Each accepted one runs on a short and a long packet on both
engines, with the same maps made in the same order; the action, the packet that came out,
whether the run faulted and every map's contents must be equal after each packet. Lines that
draw ``bpf_get_prandom_u32`` are left out: the engines' generators differ by design.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_verifier_fuzz import HANDLES, PACKETS, RUNNABLE, SPECS, line, template

from vxdp.bpf.asm import assemble
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.jit.engine import JitEngine
from vxdp.engine.verifier import verify
from vxdp.engine.verifier.errors import VerifierRejected


def _engines():
    interp, jit = InterpEngine(seed=1, budget=1_000_000), JitEngine(seed=1)
    maps = [(interp.create_map(s), jit.create_map(s)) for s in RUNNABLE.values()]
    assert [a.handle for a, _ in maps] == [b.handle for _, b in maps] == list(HANDLES.values())
    return interp, jit, maps


def _compare(insns, lines) -> None:
    interp, jit, maps = _engines()
    try:
        a, b = interp.load_program("fuzz", insns), jit.load_program("fuzz", insns)
        for packet in PACKETS:
            want, got = interp.run(a, packet), jit.run(b, packet)
            assert (got.action, got.packet) == (want.action, want.packet), (want.fault, got.fault, lines)
            assert (got.fault is None) == (want.fault is None), (want.fault, got.fault)
            for m_interp, m_jit in maps:
                assert dict(m_jit.items()) == dict(m_interp.items()), (m_interp.spec.name, lines)
    finally:
        interp.close()
        jit.close()


def test_jit_agrees_with_the_interpreter():
    seen = {"drawn": 0, "accepted": 0}

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(guard=st.integers(0, 40),
           lines=st.lists(line().filter(lambda text: "prandom" not in text), min_size=1, max_size=10))
    def check(guard, lines):
        seen["drawn"] += 1
        insns = assemble(template(guard, lines).format(**HANDLES))
        try:
            verify(insns, SPECS)
        except VerifierRejected:
            return
        seen["accepted"] += 1
        _compare(insns, lines)

    check()
    assert seen["accepted"] >= seen["drawn"] // 10, seen  # the comparison is not vacuous
