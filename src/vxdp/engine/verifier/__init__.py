"""Our own eBPF verifier for privileged XDP programs: `verify` accepts a program or raises
`vxdp.engine.verifier.errors.VerifierRejected`.

Abstract interpretation in the spirit of the kernel's verifier: `check` walks
every path, `state` holds what each register and stack slot may be, `scalar`,
`tnum` and `branch` track numbers, `access` and `calls` hold the memory and
helper rules, `cfg` checks the program's shape first.
"""

from __future__ import annotations

from collections.abc import Mapping

from ...bpf.isa import Insn
from ...bpf.mapspec import MapSpec
from .check import DEFAULT_BUDGET, Verifier
from .errors import VerifierResult


def verify(insns: list[Insn], maps: Mapping[int, object], *, prog_type: str = "xdp", privileged: bool = True,
           func_info: bool = False, budget: int = DEFAULT_BUDGET) -> VerifierResult:
    """Verify ``insns`` as an engine's ``load_program`` receives them.

    ``maps`` maps each handle the ``lddw`` immediates carry to its `MapSpec` (or to an engine map,
    whose ``.spec`` is used). ``privileged`` follows the kernel's rules for root (reads of
    never-written stack and returning a pointer are allowed); ``False`` refuses both.
    ``func_info``: the program came with BTF function info (the kernel allows ``bpf_tail_call``
    in a subprogram only then).
    """
    if prog_type != "xdp":
        raise ValueError(f"only XDP programs are verified, not {prog_type!r}")
    specs = {h: m if isinstance(m, MapSpec) else m.spec for h, m in maps.items()}  # type: ignore[attr-defined]
    return Verifier(insns, specs, privileged=privileged, func_info=func_info, budget=budget).run()

