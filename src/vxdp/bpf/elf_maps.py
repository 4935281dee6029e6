"""Map definitions of an object: legacy ``maps``, BTF ``.maps``, global data, prog_array inits.

Three ways an object declares maps, read the way libbpf reads them:

* ``SEC("maps")``: one ``struct bpf_map_def`` (type, key_size, value_size,
  max_entries, map_flags; 20 bytes, u32 each) per symbol, its size from the
  symbol's ``st_size``. libbpf 1.0 dropped this format; we keep it because the
  kernel's old XDP samples (xdp1, xdp2) use it. Bytes past the five known
  fields are accepted only if zero: a non-zero one is an attribute we would
  silently ignore (iproute2's pinning, inner map index).
* ``SEC(".maps")``: each VAR of the ``.maps`` DATASEC is a struct whose
  members *encode* the attributes in their types: ``__uint(name, N)`` is
  ``int (*name)[N]``, ``__type(key, T)`` is ``T *key``, ``__array(values, T)``
  a zero-length array of pointers that a prog_array may initialise statically,
  with ``.rel.maps`` relocations against program symbols.
* Global data: each non-empty ``.data*``, ``.rodata*`` and ``.bss*`` section
  becomes a one-element ARRAY map whose value is the whole section. libbpf
  names these ``<object prefix>.data`` etc. to fit 15 characters; our maps are
  named for the section alone (``.data``, ``.rodata``, ``.rodata.str1.1``,
  ``.bss``), which is unique inside one object and what relocations name.

Relocations find a map by ``(section index, offset in section)``; `MapIndex`
keeps that table.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .btf import Btf, Kind, VarLinkage
from .elf_reader import STT_FUNC, STT_SECTION, ElfFile, ObjectError, Section
from .mapspec import MapFlag, MapOrigin, MapSpec, MapType

LEGACY_DEF_SIZE = 20
MAX_DATA_SECTION = 1 << 26  # well above the kernel's KMALLOC_MAX_SIZE value limit; bounds our allocation
_PIN_BY_NAME = 1
MAP_IN_MAP = frozenset({MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS})


@dataclass
class MapIndex:
    """Maps by name, and what a relocation needs to find one."""

    maps: dict[str, MapSpec] = field(default_factory=dict)
    by_offset: dict[tuple[int, int], str] = field(default_factory=dict)  # (shndx, sec offset) -> map name
    data_sections: dict[int, str] = field(default_factory=dict)  # shndx -> global data map name
    map_sections: set[int] = field(default_factory=set)  # shndx of "maps" / ".maps"

    def add(self, spec: MapSpec, elf: ElfFile, sec: Section, offset: int) -> None:
        if spec.name in self.maps:
            raise elf.error(sec, f"two maps named {spec.name!r}", offset)
        self.maps[spec.name] = spec
        self.by_offset[(sec.index, offset)] = spec.name


def _map_type(elf: ElfFile, sec: Section, name: str, value: int, offset: int) -> MapType:
    try:
        return MapType(value)
    except ValueError:
        raise elf.error(sec, f"map {name!r}: unknown map type {value}", offset) from None


def collect_legacy_maps(elf: ElfFile, sec: Section, index: MapIndex) -> None:
    """Every named symbol in ``SEC("maps")`` is a ``struct bpf_map_def``."""
    index.map_sections.add(sec.index)
    syms = [s for s in elf.symbols if s.shndx == sec.index and s.type != STT_SECTION and s.name]
    if not syms:
        return
    fallback = len(sec.data) // len(syms)
    for sym in sorted(syms, key=lambda s: s.value):
        size = sym.size or fallback
        if size < LEGACY_DEF_SIZE:
            raise elf.error(sec, f"map {sym.name!r}: definition of {size} bytes is too short "
                                 f"(struct bpf_map_def has {LEGACY_DEF_SIZE})", sym.value)
        if sym.value + size > len(sec.data):
            raise elf.error(sec, f"map {sym.name!r}: definition runs past the section end", sym.value)
        raw = sec.data[sym.value : sym.value + size]
        if any(raw[LEGACY_DEF_SIZE:]):
            raise elf.error(sec, f"map {sym.name!r}: unsupported map attribute: non-zero bytes past "
                                 f"the {LEGACY_DEF_SIZE}-byte struct bpf_map_def", sym.value + LEGACY_DEF_SIZE)
        mtype, key_size, value_size, max_entries, flags = struct.unpack_from("<5I", raw)
        spec = MapSpec(sym.name, _map_type(elf, sec, sym.name, mtype, sym.value), key_size, value_size,
                       max_entries, flags, origin=MapOrigin.LEGACY)
        index.add(spec, elf, sec, sym.value)


def collect_btf_maps(elf: ElfFile, sec: Section, btf: Btf | None, index: MapIndex) -> None:
    """Maps from the ``.maps`` DATASEC (its offsets already fixed up from the symbols)."""
    index.map_sections.add(sec.index)
    if btf is None:
        raise elf.error(sec, "BTF-defined maps need a .BTF section, and the object has none")
    datasec = btf.find(".maps", Kind.DATASEC)
    if datasec is None:
        raise elf.error(sec, "no DATASEC '.maps' in .BTF")
    for vi in datasec.members:
        var = btf.type(vi.type)
        if var.kind != Kind.VAR or not var.name:
            raise elf.error(sec, f"DATASEC entry type {vi.type} is not a named VAR", vi.offset)
        if var.linkage not in (VarLinkage.GLOBAL_ALLOCATED, VarLinkage.STATIC):
            raise elf.error(sec, f"map {var.name!r}: unsupported linkage {var.linkage}", vi.offset)
        if vi.offset + vi.size > sec.size:
            raise elf.error(sec, f"map {var.name!r}: BTF says {vi.size} bytes at 0x{vi.offset:x}, "
                                 f"past the section's {sec.size}", vi.offset)
        spec = _btf_map_def(elf, sec, btf, var.name, var.type, vi.offset)
        index.add(spec, elf, sec, vi.offset)


def _btf_map_def(elf: ElfFile, sec: Section, btf: Btf, name: str, type_id: int, offset: int) -> MapSpec:
    def fail(msg: str) -> ObjectError:
        return elf.error(sec, f"map {name!r}: {msg}", offset)

    def uint_attr(mname: str, mtype: int) -> int:
        ptr = btf.skip_mods(mtype)
        if ptr.kind != Kind.PTR:
            raise fail(f"attribute {mname!r}: expected PTR, got {ptr.kind.name}")
        arr = btf.type(ptr.type)
        if arr.kind != Kind.ARRAY:
            raise fail(f"attribute {mname!r}: expected pointer to ARRAY, got {arr.kind.name}")
        return arr.nelems

    def type_attr(mname: str, mtype: int) -> tuple[int, int]:
        ptr = btf.type(mtype)
        if ptr.kind != Kind.PTR:
            raise fail(f"{mname} spec is not a PTR: {ptr.kind.name}")
        return btf.size_of(ptr.type), ptr.type

    def set_once(attrs: dict, key: str, value: int) -> None:
        if attrs.get(key, 0) and attrs[key] != value:
            raise fail(f"conflicting {key} {attrs[key]} != {value}")
        attrs[key] = value

    def_t = btf.skip_mods(type_id)
    if def_t.kind != Kind.STRUCT:
        raise fail(f"definition is a {def_t.kind.name}, not a STRUCT")
    attrs: dict[str, int] = {}
    key_type = value_type = 0
    has_values = False
    for i, m in enumerate(def_t.members):
        if m.name == "type":
            attrs["type"] = uint_attr(m.name, m.type)
        elif m.name in ("max_entries", "map_flags", "numa_node", "map_extra"):
            attrs[m.name] = uint_attr(m.name, m.type)
        elif m.name in ("key_size", "value_size"):
            set_once(attrs, m.name, uint_attr(m.name, m.type))
        elif m.name in ("key", "value"):
            size, tid = type_attr(m.name, m.type)
            set_once(attrs, m.name + "_size", size)
            if m.name == "key":
                key_type = tid
            else:
                value_type = tid
        elif m.name == "pinning":
            attrs["pinning"] = uint_attr(m.name, m.type)
            if attrs["pinning"] not in (0, _PIN_BY_NAME):
                raise fail(f"invalid pinning value {attrs['pinning']}")
        elif m.name == "values":
            if i != len(def_t.members) - 1:
                raise fail("'values' must be the last member")
            arr = btf.type(m.type)
            if arr.kind != Kind.ARRAY or arr.nelems:
                raise fail("'values' is not a zero-sized array")
            set_once(attrs, "value_size", 4)
            has_values = True
        else:
            raise fail(f"unsupported map attribute {m.name!r}")
    if "type" not in attrs:
        raise fail("no 'type' attribute")
    mtype = _map_type(elf, sec, name, attrs["type"], offset)
    if has_values and mtype != MapType.PROG_ARRAY:
        what = "map-in-map inner definitions are" if mtype in MAP_IN_MAP else "'values' is only for prog_array, and"
        raise fail(f"{what} not supported (type {mtype.name})")
    if attrs.get("numa_node") or attrs.get("map_extra"):
        raise fail("unsupported map attribute numa_node/map_extra")
    return MapSpec(name, mtype, attrs.get("key_size", 0), attrs.get("value_size", 0),
                   attrs.get("max_entries", 0), attrs.get("map_flags", 0), origin=MapOrigin.BTF,
                   btf_key_type_id=key_type, btf_value_type_id=value_type, pinning=attrs.get("pinning", 0))


def data_origin(sec: Section) -> MapOrigin | None:
    """Which global-data kind a section is, as libbpf classifies by name and type."""
    n = sec.name
    if sec.type == 8 and (n == ".bss" or n.startswith(".bss.")):  # SHT_NOBITS
        return MapOrigin.BSS
    if sec.type != 1 or sec.is_exec:  # SHT_PROGBITS only
        return None
    if n == ".data" or n.startswith(".data."):
        return MapOrigin.DATA
    if n == ".rodata" or n.startswith(".rodata."):
        return MapOrigin.RODATA
    return None


def collect_data_map(elf: ElfFile, sec: Section, origin: MapOrigin, btf: Btf | None, index: MapIndex) -> None:
    """A one-element ARRAY holding the section: libbpf's internal map."""
    if sec.size == 0:  # libbpf skips empty sections; relocations against them then fail
        return
    if sec.size > MAX_DATA_SECTION:
        raise elf.error(sec, f"global data section of {sec.size} bytes is larger than any map value "
                             f"({MAX_DATA_SECTION})")
    data = bytes(sec.size) if origin == MapOrigin.BSS else sec.data
    flags = MapFlag.RDONLY_PROG if origin == MapOrigin.RODATA else 0
    datasec = btf.find(sec.name, Kind.DATASEC) if btf is not None else None
    spec = MapSpec(sec.name, MapType.ARRAY, 4, sec.size, 1, int(flags), origin=origin, data=data,
                   btf_value_type_id=datasec.id if datasec is not None else 0)
    index.add(spec, elf, sec, 0)
    index.data_sections[sec.index] = sec.name


def collect_prog_array_inits(elf: ElfFile, relsec: Section, sec: Section, btf: Btf | None,
                             index: MapIndex, entry_names: set[str]) -> None:
    """``.rel.maps``: statically initialised ``.values`` slots of prog_array maps."""
    if btf is None:
        raise elf.error(relsec, "relocations in .maps without BTF")
    datasec = btf.find(".maps", Kind.DATASEC)
    spans = []
    for vi in datasec.members if datasec is not None else []:
        name = index.by_offset.get((sec.index, vi.offset))
        if name is not None:
            spans.append((vi.offset, vi.offset + vi.size, name, btf.type(vi.type).type))
    for rel in elf.rels(relsec):
        where = f"{elf.name}: section {relsec.name}, relocation {rel.index} at offset 0x{rel.offset:x}"
        sym = elf.symbols[rel.sym]
        hit = [s for s in spans if s[0] <= rel.offset and rel.offset + 8 <= s[1]]
        if not hit:
            raise ObjectError(f"{where}: no map at this offset")
        start, _end, map_name, def_type = hit[0]
        spec = index.maps[map_name]
        if spec.type != MapType.PROG_ARRAY:
            raise ObjectError(f"{where}: map {map_name!r} of type {spec.type.name}: only prog_array "
                              f"initialisers are supported")
        if sym.type != STT_FUNC or sym.name not in entry_names:
            raise ObjectError(f"{where}: {sym.name or 'symbol ' + str(rel.sym)!r} is not a program of this object")
        def_t = btf.skip_mods(def_type)
        last = def_t.members[-1] if def_t.kind == Kind.STRUCT and def_t.members else None
        if last is None or last.name != "values":
            raise ObjectError(f"{where}: map {map_name!r} has no 'values' member")
        moff = rel.offset - start - last.bit_offset // 8
        if moff < 0 or moff % 8:
            raise ObjectError(f"{where}: offset {moff} into 'values' is not a pointer slot")
        slot = moff // 8
        if spec.max_entries and slot >= spec.max_entries:
            raise ObjectError(f"{where}: slot {slot} beyond max_entries {spec.max_entries} of {map_name!r}")
        spec.prog_init[slot] = sym.name
