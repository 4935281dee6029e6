"""The JIT against the kernel, one ISA corpus case at a time (`isa_corpus`, run by `isa_run.run_case`).

Each case runs once under BPF_PROG_TEST_RUN in the host kernel and once as native code
from the JIT; the XDP action, every output register with all 64 bits (what the program
stored in its ``out`` map) and the packet must be equal, and the kernel's values must be
the ones a case states by hand.
"""

from __future__ import annotations

import pytest
from isa_corpus import cases
from isa_run import run_case, run_kernel

from vxdp.engine.jit.engine import JitEngine

CASES = cases()


def run_jit(case):
    engine = JitEngine(seed=1)
    try:
        return run_case(engine, case), engine.faults
    finally:
        engine.close()


@pytest.mark.privileged
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_matches_kernel(case):
    kernel = run_kernel(case)
    jit, faults = run_jit(case)
    assert faults == 0
    assert jit.action == kernel.action == case.action
    assert [hex(w) for w in jit.words()] == [hex(w) for w in kernel.words()]
    assert jit.packet == kernel.packet
