"""The object model: what an ELF object holds, before any engine loads it.

Like aya-obj and libbpf's ``bpf_object`` before ``load``: plain data, no file
descriptors, no syscalls. The ELF reader (`vxdp.bpf.elf`) builds it; linking
(`vxdp.bpf.link`) turns one entry program plus the subprograms it calls into
the flat instruction list an engine loads, with every map reference still named
by map, so each engine can put in its own handle (a kernel fd, an interpreter
slot, a guest handle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .isa import Insn
from .mapspec import MapSpec
from .sections import ProgType, section_prog_type


class RelocKind(Enum):
    """What a relocated ``lddw`` or ``call`` refers to."""

    MAP = "map"  # lddw src=MAP_FD: the map itself
    MAP_VALUE = "map_value"  # lddw src=MAP_VALUE: address of a global variable in a data map
    CALL = "call"  # bpf-to-bpf call to a function in .text or the same section
    FUNC_ADDR = "func_addr"  # lddw src=FUNC: address of a function (callbacks)


@dataclass(frozen=True)
class Reloc:
    """One relocation, at instruction slot ``insn`` of its function.

    For MAP and MAP_VALUE ``target`` is a map name and ``offset`` the byte offset
    into the map value. For CALL and FUNC_ADDR ``target`` is the callee's
    function name.
    """

    insn: int
    kind: RelocKind
    target: str
    offset: int = 0


@dataclass(frozen=True)
class FuncInfo:
    """``struct bpf_func_info``: the function starting at ``insn`` has BTF type ``type_id``."""

    insn: int
    type_id: int


@dataclass(frozen=True)
class LineInfo:
    """``struct bpf_line_info``: source line of the instruction at ``insn``.

    ``file`` and ``line`` are resolved from BTF strings for display; ``file_name_off``
    and ``line_off`` are what the kernel takes.
    """

    insn: int
    file_name_off: int
    line_off: int
    line: int
    col: int
    file: str = ""
    text: str = ""

    @property
    def line_col(self) -> int:
        return (self.line << 10) | (self.col & 0x3FF)


@dataclass
class Function:
    """One function of the object: a program entry point or a subprogram.

    ``insns`` are the function's own slots; ``relocs``, ``func_info`` and
    ``line_info`` count slots from the function's start.
    """

    name: str
    section: str
    insns: list[Insn]
    relocs: list[Reloc] = field(default_factory=list)
    func_info: list[FuncInfo] = field(default_factory=list)
    line_info: list[LineInfo] = field(default_factory=list)
    is_global: bool = True


@dataclass
class Program:
    """An entry point (a function in a non-``.text`` executable section)."""

    name: str
    section: str
    function: Function


@dataclass
class LinkedProgram:
    """One entry program with its callees appended, call offsets fixed, ready for an engine.

    ``map_refs`` lists the remaining MAP and MAP_VALUE relocations (slot indexes
    into ``insns``); an engine resolves them with `vxdp.bpf.link.resolve_maps`.
    """

    name: str
    section: str
    insns: list[Insn]
    map_refs: list[Reloc]
    func_info: list[FuncInfo]
    line_info: list[LineInfo]
    license: str

    @property
    def prog_type(self) -> ProgType:
        """The program type its section declares (`vxdp.bpf.sections`): XDP unless the name says otherwise."""
        return section_prog_type(self.section)


@dataclass
class BpfObject:
    """A parsed ELF object: programs by name, maps by name, BTF, license."""

    path: str
    license: str
    kern_version: int
    programs: dict[str, Program]
    functions: dict[str, Function]
    maps: dict[str, MapSpec]
    btf: object | None = None  # vxdp.bpf.btf.Btf
    btf_raw: bytes | None = None  # .BTF after datasec fixup, as the kernel takes it

    def program(self, name: str | None = None) -> Program:
        """The named program, or the first one in file order."""
        if name is None:
            if not self.programs:
                raise KeyError(f"{self.path}: no programs")
            return next(iter(self.programs.values()))
        try:
            return self.programs[name]
        except KeyError:
            raise KeyError(f"{self.path}: no program named {name!r}; have {', '.join(self.programs)}") from None
