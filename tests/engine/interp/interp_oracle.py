"""Running one program on both engines: the host kernel (the oracle) and the interpreter."""

from __future__ import annotations

from dataclasses import dataclass

from vxdp.bpf.isa import Insn
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.engine.interp.engine import InterpEngine, InterpRunResult


@dataclass
class BothResult:
    kernel_action: int
    kernel_packet: bytes
    interp: InterpRunResult


def run_both(insns: list[Insn], packet: bytes, engine: InterpEngine | None = None,
             kernel_insns: list[Insn] | None = None, repeat: int = 1) -> BothResult:
    """Run ``insns`` in the kernel and in the interpreter on ``packet``.

    ``kernel_insns`` lets a test give the kernel the same program with kernel map
    fds in its lddw slots where the interpreter's copy has interpreter handles.
    """
    engine = engine or InterpEngine(seed=1)
    with KernelProgram.load(kernel_insns or insns, name="interp_oracle") as kp:
        kr = kp.test_run(packet, repeat=repeat)
    ir = engine.run(engine.load_program("oracle", insns), packet, repeat=repeat)
    return BothResult(kr.retval, kr.data_out, ir)
