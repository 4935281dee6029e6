"""Our own eBPF verifier for privileged XDP programs: `verify` accepts a program or raises
`vxdp.engine.verifier.errors.VerifierRejected`.

Abstract interpretation in the spirit of the kernel's verifier: `check` walks
every path, `state` holds what each register and stack slot may be, `scalar`,
`tnum` and `branch` track numbers, `access` and `calls` hold the memory and
helper rules, `cfg` checks the program's shape first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ...bpf.isa import Insn
from ...bpf.mapapi import freezes_after_init
from ...bpf.mapspec import MapFlag, MapSpec, MapType
from .check import DEFAULT_BUDGET, Verifier
from .errors import VerifierResult


def constant_image(m: object) -> MapSpec:
    """The map's spec as the verifier reads it: with ``data`` the bytes of its one element when they are
    constants to programs (a frozen ``BPF_F_RDONLY_PROG`` array of one element, as the kernel's
    ``bpf_map_direct_read`` requires), else with no ``data``. ``m`` is a `MapSpec` (frozen if a loader
    freezes it after its initial image: `freezes_after_init`) or an engine's map (its ``frozen`` flag
    and its contents now: a guest that filled and froze its ``.rodata`` over the wire)."""
    spec: MapSpec = m if isinstance(m, MapSpec) else m.spec  # type: ignore[attr-defined]
    frozen = freezes_after_init(spec) if isinstance(m, MapSpec) else bool(getattr(m, "frozen", False))
    if not (frozen and spec.flags & MapFlag.RDONLY_PROG and spec.type == MapType.ARRAY and spec.max_entries == 1):
        return replace(spec, data=None) if spec.data is not None else spec
    if isinstance(m, MapSpec):
        return spec
    value = m.lookup(bytes(spec.key_size))  # type: ignore[attr-defined]
    return replace(spec, data=value)


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
    specs = {h: constant_image(m) for h, m in maps.items()}
    return Verifier(insns, specs, privileged=privileged, func_info=func_info, budget=budget).run()

