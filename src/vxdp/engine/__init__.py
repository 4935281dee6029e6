"""Execution engines behind one interface (`base.Engine`): ``kernel``, ``interp``, ``jit``.

`make_engine` imports an engine only when asked for, so a tool that never runs
the kernel engine never needs bpf(2).
"""

from __future__ import annotations

from .base import Engine

ENGINES = ("interp", "jit", "kernel")
IN_PROCESS = tuple(e for e in ENGINES if e != "kernel")
"""The engines that run programs in this process, not in the host kernel: what a guest's native XDP
runs on, and what a host runs offloaded programs on when no guest code may enter its kernel."""
DEFAULT_IN_PROCESS = "jit"


def make_engine(name: str) -> Engine:
    """A fresh engine by name; ValueError names the choices for an unknown one."""
    if name == "kernel":
        from .kernel import KernelEngine

        return KernelEngine()
    if name == "interp":
        from .interp.engine import InterpEngine

        return InterpEngine()
    if name == "jit":
        from .jit.engine import JitEngine

        return JitEngine()
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
