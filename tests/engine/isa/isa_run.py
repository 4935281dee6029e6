"""Running one corpus case on an engine: the host kernel (the oracle), the interpreter, any other.

A case's text names its maps by placeholder (``{out}``, ``{args}``, ``{ro}``, ``{jmp}``).
Each engine creates the same maps through the `Engine` interface and the text is
assembled once per engine with that engine's handles in the placeholders (kernel fds,
interpreter slots), so the programs differ in nothing else; another engine (the JIT)
runs the corpus through `run_case` the same way. After one test run the ``out`` map's
value is read back: the bytes the program stored there (every output register, all 64
bits) are what the engines must agree on, together with the XDP action and the packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from isa_corpus import PACKET, Case

from vxdp.bpf.asm import assemble
from vxdp.bpf.isa import Insn, PseudoSrc
from vxdp.bpf.mapspec import MapFlag, MapOrigin, MapSpec, MapType
from vxdp.bpf.obj import FuncInfo
from vxdp.engine.base import Engine
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.kernel import KernelEngine

KEY0 = bytes(4)

# The least BTF that gives func_info: [1] int, [2] int(void), [3] FUNC "main" (global), [4] FUNC "sub"
# (static). Some things the kernel allows only with it (bpf_tail_call inside a subprogram).
_STRINGS = b"\0int\0main\0sub\0"
_TYPES = (struct.pack("<IIII", 1, 1 << 24, 4, (1 << 24) | 32)
          + struct.pack("<III", 0, 13 << 24, 1)
          + struct.pack("<III", 5, (12 << 24) | 1, 2)
          + struct.pack("<III", 10, 12 << 24, 2))
FUNC_BTF = (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(_TYPES), len(_TYPES), len(_STRINGS))
            + _TYPES + _STRINGS)


def func_info(insns: list[Insn]) -> list[FuncInfo]:
    """func_info for a program: the main function at 0, and a static one at every bpf-to-bpf call's
    target and every function address (``lddw`` of a callback)."""
    starts = sorted({pc + 1 + insn.imm for pc, insn in enumerate(insns)
                     if insn.is_subprog_call or insn.is_lddw and insn.src == PseudoSrc.FUNC})
    return [FuncInfo(0, 3), *(FuncInfo(start, 4) for start in starts)]


@dataclass(frozen=True)
class Outcome:
    """What a run left behind: the XDP action, the ``out`` map's value and the packet."""

    action: int
    out: bytes
    packet: bytes
    fault: str | None = None

    def words(self) -> list[int]:
        return [int.from_bytes(self.out[i:i + 8], "little") for i in range(0, len(self.out), 8)]


def map_specs(case: Case) -> dict[str, MapSpec]:
    """The maps a case's text refers to, by placeholder name."""
    specs = {
        "out": MapSpec("out", MapType.ARRAY, 4, 8 * case.out_words, 1),
        "args": MapSpec("args", MapType.ARRAY, 4, max(8, len(case.args_bytes)), 1, data=case.args_bytes),
    }
    if case.ro is not None:
        specs["ro"] = MapSpec("ro", MapType.ARRAY, 4, len(case.ro), 1, flags=MapFlag.RDONLY_PROG,
                              origin=MapOrigin.RODATA, data=case.ro)
    if case.tail_progs:
        specs["jmp"] = MapSpec("jmp", MapType.PROG_ARRAY, 4, 4, len(case.tail_progs) + 1)
    return specs


def programs(case: Case, handles: dict[str, int]) -> tuple[list[Insn], list[list[Insn]]]:
    """The main program and the tail-call targets, assembled with ``handles`` in the placeholders."""
    return (assemble(case.text().format(**handles)),
            [assemble(t.format(**handles)) for t in case.tail_progs])


def run_case(engine: Engine, case: Case) -> Outcome:
    """Make the case's maps on ``engine``, load its programs (tail-call targets into ``{jmp}``),
    run the main one once on `PACKET` and read the ``out`` map back. Any engine will do."""
    maps = {name: engine.create_map(spec) for name, spec in map_specs(case).items()}
    main, targets = programs(case, {name: m.handle for name, m in maps.items()})
    for i, insns in enumerate(targets):
        h = engine.load_program(f"isa_t{i}", insns)
        maps["jmp"].update(i.to_bytes(4, "little"), h.to_bytes(4, "little"))
    extra = {"btf": FUNC_BTF, "func_info": func_info(main)} if case.btf else {}
    r = engine.run(engine.load_program("isa_case", main, **extra), PACKET)
    return Outcome(r.action, maps["out"].lookup(KEY0), r.packet, getattr(r, "fault", None))


def run_kernel(case: Case) -> Outcome:
    engine = KernelEngine()
    try:
        return run_case(engine, case)
    finally:
        engine.close()


def run_interp(case: Case) -> Outcome:
    engine = InterpEngine(seed=1)
    try:
        return run_case(engine, case)
    finally:
        engine.close()
