"""What the code generator needs to know about each instruction, learnt from our verifier's own walk.

The kernel's verifier leaves notes per instruction (``insn_aux_data``) that its JIT and its
``convert_ctx_access`` read: which pointer type a load goes through, which map a call
acts on. Ours does not keep them, so `ObservingVerifier` is the same verifier (every
decision is its parent's) that also writes down, for every memory instruction, the kinds
of base pointer it was walked with (and whether their offsets were constants), and for
every helper call the maps in ``r1``. From those notes the code generator rewrites ctx
loads, inlines array lookups, and puts a run-time check on exactly the accesses whose
address the verifier bounded only by a range (or saw with more than one pointer type).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from ...bpf.helpers import Helper
from ...bpf.isa import CALL, Insn, PseudoCall
from ...bpf.mapspec import MapSpec
from ..verifier import constant_image
from ..verifier.check import DEFAULT_BUDGET, Verifier
from ..verifier.errors import VerifierResult
from ..verifier.state import Reg, RegType, State

PACKET_TYPES = frozenset({RegType.PACKET, RegType.PACKET_META})


@dataclass(frozen=True)
class Base:
    """One pointer a memory instruction was walked with: its type, its map, whether its address is exact."""

    type: RegType
    map: int  # the map handle of a map value, else 0
    exact: bool  # constant variable offset: the verifier knows the very bytes touched


@dataclass
class Notes:
    """Per instruction: the bases of memory accesses, the map handles in r1 (and the callback of
    ``bpf_loop``) at helper calls; and the verifier's own result."""

    result: VerifierResult
    bases: dict[int, set[Base]] = field(default_factory=lambda: defaultdict(set))
    call_maps: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    visited: set[int] = field(default_factory=set)

    def is_ctx(self, pc: int) -> bool:
        """A load through the context: `codegen` rewrites it to the native field."""
        kinds = {b.type for b in self.bases.get(pc, ())}
        return RegType.CTX in kinds

    def needs_check(self, pc: int) -> bool:
        """The address is not exactly known: it gets a run-time range check."""
        bases = self.bases.get(pc, set())
        if not bases:
            return True  # never walked by the verifier: check it rather than trust it
        kinds = {RegType.PACKET_META if b.type in PACKET_TYPES else b.type for b in bases}
        if len(kinds) > 1:
            return True
        # packet accesses are proven against data_end whatever their variable part
        return not all(b.exact or b.type in PACKET_TYPES for b in bases)


class ObservingVerifier(Verifier):
    """`Verifier`, unchanged in what it accepts, taking `Notes` on the way."""

    def __init__(self, insns: list[Insn], maps: dict[int, MapSpec], **kw):
        super().__init__(insns, maps, **kw)
        self.notes = Notes(VerifierResult(0, 0))
        self._pc = 0

    def _step(self, pc: int, st: State):
        self._pc = pc
        self.notes.visited.add(pc)
        insn = self.insns[pc]
        if insn.code == CALL and insn.src == PseudoCall.HELPER:
            r1 = st.regs[1]
            if r1.type is RegType.MAP_PTR:
                self.notes.call_maps[pc].add(r1.map)
            if insn.imm == Helper.loop:
                r2 = st.regs[2]
                if r2.type is RegType.FUNC:
                    self.notes.call_maps[pc].add(-1 - r2.map)  # callbacks noted as negative numbers
        return super()._step(pc, st)

    def _note(self, base: Reg) -> None:
        exact = base.scalar.is_const
        self.notes.bases[self._pc].add(Base(base.type, base.map if base.type is RegType.MAP_VALUE else 0, exact))

    def _load(self, st, base, regno, off, size, signed):
        self._note(base)
        return super()._load(st, base, regno, off, size, signed)

    def _store(self, st, base, regno, off, size, value):
        self._note(base)
        return super()._store(st, base, regno, off, size, value)


def observe(insns: list[Insn], maps: Mapping[int, object], *, func_info: bool = False,
            budget: int = DEFAULT_BUDGET) -> Notes:
    """Verify ``insns`` (raises `VerifierRejected` as `vxdp.engine.verifier.verify` does) and return the notes.
    ``maps``: handle -> `MapSpec` or engine map, as `verify` takes them (a frozen read-only array's bytes
    are constants then)."""
    specs = {h: constant_image(m) for h, m in maps.items()}
    v = ObservingVerifier(insns, specs, func_info=func_info, budget=budget)
    v.notes.result = v.run()
    return v.notes
