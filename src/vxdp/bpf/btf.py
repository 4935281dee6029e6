"""BTF: the type information that clang writes into ``.BTF`` and the kernel checks.

Follows the kernel's ``Documentation/bpf/btf.rst``. The section is a header,
a type area and a string area; type ids count from 1 in the order the types
appear (id 0 is ``void``). Each type is a 12-byte ``struct btf_type``
(``name_off``, ``info`` = vlen:16 | kind:5 << 24 | kind_flag << 31, ``size`` or
``type``) followed by a kind-specific tail.

We parse it for two reasons: the ELF loader needs it to read BTF-defined maps
(``.maps``: ``__uint(type, N)`` is a pointer to an array of N elements,
``__type(key, T)`` a pointer to T), and the kernel needs it back *fixed up*:
clang leaves every ``DATASEC`` size and ``VAR`` offset at zero, the values only
the linker (or, for us, the ELF section headers and symbols) knows. libbpf's
``btf_fixup_datasec`` fills them in; `fixup_datasec` does the same on a copy of
the raw bytes, so everything else in the section stays exactly as clang wrote it.

The little-endian encoding is the only one we accept: every host we run on is
little-endian and the kernel rejects BTF of the other byte order anyway.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_U32 = struct.Struct("<I")
_MAX_RESOLVE_DEPTH = 32  # the kernel's MAX_RESOLVE_DEPTH


class BtfError(ValueError):
    """``.BTF`` or ``.BTF.ext`` bytes that cannot be parsed; the message says where."""


class Kind(IntEnum):
    """``BTF_KIND_*``."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


class VarLinkage(IntEnum):
    """``BTF_VAR_*``: linkage of a VAR."""

    STATIC = 0
    GLOBAL_ALLOCATED = 1
    GLOBAL_EXTERN = 2


class FuncLinkage(IntEnum):
    """``BTF_FUNC_*``: linkage of a FUNC (carried in vlen)."""

    STATIC = 0
    GLOBAL = 1
    EXTERN = 2


MODIFIERS = frozenset({Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
# Kinds whose ``size_or_type`` field is a type id rather than a byte size.
_REFERS = frozenset(
    {Kind.PTR, Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.FUNC, Kind.VAR, Kind.DECL_TAG,
     Kind.TYPE_TAG, Kind.FUNC_PROTO}
)


@dataclass(frozen=True)
class Member:
    """A STRUCT/UNION member, ENUM value, FUNC_PROTO parameter or DATASEC entry.

    Fields unused by a kind are 0: ``bit_offset`` and ``bitfield_size`` for
    members, ``value`` for enumerators, ``offset``/``size`` for DATASEC vars.
    """

    name: str = ""
    type: int = 0
    bit_offset: int = 0
    bitfield_size: int = 0
    value: int = 0
    offset: int = 0
    size: int = 0


@dataclass
class BtfType:
    """One type: its id, kind, name and kind-specific data.

    ``size_or_type`` is the raw third word (a byte size for INT, STRUCT, UNION,
    ENUM, FLOAT, DATASEC; a type id for the others). ``pos`` is the byte offset of
    the type record inside the raw ``.BTF`` section (used for in-place fixups).
    """

    id: int
    kind: Kind
    name: str
    name_off: int
    vlen: int
    kind_flag: bool
    size_or_type: int
    pos: int
    members: list[Member] = field(default_factory=list)
    # INT: encoding, bit offset, bits. ARRAY: elem type, index type, nelems.
    # VAR: linkage. DECL_TAG: component index.
    int_encoding: int = 0
    int_offset: int = 0
    int_bits: int = 0
    elem_type: int = 0
    index_type: int = 0
    nelems: int = 0
    linkage: int = 0
    component_idx: int = -1

    @property
    def type(self) -> int:
        """The referred type id, for kinds that refer to one."""
        return self.size_or_type if self.kind in _REFERS else 0

    @property
    def size(self) -> int:
        """The byte size word, for kinds that carry one."""
        return 0 if self.kind in _REFERS else self.size_or_type


class Btf:
    """Parsed ``.BTF``: types by id, the string table, lookups the loader needs."""

    def __init__(self, raw: bytes, types: list[BtfType], strings: bytes, type_off: int, str_off: int):
        self.raw = raw
        self.types = types  # index = type id; types[0] is void
        self.strings = strings
        self.type_off = type_off  # absolute offset of the type area in raw
        self.str_off = str_off  # absolute offset of the string area in raw

    def __len__(self) -> int:
        return len(self.types)

    def __getitem__(self, type_id: int) -> BtfType:
        return self.type(type_id)

    def type(self, type_id: int) -> BtfType:
        if not 0 <= type_id < len(self.types):
            raise BtfError(f"type id {type_id} out of range (have {len(self.types) - 1} types)")
        return self.types[type_id]

    def string(self, off: int) -> str:
        """The NUL-terminated string at ``off`` of the string area."""
        return _cstr(self.strings, off, "string")

    def find(self, name: str, kind: Kind | None = None) -> BtfType | None:
        """The first type with this name (and kind, if given)."""
        for t in self.types[1:]:
            if t.name == name and (kind is None or t.kind == kind):
                return t
        return None

    def by_kind(self, kind: Kind) -> Iterator[BtfType]:
        return (t for t in self.types[1:] if t.kind == kind)

    def skip_mods(self, type_id: int) -> BtfType:
        """Follow const/volatile/restrict/type_tag and typedefs to the underlying type."""
        t = self.type(type_id)
        for _ in range(_MAX_RESOLVE_DEPTH):
            if t.kind in MODIFIERS or t.kind == Kind.TYPEDEF:
                t = self.type(t.size_or_type)
            else:
                return t
        raise BtfError(f"type {type_id}: modifier chain too long or looping")

    def resolve(self, type_id: int) -> BtfType:
        """Alias of `skip_mods`: the type an id really denotes."""
        return self.skip_mods(type_id)

    def size_of(self, type_id: int) -> int:
        """Byte size of a type, as libbpf's ``btf__resolve_size`` computes it."""
        nelems = 1
        t = self.type(type_id)
        for _ in range(_MAX_RESOLVE_DEPTH):
            if t.kind in (Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.DATASEC, Kind.FLOAT):
                size = t.size_or_type
                break
            if t.kind == Kind.PTR:
                size = 8
                break
            if t.kind in MODIFIERS or t.kind in (Kind.TYPEDEF, Kind.VAR, Kind.DECL_TAG):
                t = self.type(t.size_or_type)
                continue
            if t.kind == Kind.ARRAY:
                nelems *= t.nelems
                if nelems > 0xFFFFFFFF:
                    raise BtfError(f"type {type_id}: array too large")
                t = self.type(t.elem_type)
                continue
            raise BtfError(f"type {type_id}: kind {t.kind.name} has no size")
        else:
            raise BtfError(f"type {type_id}: type chain too long or looping")
        total = nelems * size
        if total > 0xFFFFFFFF:
            raise BtfError(f"type {type_id}: size too large")
        return total


def _cstr(buf: bytes, off: int, what: str) -> str:
    if off == 0 and not buf:
        return ""
    if not 0 <= off < len(buf):
        raise BtfError(f"{what} offset {off} outside string area of {len(buf)} bytes")
    end = buf.find(b"\0", off)
    if end < 0:
        raise BtfError(f"{what} at offset {off} is not NUL-terminated")
    return buf[off:end].decode("utf-8", "replace")


def parse_btf(raw: bytes) -> Btf:
    """Parse a ``.BTF`` section. Raises `BtfError` naming the byte offset of what is wrong."""
    raw = bytes(raw)
    if len(raw) < _HEADER.size:
        raise BtfError(f"header truncated: {len(raw)} bytes, need {_HEADER.size}")
    magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(raw)
    if magic != BTF_MAGIC:
        raise BtfError(f"bad magic 0x{magic:04x} at offset 0 (big-endian BTF is not supported)")
    if version != 1:
        raise BtfError(f"unsupported version {version}")
    if hdr_len < _HEADER.size or hdr_len > len(raw):
        raise BtfError(f"bad header length {hdr_len}")
    t_start, s_start = hdr_len + type_off, hdr_len + str_off
    if t_start + type_len > len(raw) or s_start + str_len > len(raw):
        raise BtfError(f"type or string area past the end of {len(raw)} bytes")
    strings = raw[s_start : s_start + str_len]
    if str_len and strings[0] != 0:
        raise BtfError("string area does not start with an empty string")
    btf = Btf(raw, [], strings, t_start, s_start)
    btf.types.append(BtfType(0, Kind.UNKN, "void", 0, 0, False, 0, -1))
    pos, end = t_start, t_start + type_len
    while pos < end:
        t, pos = _parse_type(btf, raw, pos, end, len(btf.types))
        btf.types.append(t)
    return btf


def _need(raw: bytes, pos: int, n: int, end: int, what: str) -> None:
    if pos + n > end:
        raise BtfError(f"{what} at offset 0x{pos:x} truncated (type area ends at 0x{end:x})")


def _parse_type(btf: Btf, raw: bytes, pos: int, end: int, tid: int) -> tuple[BtfType, int]:
    _need(raw, pos, _TYPE.size, end, f"type {tid}")
    name_off, info, size_or_type = _TYPE.unpack_from(raw, pos)
    kind_no = (info >> 24) & 0x1F
    try:
        kind = Kind(kind_no)
    except ValueError:
        raise BtfError(f"type {tid} at offset 0x{pos:x}: unknown kind {kind_no}") from None
    vlen, kflag = info & 0xFFFF, bool(info >> 31)
    t = BtfType(tid, kind, btf.string(name_off), name_off, vlen, kflag, size_or_type, pos)
    p = pos + _TYPE.size
    where = f"type {tid} ({kind.name}) at offset 0x{pos:x}"
    if kind == Kind.INT:
        _need(raw, p, 4, end, where)
        (v,) = _U32.unpack_from(raw, p)
        t.int_encoding, t.int_offset, t.int_bits = (v >> 24) & 0x0F, (v >> 16) & 0xFF, v & 0xFF
        p += 4
    elif kind == Kind.ARRAY:
        _need(raw, p, 12, end, where)
        t.elem_type, t.index_type, t.nelems = struct.unpack_from("<III", raw, p)
        p += 12
    elif kind in (Kind.STRUCT, Kind.UNION):
        _need(raw, p, 12 * vlen, end, where)
        for name_off_m, mtype, off in struct.iter_unpack("<III", raw[p : p + 12 * vlen]):
            bits, bsize = (off & 0xFFFFFF, off >> 24) if kflag else (off, 0)
            t.members.append(Member(btf.string(name_off_m), mtype, bit_offset=bits, bitfield_size=bsize))
        p += 12 * vlen
    elif kind == Kind.ENUM:
        _need(raw, p, 8 * vlen, end, where)
        for name_off_m, val in struct.iter_unpack("<Ii", raw[p : p + 8 * vlen]):
            t.members.append(Member(btf.string(name_off_m), value=val))
        p += 8 * vlen
    elif kind == Kind.ENUM64:
        _need(raw, p, 12 * vlen, end, where)
        for name_off_m, lo, hi in struct.iter_unpack("<III", raw[p : p + 12 * vlen]):
            val = (hi << 32) | lo
            if kflag and val >> 63:
                val -= 1 << 64
            t.members.append(Member(btf.string(name_off_m), value=val))
        p += 12 * vlen
    elif kind == Kind.FUNC_PROTO:
        _need(raw, p, 8 * vlen, end, where)
        for name_off_m, ptype in struct.iter_unpack("<II", raw[p : p + 8 * vlen]):
            t.members.append(Member(btf.string(name_off_m), ptype))
        p += 8 * vlen
    elif kind == Kind.VAR:
        _need(raw, p, 4, end, where)
        (t.linkage,) = _U32.unpack_from(raw, p)
        p += 4
    elif kind == Kind.DATASEC:
        _need(raw, p, 12 * vlen, end, where)
        for vtype, off, size in struct.iter_unpack("<III", raw[p : p + 12 * vlen]):
            t.members.append(Member(type=vtype, offset=off, size=size))
        p += 12 * vlen
    elif kind == Kind.DECL_TAG:
        _need(raw, p, 4, end, where)
        (t.component_idx,) = struct.unpack_from("<i", raw, p)
        p += 4
    elif kind == Kind.FUNC:
        t.linkage = vlen
    elif kind == Kind.UNKN:
        raise BtfError(f"{where}: kind 0 is not a type")
    return t, p


def fixup_datasec(btf: Btf, section_sizes: Mapping[str, int], symbol_offsets: Mapping[tuple[str, str], int]) -> bytes:
    """The raw ``.BTF`` with DATASEC sizes and VAR offsets filled in, as the kernel accepts it.

    ``section_sizes`` maps an ELF section name to its size; ``symbol_offsets``
    maps ``(section name, symbol name)`` to the symbol's value. Like libbpf's
    ``btf_fixup_datasec``: a DATASEC whose size clang left at 0 takes the
    section's size and each non-extern VAR the offset of its symbol, then the
    entries are sorted by offset (the kernel rejects unsorted ones). A DATASEC
    that already has a size (a linked object) keeps its offsets. A DATASEC for a
    section the object does not have (``.kconfig``/``.ksyms`` externs) is an error,
    since such externs need a loader we do not have.
    """
    out = bytearray(btf.raw)
    for t in btf.by_kind(Kind.DATASEC):
        if t.name in (".ksyms", ".kconfig"):
            raise BtfError(f"DATASEC {t.name!r}: extern symbols (kfuncs and __ksym in .ksyms, __kconfig in "
                           f".kconfig) are not supported")
        size = t.size_or_type
        fix_offsets = size == 0
        if fix_offsets:
            if t.name not in section_sizes or section_sizes[t.name] == 0:
                raise BtfError(f"DATASEC {t.name!r} (type {t.id}): no ELF section of that name to size it")
            size = section_sizes[t.name]
            if size > 0xFFFFFFFF:
                raise BtfError(f"DATASEC {t.name!r}: section size {size} does not fit BTF's u32")
            struct.pack_into("<I", out, t.pos + 8, size)
        entries = []
        for m in t.members:
            var = btf.type(m.type)
            if var.kind != Kind.VAR:
                raise BtfError(f"DATASEC {t.name!r} (type {t.id}): entry type {m.type} is {var.kind.name}, not VAR")
            off = m.offset
            if fix_offsets and var.linkage != VarLinkage.GLOBAL_EXTERN:
                key = (t.name, var.name)
                if key in symbol_offsets:
                    off = symbol_offsets[key]
                elif var.linkage != VarLinkage.STATIC:
                    raise BtfError(f"DATASEC {t.name!r}: no symbol for variable {var.name!r}")
            if not 0 <= off <= 0xFFFFFFFF - m.size or off + m.size > size:
                raise BtfError(f"DATASEC {t.name!r}: variable {var.name!r} at {off}+{m.size} outside the "
                               f"section's {size} bytes")
            entries.append((off, m.type, m.size))
        entries.sort()
        base = t.pos + _TYPE.size
        for i, (off, vtype, vsize) in enumerate(entries):
            struct.pack_into("<III", out, base + 12 * i, vtype, off, vsize)
    return bytes(out)
