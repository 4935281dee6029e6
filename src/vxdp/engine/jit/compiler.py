"""LLVM's lifetime in one place: the native target, the optimisation pipeline, one MCJIT engine per program.

LLVM is initialised once per process; every program then gets its own module, target
machine (``-O2``-like, for the CPU we run on, so the code uses what this CPU has) and MCJIT
execution engine, which owns the machine code (and the target machine) for as long as the
program is loaded. `Compiled` keeps the engine and the entry addresses
together so that nothing frees code a prog_array slot still points to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import llvmlite.binding as llvm

OPT_LEVEL = 2  # -O2: the loops of helpers vectorise, compile time stays in milliseconds

_initialised = False


def target_machine() -> llvm.TargetMachine:
    """A new target machine for the host (LLVM's native target initialised on first use). One per
    program: an MCJIT engine takes ownership of the target machine it is given and frees it with itself."""
    global _initialised
    if not _initialised:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        _initialised = True
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                        opt=OPT_LEVEL, codemodel="jitdefault")


class CompileError(RuntimeError):
    """LLVM refused the module the code generator made: a bug in the JIT, never in the program."""


@dataclass
class Compiled:
    """A program's machine code: the engine that owns it and the addresses of its exported functions."""

    engine: llvm.ExecutionEngine
    addresses: dict[str, int]
    compile_ns: int
    ir: str


def compile_module(ir_text: str, exports: list[str]) -> Compiled:
    """Parse, verify, optimise and JIT ``ir_text``; return the native addresses of ``exports``."""
    start = time.perf_counter_ns()
    tm = target_machine()
    try:
        mod = llvm.parse_assembly(ir_text)
        mod.verify()
    except RuntimeError as e:
        raise CompileError(f"LLVM refused the generated IR: {e}") from e
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL))
    mpm = pb.getModulePassManager()
    mpm.run(mod, pb)
    mpm.close()
    pb.close()
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    engine.run_static_constructors()
    addresses = {name: engine.get_function_address(name) for name in exports}
    missing = [n for n, a in addresses.items() if not a]
    if missing:
        raise CompileError(f"no native code for {', '.join(missing)}")
    return Compiled(engine, addresses, time.perf_counter_ns() - start, ir_text)
