"""Loading a whole object into an engine, the way libbpf's ``bpf_object__load`` does.

A program's type comes from its section (``SEC("tc")`` is SCHED_CLS, see
`vxdp.bpf.sections`): an engine that runs only XDP refuses any other type by
name before anything is created; the offload engine passes it on to the device,
whose policy refuses it (rule ``prog_type``).

The steps run in a straight line, once: create every map (an engine's
``create_map`` writes a global-data map's initial bytes and freezes
``.rodata``, as the spec asks), link and resolve each
program against the engine's map handles, load the programs, and last fill
each prog_array from the slots its BTF ``.values`` named. Written once against
the `Engine` primitives, so the kernel, the interpreter and the JIT load an
object identically and differ only in what a handle is.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

from ..bpf.link import link, resolve_maps
from ..bpf.mapapi import Map
from ..bpf.obj import BpfObject
from ..bpf.sections import prog_type_name, section_prog_type
from .base import Engine, RunResult, XdpMd

_U32 = struct.Struct("<I")


class LoadError(Exception):
    """The object cannot be loaded into this engine; the message names the map or program."""


@dataclass
class LoadedObject:
    """An object's maps and programs as one engine holds them."""

    obj: BpfObject
    engine: Engine
    maps: dict[str, Map] = field(default_factory=dict)
    programs: dict[str, int] = field(default_factory=dict)  # name -> engine handle

    def program_handle(self, name: str | None = None) -> int:
        return self.programs[self.obj.program(name).name]

    def run(
        self, packet: bytes, *, prog: str | None = None, repeat: int = 1, ctx: XdpMd | None = None
    ) -> RunResult:
        return self.engine.run(self.program_handle(prog), packet, repeat=repeat, ctx=ctx)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_object(engine: Engine, obj: BpfObject, programs: Iterable[str] | None = None) -> LoadedObject:
    """Create ``obj``'s maps in ``engine`` and load its programs (all, or those named).

    On any failure everything made so far is released before the error propagates.
    """
    names = list(obj.programs) if programs is None else list(programs)
    _check_prog_types(engine, obj, names)
    loaded = LoadedObject(obj, engine)
    try:
        _create_maps(loaded)
        handles = {name: m.handle for name, m in loaded.maps.items()}
        for name in names:
            linked = link(obj, name)
            insns = resolve_maps(linked, handles)
            loaded.programs[name] = engine.load_program(
                name,
                insns,
                license=linked.license,
                btf=obj.btf_raw,
                func_info=linked.func_info,
                line_info=linked.line_info,
                prog_type=int(linked.prog_type),
                section=linked.section,
            )
        _fill_prog_arrays(loaded)
    except BaseException:
        engine.close()
        raise
    return loaded


def _check_prog_types(engine: Engine, obj: BpfObject, names: list[str]) -> None:
    accepted = getattr(engine, "prog_types", None)
    if accepted is None:
        return
    for name in names:
        prog = obj.programs[name]
        prog_type = section_prog_type(prog.section)
        if prog_type not in accepted:
            raise LoadError(f'{obj.path}: program {name!r} in section "{prog.section}" is a '
                            f"{prog_type_name(prog_type)} program; the {engine.name} engine runs XDP programs "
                            f"only (sections xdp, xdp.frags, xdp/...)")


def _create_maps(loaded: LoadedObject) -> None:
    for name, spec in loaded.obj.maps.items():
        loaded.maps[name] = loaded.engine.create_map(spec)


def _fill_prog_arrays(loaded: LoadedObject) -> None:
    for name, spec in loaded.obj.maps.items():
        for slot, prog_name in sorted(spec.prog_init.items()):
            if prog_name not in loaded.programs:
                raise LoadError(f"map {name}: slot {slot} names program {prog_name!r}, which is not loaded")
            loaded.maps[name].update(_U32.pack(slot), _U32.pack(loaded.programs[prog_name]))
