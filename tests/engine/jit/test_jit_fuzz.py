"""Random programs our verifier accepts: the JIT's native code and the interpreter agree on each.

The programs come from the verifier's own generator (`test_verifier_fuzz.template` and
`line`): a checked packet pointer, a map value and the stack, with random offsets, sizes,
ALU and 32-bit operations, spills and fills, bounded variable offsets, map lookups, atomics,
helper and subprogram calls. Each accepted one runs on a short and a long packet on both
engines, with the same maps made in the same order; the action, the packet that came out,
whether the run faulted and every map's contents must be equal after each packet. Lines that
draw ``bpf_get_prandom_u32`` are left out: the engines' generators differ by design. So are
programs that let a pointer's value escape into what is compared (a store of a pointer, spills
included, arithmetic that turns a pointer into a number, a pointer compared with a number,
a pointer returned): privileged programs may, and the engines' addresses differ by design
(`PointerEscapes`, the verifier's walk watching for it, finds them).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_verifier_fuzz import HANDLES, PACKETS, RUNNABLE, SPECS, line, template

from vxdp.bpf.asm import assemble
from vxdp.bpf.isa import AluOp, Cls, JmpOp, Mode
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.jit.engine import JitEngine
from vxdp.engine.verifier import verify
from vxdp.engine.verifier.check import Verifier
from vxdp.engine.verifier.errors import VerifierRejected


class PointerEscapes(Verifier):
    """Our verifier, noting whether any path lets an address become data the engines compare."""

    escapes = False

    def _step(self, pc, st):
        insn, regs = self.insns[pc], st.regs
        cls, op, is_x = insn.code & 7, insn.code & 0xF0, bool(insn.code & 0x08)

        def ptr(r: int) -> bool:
            return regs[r].is_pointer

        if cls == Cls.STX and insn.code & 0xE0 in (Mode.MEM, Mode.ATOMIC):
            self.escapes |= ptr(insn.src)  # on the stack too: a partial fill or a helper may read it
        elif cls in (Cls.ALU, Cls.ALU64) and op != AluOp.END:
            wide = cls == Cls.ALU64
            keeps = wide and op in (AluOp.ADD, AluOp.SUB, AluOp.MOV)
            self.escapes |= (ptr(insn.dst) and op != AluOp.MOV or is_x and ptr(insn.src)) and not keeps
        elif cls in (Cls.JMP, Cls.JMP32) and op not in (JmpOp.JA, JmpOp.CALL, JmpOp.EXIT, JmpOp.JCOND):
            a, b = ptr(insn.dst), is_x and ptr(insn.src)
            null_check = op in (JmpOp.JEQ, JmpOp.JNE) and not is_x and insn.imm == 0
            self.escapes |= (a != b or cls == Cls.JMP32 and a) and not null_check
        elif insn.code == 0x95 and len(st.frames) == 1:
            self.escapes |= ptr(0)
        return super()._step(pc, st)


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
    seen = {"drawn": 0, "accepted": 0, "compared": 0}

    @settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
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
        watch = PointerEscapes(insns, SPECS)
        watch.run()
        if watch.escapes:
            return
        seen["compared"] += 1
        _compare(insns, lines)

    check()
    assert seen["compared"] >= seen["drawn"] // 10, seen  # the comparison is not vacuous
