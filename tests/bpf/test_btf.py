"""BTF and BTF.ext parsing, and the DATASEC fixup the kernel needs before BPF_BTF_LOAD."""

from __future__ import annotations

import ctypes
import os
import struct

import pytest
from bpf_cc import FEATURES, compile_bpf

from vxdp.bpf.btf import BtfError, Kind, VarLinkage, fixup_datasec, parse_btf
from vxdp.bpf.btf_ext import parse_btf_ext
from vxdp.bpf.elf_reader import ElfFile

TYPES = r"""
typedef unsigned int u32_t;
struct inner { char c; short s; };
struct outer {
    const volatile u32_t a;
    struct inner in[3];
    union { int i; float f; } u;
    unsigned int bits : 3;
    void *p;
    double d;
};
enum colour { RED = 1, GREEN = -2 };
struct outer global_outer __attribute__((btf_decl_tag("tagged")));
enum colour global_colour;
int __attribute__((btf_type_tag("user"))) *tagged_ptr;
SEC("xdp") int use(struct xdp_md *ctx) { return global_outer.a + global_colour + (tagged_ptr != 0); }
char LICENSE[] SEC("license") = "GPL";
"""


def _sections(path):
    elf = ElfFile(path.read_bytes(), path.name)
    sizes = {s.name: s.size for s in elf.sections}
    offsets = {}
    for sym in elf.symbols:
        sec = elf.section(sym.shndx) if sym.shndx < 0xFF00 else None
        if sec is not None and sym.type != 3:
            offsets[(sec.name, sym.name)] = sym.value
    return elf, sizes, offsets


@pytest.fixture(scope="module")
def types_obj(tmp_path_factory):
    return compile_bpf(tmp_path_factory.mktemp("btf"), TYPES, "types")


@pytest.fixture(scope="module")
def features_obj(tmp_path_factory):
    return compile_bpf(tmp_path_factory.mktemp("btf"), FEATURES, "features")


def test_kinds_names_sizes_and_resolution(types_obj):
    elf, _, _ = _sections(types_obj)
    btf = parse_btf(elf.by_name[".BTF"].data)
    kinds = {t.kind for t in btf.types}
    for k in (Kind.INT, Kind.PTR, Kind.ARRAY, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.TYPEDEF, Kind.VOLATILE,
              Kind.CONST, Kind.FUNC, Kind.FUNC_PROTO, Kind.VAR, Kind.DATASEC, Kind.FLOAT, Kind.DECL_TAG,
              Kind.TYPE_TAG):
        assert k in kinds, k
    outer = btf.find("outer", Kind.STRUCT)
    assert [m.name for m in outer.members] == ["a", "in", "u", "bits", "p", "d"]
    assert btf.size_of(outer.id) == outer.size == 40
    a = outer.members[0]
    resolved = btf.resolve(a.type)  # const volatile typedef -> unsigned int
    assert resolved.kind == Kind.INT and resolved.name == "unsigned int" and resolved.int_bits == 32
    arr = btf.type(outer.members[1].type)
    assert arr.kind == Kind.ARRAY and arr.nelems == 3
    assert btf.size_of(arr.id) == 3 * btf.size_of(btf.find("inner", Kind.STRUCT).id) == 12
    assert btf.size_of(outer.members[4].type) == 8  # pointer
    bits = outer.members[3]
    assert bits.bitfield_size == 3 and outer.kind_flag
    colour = btf.find("colour", Kind.ENUM)
    assert [(m.name, m.value) for m in colour.members] == [("RED", 1), ("GREEN", -2)]
    tag = next(btf.by_kind(Kind.DECL_TAG))
    assert tag.name == "tagged" and btf.type(tag.type).name == "global_outer" and tag.component_idx == -1
    func = btf.find("use", Kind.FUNC)
    proto = btf.type(func.type)
    assert proto.kind == Kind.FUNC_PROTO and proto.members[0].name == "ctx"


def test_enum64_and_errors_on_handmade_btf():
    strings = b"\0e\0A\0"
    types = struct.pack("<III", 1, (19 << 24) | 1, 8) + struct.pack("<III", 3, 0xFFFFFFFF, 0x7)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    raw = hdr + types + strings
    btf = parse_btf(raw)
    e = btf.type(1)
    assert e.kind == Kind.ENUM64 and e.members[0].name == "A" and e.members[0].value == 0x7FFFFFFFF
    assert btf.size_of(1) == 8
    with pytest.raises(BtfError, match="magic"):
        parse_btf(b"\xeb\x9f" + raw[2:])  # big-endian magic
    with pytest.raises(BtfError, match="truncated"):
        parse_btf(raw[:10])
    with pytest.raises(BtfError):
        parse_btf(raw[:-3])  # string area past the end
    bad_kind = hdr + struct.pack("<III", 1, 25 << 24, 0) + types[12:] + strings
    with pytest.raises(BtfError, match="unknown kind 25"):
        parse_btf(bad_kind)


def test_fixup_fills_datasec_sizes_and_offsets(features_obj):
    elf, sizes, offsets = _sections(features_obj)
    raw = parse_btf(elf.by_name[".BTF"].data)
    data = raw.find(".data", Kind.DATASEC)
    assert data.size == 0  # clang leaves it to the loader
    fixed = parse_btf(fixup_datasec(raw, sizes, offsets))
    for name in (".data", ".bss", ".rodata", ".maps"):
        ds = fixed.find(name, Kind.DATASEC)
        assert ds.size == elf.by_name[name].size
        offs = [m.offset for m in ds.members]
        assert offs == sorted(offs)
        for m in ds.members:
            var = fixed.type(m.type)
            assert m.offset == offsets[(name, var.name)], (name, var.name)
    ds = fixed.find(".data", Kind.DATASEC)
    by_name = {fixed.type(m.type).name: m for m in ds.members}
    assert fixed.type(by_name["scount"].type).linkage == VarLinkage.STATIC
    assert by_name["scount"].offset == 4 and by_name["gcount"].offset == 0
    with pytest.raises(BtfError, match="no ELF section"):
        fixup_datasec(raw, {k: v for k, v in sizes.items() if k != ".bss"}, offsets)


def test_btf_ext_func_and_line_info(features_obj):
    elf, _, _ = _sections(features_obj)
    btf = parse_btf(elf.by_name[".BTF"].data)
    ext = parse_btf_ext(elf.by_name[".BTF.ext"].data, btf)
    assert set(ext.func_info) == {".text", "xdp", "xdp/other"}
    funcs = {btf.type(fi.type_id).name for fi in ext.func_info["xdp"]}
    assert funcs == {"prog_one", "prog_two"}
    assert all(fi.insn_off % 8 == 0 for recs in ext.func_info.values() for fi in recs)
    lines = ext.line_info["xdp"]
    assert lines[0].insn_off == 0 and lines[0].line_col >> 10 > 0
    assert btf.string(lines[0].file_name_off).endswith("features.c")
    with pytest.raises(BtfError):
        parse_btf_ext(elf.by_name[".BTF.ext"].data[:30], btf)


def _btf_load(raw: bytes) -> tuple[int, str]:
    """BPF_BTF_LOAD (cmd 18): the fd, or -errno and the kernel's log. Test-local, on purpose."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(raw, len(raw))
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("<QQIII", attr, 0, ctypes.addressof(buf), ctypes.addressof(log), len(raw), len(log), 1)
    fd = libc.syscall(321, 18, attr, len(attr))  # __NR_bpf on x86_64
    if fd < 0:
        return -ctypes.get_errno(), log.value.decode(errors="replace")
    return fd, ""


@pytest.mark.privileged
def test_kernel_accepts_fixed_btf_and_rejects_unfixed(features_obj, types_obj):
    for path in (features_obj, types_obj):
        elf, sizes, offsets = _sections(path)
        raw = parse_btf(elf.by_name[".BTF"].data)
        fd, log = _btf_load(fixup_datasec(raw, sizes, offsets))
        assert fd >= 0, log
        os.close(fd)
    # Without the fixup the kernel refuses the zero-sized DATASECs: the fixup is what makes it load.
    elf, _, _ = _sections(features_obj)
    err, log = _btf_load(elf.by_name[".BTF"].data)
    assert err < 0 and "DATASEC" in log and "size == 0" in log, log


@pytest.mark.privileged
def test_every_sample_objects_fixed_btf_loads(samples_built):
    from vxdp.bpf.elf import load_object

    for path in samples_built:
        obj = load_object(path)
        assert obj.btf_raw is not None, path
        fd, log = _btf_load(obj.btf_raw)
        assert fd >= 0, (path, log)
        os.close(fd)
