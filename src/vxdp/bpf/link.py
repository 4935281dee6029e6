"""Linking: one entry program plus every subprogram it reaches, as one flat instruction list.

The kernel loads a program as one array of instructions in which bpf-to-bpf
calls are pc-relative (``imm = callee_start - (call_slot + 1)``) and every
callee follows the entry function. libbpf builds that array per entry program
(``bpf_object__relocate_calls`` / ``bpf_object__reloc_code``): walk the
function's relocations in order; the first call into a subprogram not yet
placed appends it at the end and walks *it* at once (depth first), then the
call's ``imm`` is set. We do the same, so our instruction order, and so
``func_info``/``line_info`` and verifier log slot numbers, match libbpf's.

Map references stay symbolic (`Reloc` with a map name and a slot index into
the final list) so each engine puts in its own handles with `resolve_maps`.
"""

from __future__ import annotations

from collections.abc import Mapping

from .isa import Insn, PseudoSrc
from .obj import BpfObject, FuncInfo, Function, LineInfo, LinkedProgram, Reloc, RelocKind

_MAX_FUNCTIONS = 256  # far above the kernel's 256 subprog limit minus one; bounds the walk


class LinkError(KeyError):
    """A program, callee or map handle that cannot be found; ``str()`` is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def link(obj: BpfObject, program_name: str) -> LinkedProgram:
    """The named entry program with its callees appended and call offsets fixed."""
    prog = obj.programs.get(program_name)
    if prog is None:
        raise LinkError(f"{obj.path}: no program named {program_name!r}; have {', '.join(obj.programs) or 'none'}")
    linker = _Linker(obj)
    linker.place(prog.function)
    linker.map_refs.sort(key=lambda r: r.insn)
    return LinkedProgram(prog.name, prog.section, linker.insns, linker.map_refs, linker.func_info,
                         linker.line_info, obj.license)


class _Linker:
    def __init__(self, obj: BpfObject):
        self.obj = obj
        self.insns: list[Insn] = []
        self.starts: dict[str, int] = {}
        self.map_refs: list[Reloc] = []
        self.func_info: list[FuncInfo] = []
        self.line_info: list[LineInfo] = []

    def place(self, fn: Function) -> int:
        """Append ``fn`` at the end, then resolve its relocations (placing callees depth first)."""
        if len(self.starts) >= _MAX_FUNCTIONS:
            raise LinkError(f"{self.obj.path}: more than {_MAX_FUNCTIONS} functions reached")
        base = len(self.insns)
        self.starts[fn.name] = base
        self.insns.extend(fn.insns)
        self.func_info.extend(FuncInfo(fi.insn + base, fi.type_id) for fi in fn.func_info)
        self.line_info.extend(
            LineInfo(li.insn + base, li.file_name_off, li.line_off, li.line, li.col, li.file, li.text)
            for li in fn.line_info
        )
        for r in sorted(fn.relocs, key=lambda r: r.insn):
            at = base + r.insn
            if r.kind in (RelocKind.MAP, RelocKind.MAP_VALUE):
                self.map_refs.append(Reloc(at, r.kind, r.target, r.offset))
                continue
            callee = self.obj.functions.get(r.target)
            if callee is None:
                raise LinkError(f"{self.obj.path}: {fn.name!r} calls {r.target!r}, which is not in the object")
            start = self.starts.get(callee.name)
            if start is None:
                start = self.place(callee)
            # Both a call and a function-address lddw carry the pc-relative slot offset.
            self.insns[at] = self.insns[at].replace(imm=start - (at + 1))
        return base


def resolve_maps(linked: LinkedProgram, handles: Mapping[str, int]) -> list[Insn]:
    """The instructions with every map reference set as ``BPF_PROG_LOAD`` expects.

    MAP: ``lddw`` src ``BPF_PSEUDO_MAP_FD`` (1), imm the handle, second slot imm 0.
    MAP_VALUE: src ``BPF_PSEUDO_MAP_VALUE`` (2), imm the handle, second slot imm
    the byte offset into the value.
    """
    insns = list(linked.insns)
    for r in linked.map_refs:
        if r.target not in handles:
            raise LinkError(f"program {linked.name!r}: no handle for map {r.target!r} "
                            f"(referenced at instruction {r.insn})")
        if r.insn + 1 >= len(insns) or not insns[r.insn].is_lddw:
            raise LinkError(f"program {linked.name!r}: map reference at {r.insn} is not an lddw")
        handle = handles[r.target]
        if r.kind == RelocKind.MAP:
            insns[r.insn] = insns[r.insn].replace(src=PseudoSrc.MAP_FD, imm=handle)
            insns[r.insn + 1] = insns[r.insn + 1].replace(imm=0)
        elif r.kind == RelocKind.MAP_VALUE:
            insns[r.insn] = insns[r.insn].replace(src=PseudoSrc.MAP_VALUE, imm=handle)
            insns[r.insn + 1] = insns[r.insn + 1].replace(imm=r.offset)
        else:
            raise LinkError(f"program {linked.name!r}: unexpected {r.kind.name} relocation in map_refs")
    return insns
