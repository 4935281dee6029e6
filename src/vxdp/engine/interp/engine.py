"""`InterpEngine`: the reference engine, the `Engine` interface over the interpreter.

Map and program handles are small integers from 1, and a program's id (what a
user-space lookup of a prog_array slot returns) is its handle. A run mirrors
BPF_PROG_TEST_RUN for XDP: the packet goes into a fresh frame, ``repeat`` runs
share that frame (as the kernel's do: an ``adjust_head`` in one run is seen by
the next), and the result carries the last run's action and the bytes from
``data_meta`` to ``data_end``.

A run never raises for anything the program does: a fault ends it with
XDP_ABORTED and the reason in ``result.fault`` and ``engine.last_fault``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from ...bpf.isa import Insn, XdpAction
from ...bpf.mapapi import Map, freezes_after_init
from ...bpf.mapspec import MapSpec, possible_cpus
from ..base import Engine, ProgramInfo, RunResult, XdpMd, program_tag
from ..verifier import verify
from .helpers import HELPERS
from .machine import InterpLoadError, Machine, Program, compile_program
from .maps import InterpMap, make_map
from .memory import Memory
from .xdp import CTX_PTR, XdpBuff

DEFAULT_BUDGET = 1_000_000


class InterpError(ValueError):
    """A caller error at the engine boundary: unknown program handle, map from another engine."""


@dataclass
class InterpRunResult(RunResult):
    """A `RunResult` that also says why a run was aborted by the interpreter (``None`` if it was not)."""

    fault: str | None = None


class InterpEngine(Engine):
    """Runs programs in the pure-Python interpreter.

    ``cpu`` is the CPU a program believes it runs on (``bpf_get_smp_processor_id``
    and the per-CPU slot it sees); ``budget`` bounds the instructions of one run;
    ``seed`` makes ``bpf_get_prandom_u32`` reproducible. ``verify``: every program goes through our
    verifier first (`vxdp.engine.verifier`; refusals raise `VerifierRejected`), as a host running
    guest programs on it wants; off by default, so the reference runs whatever it is given and faults
    where the program goes wrong.
    """

    name = "interp"

    def __init__(self, *, cpu: int = 0, budget: int = DEFAULT_BUDGET, ncpus: int | None = None,
                 seed: int | None = None, verify: bool = False):
        self.verify = verify
        self.ncpus = ncpus or possible_cpus()
        self.cpu = cpu
        self.budget = budget
        self.maps: dict[int, InterpMap] = {}
        self.programs: dict[int, Program] = {}
        self.mem = Memory()
        self.machine = Machine(self.mem, self.maps, self.programs, HELPERS)
        self.machine.rng = random.Random(seed)
        self.last_fault: str | None = None
        self._next_map = 1
        self._next_prog = 1

    def create_map(self, spec: MapSpec) -> InterpMap:
        m = make_map(spec, self._next_map, self.programs, self.ncpus)
        m.frozen = freezes_after_init(spec)  # as KernelMap.create (and libbpf) do
        self.maps[m.handle] = m
        self._next_map += 1
        return m

    def load_program(self, name: str, insns: list[Insn], *, license: str = "GPL", **extra: object) -> int:
        """Decode ``insns`` once into threaded code. Raises `InterpLoadError` for broken programs (and
        `VerifierRejected` for unsafe ones, with ``verify``)."""
        if self.verify:
            verify(list(insns), self.maps, func_info=bool(extra.get("func_info")))
        prog = Program(name, self._next_prog, list(insns))
        compile_program(prog, self.machine)
        self.programs[prog.handle] = prog
        self._next_prog += 1
        return prog.handle

    def run(self, prog: int, packet: bytes, *, repeat: int = 1, ctx: XdpMd | None = None) -> InterpRunResult:
        program = self.programs.get(prog)
        if program is None:
            raise InterpError(f"no program with handle {prog}")
        ctx = ctx or XdpMd()
        machine, mem = self.machine, self.mem
        machine.xdp = XdpBuff(mem, bytes(packet), ctx.ingress_ifindex, ctx.rx_queue_index, ctx.meta_len,
                              ctx.egress_ifindex)
        machine.cpu = self.cpu
        for m in self.maps.values():
            m.cpu = self.cpu
        action, fault = 0, None
        runs = max(1, repeat)
        start = time.perf_counter_ns()
        for _ in range(runs):
            mem.reset_values()
            r0, fault = machine.execute(program, CTX_PTR, self.budget)
            action = int(XdpAction.ABORTED) if fault else r0 & 0xFFFFFFFF
            if fault:
                break
        elapsed = time.perf_counter_ns() - start
        self.last_fault = fault
        xdp = machine.xdp
        return InterpRunResult(action, xdp.output(), elapsed / runs, xdp.data - xdp.data_meta, fault)

    def freeze(self, m: Map) -> None:
        if not isinstance(m, InterpMap) or self.maps.get(m.handle) is not m:
            raise InterpError(f"map {getattr(m, 'spec', m)!r} was not made by this engine")
        m.frozen = True

    def program_info(self, prog: int) -> ProgramInfo:
        p = self.programs[prog]
        return ProgramInfo(p.handle, p.name, program_tag(p.insns))

    def free_map(self, m: Map) -> None:
        if isinstance(m, InterpMap) and self.maps.get(m.handle) is m:
            del self.maps[m.handle]

    def free_program(self, prog: int) -> None:
        self.programs.pop(prog, None)

    def close(self) -> None:
        self.maps.clear()
        self.programs.clear()


__all__ = ["InterpEngine", "InterpError", "InterpLoadError", "InterpRunResult"]
