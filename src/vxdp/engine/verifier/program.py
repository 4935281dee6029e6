"""Verifying one program of a parsed object, without any engine: maps get stand-in handles 1, 2, ...

What ``load_object`` hands an engine is the linked program with each map's
handle in its ``lddw``; here the handles are just the maps' positions, so an
object can be checked before (or instead of) creating anything.
"""

from __future__ import annotations

from ...bpf.link import link, resolve_maps
from ...bpf.obj import BpfObject
from .check import Verifier
from .errors import VerifierResult


def verify_program(obj: BpfObject, name: str | None = None, **kw) -> VerifierResult:
    """Verify program ``name`` (the object's only or first program by default) of ``obj``."""
    prog = obj.program(name)
    handles = {map_name: i + 1 for i, map_name in enumerate(obj.maps)}
    linked = link(obj, prog.name)
    insns = resolve_maps(linked, handles)
    specs = {handles[n]: spec for n, spec in obj.maps.items()}
    kw.setdefault("func_info", bool(linked.func_info))
    return Verifier(insns, specs, **kw).run()
