"""The ELF object loader: clang's ``-target bpf`` output to a `BpfObject`, without syscalls.

Follows libbpf's ``bpf_object__open`` (``bpf_object__elf_collect``,
``bpf_object__add_programs``, ``bpf_program__record_reloc``):

* Every ``STT_FUNC`` symbol of an executable section is a function. In ``.text``
  they are subprograms; elsewhere a global one is a program entry (several may
  share a section) and a static one a subprogram of that section (libbpf
  refuses those; we allow them, callable only from their own section).
* Relocations in ``.rel<section>`` patch ``lddw`` and ``call`` slots:
  - a symbol in ``maps``/``.maps`` -> MAP (the map at that symbol's offset);
  - a symbol in a global-data section -> MAP_VALUE, offset ``st_value + imm``:
    a global variable's symbol carries the offset in ``st_value`` (imm 0), a
    section symbol for a static variable carries it in the ``imm`` clang wrote;
  - a ``call`` (src 1) -> CALL to the function at section slot
    ``st_value / 8 + imm + 1`` (a global callee: its own symbol, imm -1; a
    static one: the section symbol, imm the offset from the call);
  - an ``lddw`` against a function (a callback) -> FUNC_ADDR, byte offset
    ``st_value + imm``; clang leaves src 0, we mark it ``BPF_PSEUDO_FUNC`` as libbpf does.
  A ``call`` src 1 with *no* relocation targets its own section at
  ``slot + imm + 1``; we record it as a CALL too, so linking needs only relocs.
* ``.BTF`` is parsed after `fixup_datasec`, so ``.maps`` offsets are real, and
  ``BpfObject.btf_raw`` is the fixed-up section the kernel accepts. ``.BTF.ext``
  records are split per function, in slots from the function's start.

Every failure is an `ObjectError` naming the object, section and offset.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from .btf import Btf, BtfError, fixup_datasec, parse_btf
from .btf_ext import BtfExt, parse_btf_ext
from .elf_maps import (
    MapIndex,
    collect_btf_maps,
    collect_data_map,
    collect_legacy_maps,
    collect_prog_array_inits,
    data_origin,
)
from .elf_reader import (
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_PROGBITS,
    STB_LOCAL,
    STT_FUNC,
    STT_SECTION,
    ElfFile,
    ObjectError,
    Section,
)
from .isa import INSN_SIZE, PseudoCall, PseudoSrc, decode
from .obj import BpfObject, FuncInfo, Function, LineInfo, Program, Reloc, RelocKind

__all__ = ["ObjectError", "load_object", "parse_object"]


def load_object(path: str | os.PathLike | bytes, name: str | None = None) -> BpfObject:
    """Read an object file (or take its bytes) and parse it."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        return parse_object(bytes(path), name or "<bytes>")
    with open(path, "rb") as f:
        data = f.read()
    return parse_object(data, name or os.fspath(path))


def parse_object(data: bytes, name: str) -> BpfObject:
    """Parse the bytes of a BPF ELF object; ``name`` is used in messages and as ``BpfObject.path``."""
    elf = ElfFile(data, os.path.basename(name) if name else "<bytes>")
    return _Loader(elf, name).load()


class _Loader:
    def __init__(self, elf: ElfFile, path: str):
        self.elf = elf
        self.path = path
        self.functions: dict[str, Function] = {}
        self.programs: dict[str, Program] = {}
        self.starts: dict[int, dict[int, Function]] = {}  # shndx -> {start slot: function}
        self.spans: dict[int, list[tuple[int, int, Function]]] = {}  # shndx -> [(start, end, fn)]
        self.index = MapIndex()
        self.btf: Btf | None = None
        self.btf_raw: bytes | None = None
        self.ext = BtfExt()

    def load(self) -> BpfObject:
        elf = self.elf
        license = self._license()
        version = self._version()
        self._btf()
        for sec in elf.sections:
            if sec.is_exec and sec.size:
                self._functions(sec)
        for sec in elf.sections:
            with self._btf_context(sec):
                if sec.name == "maps" and sec.type == SHT_PROGBITS:
                    collect_legacy_maps(elf, sec, self.index)
                elif sec.name == ".maps" and sec.type == SHT_PROGBITS:
                    collect_btf_maps(elf, sec, self.btf, self.index)
                elif (origin := data_origin(sec)) is not None:
                    collect_data_map(elf, sec, origin, self.btf, self.index)
        for relsec, target in elf.relocation_sections():
            if target.is_exec:
                self._relocations(relsec, target)
            elif target.name == ".maps":
                with self._btf_context(relsec):
                    collect_prog_array_inits(elf, relsec, target, self.btf, self.index, set(self.programs))
        for sec in elf.sections:
            if sec.is_exec and sec.size:
                self._implicit_calls(sec)
        self._ext_info()
        for fn in self.functions.values():
            fn.relocs.sort(key=lambda r: r.insn)
        return BpfObject(self.path, license, version, self.programs, self.functions, self.index.maps,
                         btf=self.btf, btf_raw=self.btf_raw)

    @contextmanager
    def _btf_context(self, sec: Section) -> Iterator[None]:
        """BTF that parsed but does not make sense (a bad type id, a size loop) as an ObjectError."""
        try:
            yield
        except BtfError as e:
            raise self.elf.error(sec, f"bad BTF: {e}") from None

    # -- small sections ------------------------------------------------------------------

    def _license(self) -> str:
        sec = self.elf.by_name.get("license")
        if sec is None:
            return ""
        return sec.data.split(b"\0", 1)[0].decode("ascii", "replace")

    def _version(self) -> int:
        sec = self.elf.by_name.get("version")
        if sec is None:
            return 0
        if len(sec.data) != 4:
            raise self.elf.error(sec, f"size {len(sec.data)}, expected 4")
        return struct.unpack("<I", sec.data)[0]

    def _btf(self) -> None:
        sec = self.elf.by_name.get(".BTF")
        if sec is None:
            return
        try:
            raw_btf = parse_btf(sec.data)
            sizes = {s.name: s.size for s in self.elf.sections if s.name}
            offsets = {}
            for sym in self.elf.symbols:
                owner = self.elf.section(sym.shndx) if sym.shndx < SHN_LORESERVE else None
                if owner is not None and sym.type != STT_SECTION and sym.name:
                    offsets.setdefault((owner.name, sym.name), sym.value)
            self.btf_raw = fixup_datasec(raw_btf, sizes, offsets)
            self.btf = parse_btf(self.btf_raw)
        except BtfError as e:
            raise self.elf.error(sec, str(e)) from None
        ext_sec = self.elf.by_name.get(".BTF.ext")
        if ext_sec is not None:
            try:
                self.ext = parse_btf_ext(ext_sec.data, self.btf)
            except BtfError as e:
                raise self.elf.error(ext_sec, str(e)) from None

    # -- functions -----------------------------------------------------------------------

    def _functions(self, sec: Section) -> None:
        elf = self.elf
        if len(sec.data) % INSN_SIZE:
            raise elf.error(sec, f"size {len(sec.data)} is not a whole number of instructions")
        insns = decode(sec.data)
        syms = sorted((s for s in elf.symbols if s.shndx == sec.index and s.type == STT_FUNC),
                      key=lambda s: s.value)
        starts, spans = self.starts.setdefault(sec.index, {}), self.spans.setdefault(sec.index, [])
        for sym in syms:
            if sym.value % INSN_SIZE or sym.size % INSN_SIZE or sym.size == 0:
                raise elf.error(sec, f"function {sym.name!r}: offset {sym.value} / size {sym.size} not "
                                     f"whole instructions", sym.value)
            if sym.value + sym.size > len(sec.data):
                raise elf.error(sec, f"function {sym.name!r} crosses the section end", sym.value)
            if not sym.name or sym.name in self.functions:
                raise elf.error(sec, f"function name {sym.name!r} empty or used twice", sym.value)
            start, end = sym.value // INSN_SIZE, (sym.value + sym.size) // INSN_SIZE
            if spans and start < spans[-1][1]:
                raise elf.error(sec, f"function {sym.name!r} overlaps {spans[-1][2].name!r}", sym.value)
            fn = Function(sym.name, sec.name, insns[start:end], is_global=sym.bind != STB_LOCAL)
            self.functions[fn.name] = fn
            starts[start] = fn
            spans.append((start, end, fn))
            if sec.name != ".text" and sym.bind != STB_LOCAL:
                self.programs[fn.name] = Program(fn.name, sec.name, fn)

    def _owner(self, shndx: int, slot: int) -> tuple[Function, int] | None:
        for start, end, fn in self.spans.get(shndx, []):
            if start <= slot < end:
                return fn, slot - start
        return None

    # -- relocations ---------------------------------------------------------------------

    def _relocations(self, relsec: Section, target: Section) -> None:
        elf = self.elf
        for rel in elf.rels(relsec):
            where = f"{elf.name}: section {relsec.name}, relocation {rel.index} at offset 0x{rel.offset:x}"
            if rel.offset % INSN_SIZE or rel.offset >= target.size:
                raise ObjectError(f"{where}: not an instruction of {target.name} ({target.size} bytes)")
            slot = rel.offset // INSN_SIZE
            owner = self._owner(target.index, slot)
            if owner is None:
                raise ObjectError(f"{where}: instruction {slot} belongs to no function")
            fn, local = owner
            insn = fn.insns[local]
            sym = elf.symbols[rel.sym]
            label = sym.name or f"symbol {rel.sym}"
            if sym.shndx == SHN_UNDEF:
                raise ObjectError(f"{where}: {label!r} is an extern (kfunc, __ksym or __kconfig), not supported")
            if sym.shndx >= SHN_LORESERVE or elf.section(sym.shndx) is None:
                raise ObjectError(f"{where}: {label!r} is in special section 0x{sym.shndx:x}; "
                                  f"uninitialised global variable?")
            sym_sec = elf.section(sym.shndx)
            if insn.is_call:
                if insn.src != PseudoCall.CALL:
                    raise ObjectError(f"{where}: relocation on a call with src {insn.src}, not a bpf-to-bpf call")
                if sym.value % INSN_SIZE:
                    raise ObjectError(f"{where}: call target {label!r} at unaligned offset {sym.value}")
                callee = self._callee(where, sym_sec, sym.value // INSN_SIZE + insn.imm + 1)
                fn.relocs.append(Reloc(local, RelocKind.CALL, callee.name))
                continue
            if not insn.is_lddw:
                raise ObjectError(f"{where}: relocation on instruction code 0x{insn.code:02x}, "
                                  f"neither lddw nor call")
            if local + 1 >= len(fn.insns):
                raise ObjectError(f"{where}: lddw in the last slot of {fn.name!r}")
            if sym_sec.is_exec:
                byte_off = sym.value + insn.imm
                if byte_off % INSN_SIZE:
                    raise ObjectError(f"{where}: function address of {label!r} at unaligned offset {byte_off}")
                callee = self._callee(where, sym_sec, byte_off // INSN_SIZE)
                # clang writes src 0; libbpf marks the slot BPF_PSEUDO_FUNC, so do we.
                fn.insns[local] = insn.replace(src=PseudoSrc.FUNC)
                fn.relocs.append(Reloc(local, RelocKind.FUNC_ADDR, callee.name))
            elif sym.shndx in self.index.map_sections:
                map_name = self.index.by_offset.get((sym.shndx, sym.value))
                if map_name is None:
                    raise ObjectError(f"{where}: no map at offset {sym.value} of {sym_sec.name} ({label!r})")
                fn.relocs.append(Reloc(local, RelocKind.MAP, map_name))
            elif sym.shndx in self.index.data_sections:
                offset = sym.value + insn.imm
                map_name = self.index.data_sections[sym.shndx]
                if not 0 <= offset < self.index.maps[map_name].value_size:
                    raise ObjectError(f"{where}: offset {offset} outside {sym_sec.name}")
                fn.relocs.append(Reloc(local, RelocKind.MAP_VALUE, map_name, offset))
            else:
                raise ObjectError(f"{where}: {label!r} is in section {sym_sec.name}, which holds no map, "
                                  f"data or code")

    def _callee(self, where: str, sec: Section, slot: int) -> Function:
        fn = self.starts.get(sec.index, {}).get(slot)
        if fn is None:
            raise ObjectError(f"{where}: no function starts at instruction {slot} of {sec.name}")
        if fn.name in self.programs:
            raise ObjectError(f"{where}: call to {fn.name!r}, a program entry, not a subprogram")
        return fn

    def _implicit_calls(self, sec: Section) -> None:
        """Calls within one section that clang resolved itself and left without a relocation."""
        for start, _end, fn in self.spans.get(sec.index, []):
            done = {r.insn for r in fn.relocs}
            for i, insn in enumerate(fn.insns):
                if i in done:
                    continue
                if insn.is_subprog_call:
                    where = f"{self.elf.name}: section {sec.name}, offset 0x{(start + i) * INSN_SIZE:x}"
                    callee = self._callee(where, sec, start + i + insn.imm + 1)
                    fn.relocs.append(Reloc(i, RelocKind.CALL, callee.name))
                elif insn.is_lddw and insn.src == PseudoSrc.FUNC:
                    raise self.elf.error(sec, "lddw of a function address without a relocation",
                                         (start + i) * INSN_SIZE)

    # -- .BTF.ext ------------------------------------------------------------------------

    def _ext_info(self) -> None:
        if self.btf is None:
            return
        by_name = {s.name: s for s in self.elf.sections if s.is_exec}
        for sec_name, recs in self.ext.func_info.items():
            sec = self._ext_section(by_name, sec_name, "func_info")
            for r in recs:
                fn, local = self._ext_owner(sec, r.insn_off, "func_info")
                fn.func_info.append(FuncInfo(local, r.type_id))
        for sec_name, recs in self.ext.line_info.items():
            sec = self._ext_section(by_name, sec_name, "line_info")
            for r in recs:
                fn, local = self._ext_owner(sec, r.insn_off, "line_info")
                try:
                    file, text = self.btf.string(r.file_name_off), self.btf.string(r.line_off)
                except BtfError as e:
                    raise self.elf.error(".BTF.ext", f"line_info for {sec.name}: {e}") from None
                fn.line_info.append(LineInfo(local, r.file_name_off, r.line_off, r.line_col >> 10,
                                             r.line_col & 0x3FF, file, text))

    def _ext_section(self, by_name: dict[str, Section], name: str, what: str) -> Section:
        sec = by_name.get(name)
        if sec is None:
            raise self.elf.error(".BTF.ext", f"{what} for {name!r}, which is not a code section")
        return sec

    def _ext_owner(self, sec: Section, insn_off: int, what: str) -> tuple[Function, int]:
        owner = self._owner(sec.index, insn_off // INSN_SIZE) if insn_off % INSN_SIZE == 0 else None
        if owner is None:
            raise self.elf.error(".BTF.ext", f"{what} at byte {insn_off} of {sec.name} is in no function")
        return owner
