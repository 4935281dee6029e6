"""The interpreter against the kernel, one ISA corpus case at a time (`isa_corpus`).

Each case runs once under BPF_PROG_TEST_RUN in the host kernel and once in the
interpreter; the XDP action and every output register, all 64 bits (the bytes the
program stored in its ``out`` map), must be equal, and so must the action, the packet and any
value the case states by hand. The kernel must also keep refusing the instructions `REFUSED` lists,
so that list stays true for the kernel we run on.
"""

from __future__ import annotations

import pytest
from isa_corpus import REFUSED, cases
from isa_run import programs, run_interp, run_kernel

from vxdp.bpf.asm import assemble
from vxdp.bpf.disasm import disassemble
from vxdp.bpf.kernel.prog import VerifierError

CASES = cases()


@pytest.mark.privileged
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_matches_kernel(case):
    kernel = run_kernel(case)
    interp = run_interp(case)
    assert interp.fault is None
    assert interp.action == kernel.action == case.action
    assert [hex(w) for w in interp.words()] == [hex(w) for w in kernel.words()]
    assert interp.packet == kernel.packet
    if case.expect is not None:
        assert tuple(kernel.words()[:len(case.expect)]) == case.expect


@pytest.mark.privileged
@pytest.mark.parametrize("reason,case", REFUSED, ids=[c.name for _, c in REFUSED])
def test_kernel_refuses(reason, case):
    with pytest.raises(VerifierError) as e:
        run_kernel(case)
    assert reason in e.value.log


def test_corpus_text_round_trips():
    """Every case's program prints and assembles back to the same slots (handles are placeholders)."""
    handles = {"out": 1, "args": 2, "ro": 3, "jmp": 4}
    for case in CASES:
        main, targets = programs(case, handles)
        for insns in (main, *targets):
            assert assemble(disassemble(insns)) == insns, case.name


def test_corpus_covers_every_opcode():
    """Each opcode byte the kernel accepts for XDP appears in some case (atomics by their ``imm``)."""
    seen: set[int] = set()
    atomics: set[tuple[int, int]] = set()
    for case in CASES:
        main, targets = programs(case, {"out": 1, "args": 2, "ro": 3, "jmp": 4})
        for insns in (main, *targets):
            for insn in insns:
                seen.add(insn.code)
                if insn.code & 0xE7 == 0xC3:
                    atomics.add((insn.code, insn.imm))
    alu = {cls | src | op for cls in (0x04, 0x07) for src in (0, 8) for op in range(0, 0xD0, 0x10)
           if not (op == 0x80 and src)}
    alu |= {0xD4, 0xDC, 0xD7}  # le, be, bswap
    jmp = {cls | src | op for cls in (0x05, 0x06) for src in (0, 8)
           for op in (0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0xA0, 0xB0, 0xC0, 0xD0)}
    jmp |= {0x05, 0x06, 0x85, 0x95, 0xE5}  # ja, gotol, call, exit, may_goto
    mem = {0x18} | {m | sz for sz in (0x00, 0x08, 0x10, 0x18) for m in (0x61, 0x62, 0x63)}
    mem |= {0x81 | sz for sz in (0x00, 0x08, 0x10)}  # ldsx
    missing = (alu | jmp | mem) - seen
    assert not missing, sorted(hex(c) for c in missing)
    rmw = {op | fetch for op in (0x00, 0x40, 0x50, 0xA0) for fetch in (0, 1)} | {0xE1, 0xF1}
    want = {(0xC3 | sz, imm) for sz in (0x00, 0x18) for imm in rmw}
    want |= {(0xC3 | sz, imm) for sz in (0x00, 0x08, 0x10, 0x18) for imm in (0x100, 0x110)}
    assert not want - atomics, sorted(want - atomics)
