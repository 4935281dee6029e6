"""Loading one `bad_programs` case into our verifier and into the host kernel, with the same maps."""

from __future__ import annotations

import sys
from pathlib import Path

from bad_programs import MAPS, Bad

from vxdp.bpf.asm import assemble
from vxdp.engine.kernel import KernelEngine
from vxdp.engine.verifier import verify
from vxdp.engine.verifier.errors import VerifierResult

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "isa"))
from isa_run import FUNC_BTF, func_info

OUR_HANDLES = {name: i + 1 for i, name in enumerate(MAPS)}


def ours(case: Bad) -> VerifierResult:
    insns = assemble(case.text.format(**OUR_HANDLES))
    return verify(insns, {OUR_HANDLES[n]: spec for n, spec in MAPS.items()}, func_info=case.btf)


def kernel(case: Bad) -> None:
    """Load ``case`` in the kernel; raises the kernel engine's error when it is refused."""
    engine = KernelEngine()
    try:
        handles = {name: engine.create_map(spec).handle for name, spec in MAPS.items()}
        insns = assemble(case.text.format(**handles))
        extra = {"btf": FUNC_BTF, "func_info": func_info(insns)} if case.btf else {}
        engine.load_program("bad", insns, **extra)
    finally:
        engine.close()
