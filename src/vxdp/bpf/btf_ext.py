"""``.BTF.ext``: per-section function and line information (and CO-RE relocations).

Layout (kernel ``Documentation/bpf/btf.rst`` §4.2, libbpf ``btf_ext_parse``): a
header (magic 0xeB9F, version 1, flags, ``hdr_len``, then offset/length pairs
for func_info, line_info and, when ``hdr_len`` >= 32, core_relo; offsets count
from the end of the header). Each area starts with a u32 record size, then
repeats ``{sec_name_off u32, num_info u32, records[num_info]}``.

In the file, every record's ``insn_off`` is a *byte* offset from the start of
its ELF section; the kernel takes instruction indexes from the start of the
program. The ELF loader converts (divide by 8, subtract the function's start)
when it splits the records per function. CO-RE relocations are recorded, not
applied: XDP programs that only touch ``xdp_md`` and packet bytes need none.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .btf import BTF_MAGIC, Btf, BtfError

_HDR = struct.Struct("<HBBI")


@dataclass(frozen=True)
class ExtFuncInfo:
    insn_off: int  # bytes from the section start
    type_id: int


@dataclass(frozen=True)
class ExtLineInfo:
    insn_off: int  # bytes from the section start
    file_name_off: int
    line_off: int
    line_col: int


@dataclass(frozen=True)
class ExtCoreRelo:
    insn_off: int
    type_id: int
    access_str_off: int
    kind: int


@dataclass
class BtfExt:
    """Records of ``.BTF.ext`` grouped by ELF section name."""

    func_info: dict[str, list[ExtFuncInfo]] = field(default_factory=dict)
    line_info: dict[str, list[ExtLineInfo]] = field(default_factory=dict)
    core_relo: dict[str, list[ExtCoreRelo]] = field(default_factory=dict)
    func_info_rec_size: int = 8
    line_info_rec_size: int = 16


def parse_btf_ext(raw: bytes, btf: Btf) -> BtfExt:
    """Parse ``.BTF.ext``; section names come from ``btf``'s string area."""
    raw = bytes(raw)
    if len(raw) < _HDR.size:
        raise BtfError(f".BTF.ext header truncated: {len(raw)} bytes")
    magic, version, _flags, hdr_len = _HDR.unpack_from(raw)
    if magic != BTF_MAGIC:
        raise BtfError(f".BTF.ext: bad magic 0x{magic:04x} at offset 0")
    if version != 1:
        raise BtfError(f".BTF.ext: unsupported version {version}")
    if hdr_len < 24 or hdr_len > len(raw):
        raise BtfError(f".BTF.ext: bad header length {hdr_len}")
    fi_off, fi_len, li_off, li_len = struct.unpack_from("<IIII", raw, 8)
    ext = BtfExt()
    ext.func_info_rec_size = _parse_area(raw, btf, hdr_len, fi_off, fi_len, 8, "func_info", ext.func_info,
                                         lambda r: ExtFuncInfo(*struct.unpack_from("<II", r)))
    ext.line_info_rec_size = _parse_area(raw, btf, hdr_len, li_off, li_len, 16, "line_info", ext.line_info,
                                         lambda r: ExtLineInfo(*struct.unpack_from("<IIII", r)))
    if hdr_len >= 32:
        cr_off, cr_len = struct.unpack_from("<II", raw, 24)
        _parse_area(raw, btf, hdr_len, cr_off, cr_len, 16, "core_relo", ext.core_relo,
                    lambda r: ExtCoreRelo(*struct.unpack_from("<IIII", r)))
    return ext


def _parse_area(raw, btf, hdr_len, off, length, min_rec, what, out, make) -> int:
    if length == 0:
        return min_rec
    start = hdr_len + off
    end = start + length
    if end > len(raw):
        raise BtfError(f".BTF.ext {what}: area 0x{start:x}+{length} past the end of {len(raw)} bytes")
    if length < 4:
        raise BtfError(f".BTF.ext {what}: area of {length} bytes has no record size")
    (rec_size,) = struct.unpack_from("<I", raw, start)
    if rec_size < min_rec or rec_size % 4:
        raise BtfError(f".BTF.ext {what}: record size {rec_size} at offset 0x{start:x} (need >= {min_rec})")
    pos = start + 4
    while pos < end:
        if pos + 8 > end:
            raise BtfError(f".BTF.ext {what}: section header at offset 0x{pos:x} truncated")
        name_off, num = struct.unpack_from("<II", raw, pos)
        pos += 8
        if num == 0:
            raise BtfError(f".BTF.ext {what}: empty record group at offset 0x{pos - 8:x}")
        if pos + num * rec_size > end:
            raise BtfError(f".BTF.ext {what}: {num} records at offset 0x{pos:x} past the end of the area")
        name = btf.string(name_off)
        recs = out.setdefault(name, [])
        for i in range(num):
            recs.append(make(raw[pos + i * rec_size : pos + (i + 1) * rec_size]))
        pos += num * rec_size
    return rec_size
