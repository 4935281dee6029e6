"""The ELF layer under the object loader: sections, symbols and relocations as plain data.

pyelftools reads the ELF header and section headers; everything it raises on
corrupt input (its own ``ELFError``, ``construct`` errors, ``struct.error``,
``IndexError`` …) is turned into an `ObjectError` here, at this one boundary,
so that nothing above ever sees a pyelftools traceback. Symbols and ``SHT_REL``
entries are fixed-size little-endian records we decode ourselves with explicit
bounds checks: it is less code than catching every way a library can trip.

Accepted: 64-bit little-endian relocatable objects for ``EM_BPF`` (247), or
``e_machine == 0`` as very old clang wrote, which libbpf also accepts.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

EM_BPF = 247
SHT_PROGBITS, SHT_SYMTAB, SHT_NOBITS, SHT_REL = 1, 2, 8, 9
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3
SHN_UNDEF, SHN_LORESERVE = 0, 0xFF00
_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")


class ObjectError(ValueError):
    """A corrupt, truncated or unsupported BPF object; the message names the section and offset."""


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    size: int
    data: bytes  # empty for SHT_NOBITS
    link: int
    info: int
    entsize: int

    @property
    def is_exec(self) -> bool:
        return self.type == SHT_PROGBITS and bool(self.flags & SHF_EXECINSTR)


@dataclass(frozen=True)
class Symbol:
    index: int
    name: str
    value: int
    size: int
    bind: int
    type: int
    shndx: int
    visibility: int


@dataclass(frozen=True)
class Rel:
    """One ``Elf64_Rel`` entry: ``index`` within its section, for error messages."""

    index: int
    offset: int
    sym: int
    type: int


class ElfFile:
    """Sections by index and name, the symbol table, relocation sections by target."""

    def __init__(self, data: bytes, name: str):
        self.name = name
        self.sections: list[Section] = []
        self.symbols: list[Symbol] = []
        self._read(bytes(data))
        self.by_name = {}
        for s in self.sections:
            self.by_name.setdefault(s.name, s)

    def error(self, section: Section | str, msg: str, offset: int | None = None) -> ObjectError:
        """An `ObjectError` naming the object, the section and (if given) the byte offset."""
        sec = section if isinstance(section, str) else section.name
        where = f", offset 0x{offset:x}" if offset is not None else ""
        return ObjectError(f"{self.name}: section {sec}{where}: {msg}")

    def _read(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF":
            raise ObjectError(f"{self.name}: not an ELF file")
        if len(data) < 64:
            raise ObjectError(f"{self.name}: ELF header truncated ({len(data)} bytes)")
        if data[4] != 2:
            raise ObjectError(f"{self.name}: not a 64-bit ELF object (EI_CLASS {data[4]})")
        if data[5] != 1:
            raise ObjectError(f"{self.name}: not little-endian (EI_DATA {data[5]}); big-endian BPF is not supported")
        e_type, e_machine = struct.unpack_from("<HH", data, 16)
        if e_machine not in (EM_BPF, 0):
            raise ObjectError(f"{self.name}: e_machine {e_machine} is not EM_BPF ({EM_BPF})")
        if e_type != 1:
            raise ObjectError(f"{self.name}: e_type {e_type} is not ET_REL (a relocatable object)")
        try:
            self._read_sections(data)
        except ObjectError:
            raise
        except Exception as e:  # noqa: BLE001 -- pyelftools and construct raise many kinds on corrupt input
            raise ObjectError(f"{self.name}: malformed ELF: {type(e).__name__}: {e}") from None
        self._read_symbols()

    def _read_sections(self, data: bytes) -> None:
        from elftools.elf.elffile import ELFFile

        elf = ELFFile(io.BytesIO(data))
        for i in range(elf.num_sections()):
            sec = elf.get_section(i)
            h = sec.header
            if h["sh_type"] == "SHT_NOBITS":
                body = b""
            else:
                end = h["sh_offset"] + h["sh_size"]
                if end > len(data):
                    raise ObjectError(
                        f"{self.name}: section {sec.name or i} at offset 0x{h['sh_offset']:x} "
                        f"+ {h['sh_size']} runs past the end of the file ({len(data)} bytes)"
                    )
                body = data[h["sh_offset"] : end]
            self.sections.append(
                Section(i, sec.name, _sh_type(h["sh_type"]), h["sh_flags"], h["sh_size"], body,
                        h["sh_link"], h["sh_info"], h["sh_entsize"])
            )

    def _read_symbols(self) -> None:
        symtabs = [s for s in self.sections if s.type == SHT_SYMTAB]
        if not symtabs:
            raise ObjectError(f"{self.name}: no symbol table")
        symtab = symtabs[0]
        if symtab.link >= len(self.sections):
            raise self.error(symtab, f"string table index {symtab.link} out of range")
        strtab = self.sections[symtab.link].data
        if len(symtab.data) % _SYM.size:
            raise self.error(symtab, f"size {len(symtab.data)} is not a multiple of {_SYM.size}")
        for i, (name_off, info, other, shndx, value, size) in enumerate(_SYM.iter_unpack(symtab.data)):
            name = _cstr(strtab, name_off)
            if name is None:
                raise self.error(symtab, f"symbol {i}: name offset {name_off} outside the string table",
                                 i * _SYM.size)
            self.symbols.append(Symbol(i, name, value, size, info >> 4, info & 0xF, shndx, other & 0x3))

    def section(self, index: int) -> Section | None:
        if 0 < index < len(self.sections):
            return self.sections[index]
        return None

    def rels(self, relsec: Section) -> list[Rel]:
        """Entries of a ``SHT_REL`` section, each checked to name an existing symbol."""
        if len(relsec.data) % _REL.size or (relsec.entsize not in (0, _REL.size)):
            raise self.error(relsec, f"size {len(relsec.data)} / entsize {relsec.entsize} is not Elf64_Rel")
        out = []
        for i, (offset, info) in enumerate(_REL.iter_unpack(relsec.data)):
            sym, typ = info >> 32, info & 0xFFFFFFFF
            if sym >= len(self.symbols):
                raise ObjectError(
                    f"{self.name}: section {relsec.name}, relocation {i} at offset 0x{offset:x}: "
                    f"symbol {sym} out of range"
                )
            out.append(Rel(i, offset, sym, typ))
        return out

    def relocation_sections(self) -> list[tuple[Section, Section]]:
        """``(rel section, target section)`` pairs."""
        out = []
        for s in self.sections:
            if s.type != SHT_REL:
                continue
            target = self.section(s.info)
            if target is None:
                raise self.error(s, f"relocates section index {s.info}, which does not exist")
            out.append((s, target))
        return out


def _sh_type(value) -> int:
    names = {"SHT_NULL": 0, "SHT_PROGBITS": 1, "SHT_SYMTAB": 2, "SHT_STRTAB": 3, "SHT_RELA": 4,
             "SHT_NOBITS": 8, "SHT_REL": 9}
    if isinstance(value, int):
        return value
    return names.get(value, -1)


def _cstr(buf: bytes, off: int) -> str | None:
    if off >= len(buf):
        return None if off else ""
    end = buf.find(b"\0", off)
    if end < 0:
        return None
    return buf[off:end].decode("utf-8", "replace")
