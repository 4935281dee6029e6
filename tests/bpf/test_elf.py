"""The ELF object loader: programs, subprograms, maps of each kind, relocations, ext info, errors."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from bpf_cc import FEATURES, LEGACY, compile_bpf
from hypothesis import given, settings
from hypothesis import strategies as st

from vxdp.bpf.btf import Kind
from vxdp.bpf.elf import load_object, parse_object
from vxdp.bpf.elf_reader import ObjectError
from vxdp.bpf.isa import PseudoCall, PseudoSrc
from vxdp.bpf.link import LinkError, link
from vxdp.bpf.mapspec import MapFlag, MapOrigin, MapType
from vxdp.bpf.obj import BpfObject, RelocKind

STRINGS = r"""
char buf[32];
SEC("xdp") int strs(struct xdp_md *ctx)
{
    const char *s = "hello, string literal";
    __builtin_memcpy(buf, s, 22);
    bpf_trace_printk(s, 22);
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""

STATIC_IN_SECTION = r"""
static __attribute__((noinline, section("xdp"))) int in_sec(int x) { return x * 3 + 1; }
SEC("xdp") int entry(struct xdp_md *ctx) { return in_sec(ctx->ingress_ifindex) & 3; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def objdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("elf")


@pytest.fixture(scope="module")
def features(objdir) -> Path:
    return compile_bpf(objdir, FEATURES, "features")


@pytest.fixture(scope="module")
def legacy(objdir) -> Path:
    return compile_bpf(objdir, LEGACY, "legacy")


def test_programs_by_symbol_and_subprograms(features):
    obj = load_object(features)
    assert isinstance(obj, BpfObject) and obj.license == "Dual BSD/GPL"
    assert list(obj.programs) == ["prog_one", "prog_two", "prog_three"]
    assert {p.section for p in obj.programs.values()} == {"xdp", "xdp/other"}
    assert obj.programs["prog_one"].section == obj.programs["prog_two"].section == "xdp"
    subs = {n: f for n, f in obj.functions.items() if n not in obj.programs}
    assert set(subs) == {"sub_static", "sub_global", "sub_leaf", "sub_mid", "loop_cb"}
    assert all(f.section == ".text" for f in subs.values())
    assert subs["sub_global"].is_global and not subs["sub_static"].is_global
    assert obj.program().name == "prog_one"
    with pytest.raises(KeyError, match="no program named"):
        obj.program("nope")


def test_btf_maps_with_every_attribute_form(features):
    maps = load_object(features).maps
    pairs = maps["pairs"]
    assert (pairs.type, pairs.key_size, pairs.value_size, pairs.max_entries) == (MapType.HASH, 4, 16, 64)
    assert pairs.flags == MapFlag.NO_PREALLOC and pairs.origin == MapOrigin.BTF
    obj = load_object(features)
    assert obj.btf.type(pairs.btf_value_type_id).name == "pair"
    counts = maps["counts"]  # key_size/value_size given as numbers: no BTF key/value types
    assert (counts.type, counts.key_size, counts.value_size, counts.max_entries) == (MapType.ARRAY, 4, 8, 4)
    assert counts.btf_key_type_id == counts.btf_value_type_id == 0
    assert maps["jmp"].type == MapType.PROG_ARRAY and maps["jmp"].value_size == 4 and not maps["jmp"].prog_init
    assert maps["jmp_init"].prog_init == {1: "prog_two", 3: "prog_three"}


def test_global_data_maps(features, objdir):
    obj = load_object(features)
    data, rodata, bss = obj.maps[".data"], obj.maps[".rodata"], obj.maps[".bss"]
    for m in (data, rodata, bss):
        assert (m.type, m.key_size, m.max_entries) == (MapType.ARRAY, 4, 1) and m.is_global_data
        assert obj.btf.type(m.btf_value_type_id).kind == Kind.DATASEC
    assert data.data == (7).to_bytes(4, "little") + (3).to_bytes(4, "little")  # gcount, scount
    assert rodata.data == (100).to_bytes(4, "little") and rodata.flags == MapFlag.RDONLY_PROG
    assert bss.data == bytes(8) and bss.value_size == 8 and bss.origin == MapOrigin.BSS
    strs = load_object(compile_bpf(objdir, STRINGS, "strings"))
    lit = strs.maps[".rodata.str1.1"]
    assert lit.origin == MapOrigin.RODATA and lit.data == b"hello, string literal\0"
    kinds = {(r.kind, r.target) for r in strs.functions["strs"].relocs}
    assert (RelocKind.MAP_VALUE, ".rodata.str1.1") in kinds and (RelocKind.MAP_VALUE, ".bss") in kinds


def test_relocations(features):
    obj = load_object(features)
    one = obj.functions["prog_one"]
    rel = {(r.kind, r.target): r for r in one.relocs}
    for key in [(RelocKind.MAP, "counts"), (RelocKind.MAP, "jmp"), (RelocKind.MAP_VALUE, ".bss"),
                (RelocKind.MAP_VALUE, ".data"), (RelocKind.CALL, "sub_global"), (RelocKind.CALL, "sub_mid")]:
        assert key in rel, key
        insn = one.insns[rel[key].insn]
        assert insn.is_subprog_call if key[0] == RelocKind.CALL else insn.is_lddw
    assert rel[(RelocKind.MAP_VALUE, ".data")].offset == 0  # gcount: global symbol, st_value 0
    # scount is static: the relocation is against the .data section symbol, offset in the imm
    assert [(r.kind, r.target, r.offset) for r in obj.functions["sub_static"].relocs] == [
        (RelocKind.MAP_VALUE, ".data", 4)]
    assert [(r.target, r.offset) for r in obj.functions["prog_three"].relocs
            if r.kind == RelocKind.MAP_VALUE] == [(".bss", 4)]
    # sub_mid -> sub_leaf: a static call inside .text that clang resolved itself (no relocation)
    assert [(r.kind, r.target) for r in obj.functions["sub_mid"].relocs] == [(RelocKind.CALL, "sub_leaf")]
    two = obj.functions["prog_two"]
    cb = [r for r in two.relocs if r.kind == RelocKind.FUNC_ADDR]
    assert [r.target for r in cb] == ["loop_cb"] and two.insns[cb[0].insn].src == PseudoSrc.FUNC


def test_func_and_line_info_split_per_function(features):
    obj = load_object(features)
    for fn in obj.functions.values():
        assert len(fn.func_info) == 1 and fn.func_info[0].insn == 0
        func = obj.btf.type(fn.func_info[0].type_id)
        assert func.kind == Kind.FUNC and func.name == fn.name
        assert fn.line_info and fn.line_info[0].insn == 0
        assert all(0 <= li.insn < len(fn.insns) for li in fn.line_info)
        assert fn.line_info[0].file.endswith("features.c") and fn.line_info[0].line > 0
    assert "sub_leaf" in obj.functions["sub_leaf"].line_info[0].text


def test_static_function_in_program_section_is_a_subprogram(objdir):
    obj = load_object(compile_bpf(objdir, STATIC_IN_SECTION, "static_sec"))
    assert list(obj.programs) == ["entry"]
    assert obj.functions["in_sec"].section == "xdp" and not obj.functions["in_sec"].is_global
    assert [(r.kind, r.target) for r in obj.functions["entry"].relocs] == [(RelocKind.CALL, "in_sec")]
    linked = link(obj, "entry")
    call = next(i for i, x in enumerate(linked.insns) if x.is_subprog_call)
    start = call + 1 + linked.insns[call].imm
    assert linked.insns[start:] == obj.functions["in_sec"].insns


def test_legacy_maps_and_version(legacy):
    obj = load_object(legacy)
    assert obj.kern_version == 0x050A00 and obj.license == "GPL"
    rx, flows = obj.maps["rxcnt"], obj.maps["flows"]
    assert (rx.type, rx.key_size, rx.value_size, rx.max_entries, rx.flags) == (MapType.PERCPU_ARRAY, 4, 8, 256, 0)
    assert (flows.type, flows.key_size, flows.value_size, flows.max_entries, flows.flags) == (
        MapType.HASH, 8, 16, 1024, 1)
    assert rx.origin == flows.origin == MapOrigin.LEGACY
    targets = [r.target for r in obj.functions["xdp_legacy"].relocs if r.kind == RelocKind.MAP]
    assert targets == ["rxcnt", "flows"]


def test_load_object_takes_path_or_bytes(legacy):
    a = load_object(legacy)
    b = load_object(legacy.read_bytes())
    c = parse_object(legacy.read_bytes(), "x.o")
    assert a.maps == b.maps == c.maps and c.path == "x.o"


# -- errors ---------------------------------------------------------------------------------

def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def test_not_elf_wrong_machine_big_endian_not_relocatable(legacy):
    data = legacy.read_bytes()
    with pytest.raises(ObjectError, match="not an ELF"):
        parse_object(b"hello world" * 10, "junk.o")
    with pytest.raises(ObjectError, match="e_machine 62 is not EM_BPF"):
        parse_object(_patched(data, 18, (62).to_bytes(2, "little")), "x86.o")
    with pytest.raises(ObjectError, match="big-endian"):
        parse_object(_patched(data, 5, b"\x02"), "be.o")
    with pytest.raises(ObjectError, match="ET_REL"):
        parse_object(_patched(data, 16, b"\x02\x00"), "exec.o")
    with pytest.raises(ObjectError, match="not a 64-bit"):
        parse_object(_patched(data, 4, b"\x01"), "elf32.o")


def test_truncated_objects(legacy):
    data = legacy.read_bytes()
    for n in (0, 3, 20, 63, 64, 200, len(data) // 2, len(data) - 8, len(data) - 1):
        with pytest.raises(ObjectError, match="legacy.o"):
            parse_object(data[:n], "legacy.o")


def test_bad_relocation_symbol_names_section_and_offset(legacy):
    data = bytearray(legacy.read_bytes())
    from vxdp.bpf.elf_reader import ElfFile
    elf = ElfFile(bytes(data), "legacy.o")
    relsec = elf.by_name[".relxdp"]
    file_off = bytes(data).find(relsec.data)
    # r_info of relocation 1: symbol index 0xffff
    data[file_off + 16 + 8: file_off + 16 + 16] = ((0xFFFF << 32) | 1).to_bytes(8, "little")
    with pytest.raises(ObjectError) as e:
        parse_object(bytes(data), "legacy.o")
    assert str(e.value) == "legacy.o: section .relxdp, relocation 1 at offset 0x78: symbol 65535 out of range"


def test_unsupported_constructs(objdir):
    short = r"""
    struct short_def { unsigned int type, key_size, value_size, max_entries; };
    struct short_def SEC("maps") m = { .type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 4, .max_entries = 1 };
    SEC("xdp") int p(struct xdp_md *ctx) { int k = 0; return bpf_map_lookup_elem(&m, &k) ? 1 : 2; }
    """
    with pytest.raises(ObjectError, match=r"section maps, offset 0x0: map 'm': definition of 16 bytes is too short"):
        load_object(compile_bpf(objdir, short, "short"))
    attr = r"""
    struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, int); __type(value, int);
             __uint(colour, 3); } m SEC(".maps");
    SEC("xdp") int p(struct xdp_md *ctx) { int k = 0; return bpf_map_lookup_elem(&m, &k) ? 1 : 2; }
    """
    with pytest.raises(ObjectError, match=r"section \.maps.*map 'm': unsupported map attribute 'colour'"):
        load_object(compile_bpf(objdir, attr, "attr"))
    odd_section = r"""
    int x SEC(".mydata") = 1;
    SEC("xdp") int p(struct xdp_md *ctx) { return x; }
    """
    with pytest.raises(ObjectError, match=r"section \.relxdp, relocation 0 at offset 0x0: 'x' is in section "
                                          r"\.mydata, which holds no map"):
        load_object(compile_bpf(objdir, odd_section, "odd"))
    extern = r"""
    extern int bpf_nonexistent_kfunc(int) __ksym;
    SEC("xdp") int p(struct xdp_md *ctx) { return bpf_nonexistent_kfunc(1); }
    """
    with pytest.raises(ObjectError, match=r"kfunc\.o: section \.BTF: DATASEC '\.ksyms': extern symbols .* not supported"):
        load_object(compile_bpf(objdir, extern, "kfunc"))


def _parse_or_object_error(data: bytes) -> None:
    """What parses is a coherent object that links, or whose link is refused by name (`LinkError`,
    naming the object); anything else, a bare KeyError from a dict included, is a crash."""
    try:
        obj = parse_object(data, "fuzz.o")
    except ObjectError as e:
        assert str(e).startswith("fuzz.o"), e
        return
    assert isinstance(obj, BpfObject)
    for name in obj.programs:
        try:
            prog = link(obj, name)
        except LinkError as e:
            assert type(e) is LinkError and str(e).startswith("fuzz.o: "), repr(e)
            continue
        _check_linked(obj, prog)


def _check_linked(obj: BpfObject, prog) -> None:
    """The linker's output invariants: map references at lddw slots naming the object's maps,
    every bpf-to-bpf call and function address landing on an instruction of the program."""
    n = len(prog.insns)
    assert n and prog.name in obj.programs
    for r in prog.map_refs:
        assert 0 <= r.insn < n and prog.insns[r.insn].is_lddw and r.target in obj.maps, r
    for i, insn in enumerate(prog.insns):
        if insn.is_subprog_call or (insn.is_lddw and insn.src == PseudoSrc.FUNC):
            assert 0 <= i + 1 + insn.imm < n, (i, insn)
    assert all(0 <= fi.insn < n for fi in prog.func_info) and all(0 <= li.insn < n for li in prog.line_info)


@functools.cache
def _fuzz_seed() -> bytes:
    """The features object, compiled once (a plain function: hypothesis would print a fixture's bytes)."""
    with tempfile.TemporaryDirectory() as d:
        return compile_bpf(Path(d), FEATURES, "fuzz_seed").read_bytes()


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(frac=st.floats(0, 1))
def test_any_prefix_gives_object_or_object_error(frac):
    seed = _fuzz_seed()
    _parse_or_object_error(seed[: int(len(seed) * frac)])


@pytest.mark.slow
@settings(max_examples=800, deadline=None)
@given(frac=st.floats(0, 1, exclude_max=True), byte=st.integers(0, 255))
def test_any_single_byte_corruption_gives_object_or_object_error(frac, byte):
    seed = _fuzz_seed()
    i = int(len(seed) * frac)
    _parse_or_object_error(seed[:i] + bytes([byte]) + seed[i + 1:])


# -- the sample programs, and libbpf as the oracle ----------------------------------------------

def test_every_sample_object_parses_and_links(samples_built):
    linked = 0
    for path in samples_built:
        obj = load_object(path)
        assert obj.programs, path
        for name in obj.programs:
            prog = link(obj, name)
            assert prog.insns and prog.insns[-1].code != 0, (path, name)
            for r in prog.map_refs:
                assert r.target in obj.maps and prog.insns[r.insn].is_lddw
            linked += 1
    assert linked >= len(samples_built)


def _bpftool(*args: str):
    out = subprocess.run(["bpftool", "-j", *args], check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


@pytest.mark.privileged
def test_maps_and_instructions_match_libbpf(features):
    """bpftool (libbpf 1.1) loads the object; its maps and xlated programs must match our model."""
    obj = load_object(features)
    pins, mpins = Path("/sys/fs/bpf/vxdp_test_elf_progs"), Path("/sys/fs/bpf/vxdp_test_elf_maps")
    try:
        subprocess.run(["bpftool", "prog", "loadall", str(features), str(pins), "type", "xdp",
                        "pinmaps", str(mpins)], check=True, capture_output=True, timeout=60)
        kernel_maps = {}
        for pin in mpins.iterdir():
            info = _bpftool("map", "show", "pinned", str(pin))
            kernel_maps[info["id"]] = info
        assert len(kernel_maps) == len(obj.maps)
        by_name = {}
        for spec in obj.maps.values():
            # libbpf names global data maps "<object name prefix>.data" etc.
            [info] = [m for m in kernel_maps.values()
                      if (m["name"].endswith(spec.name) if spec.is_global_data else m["name"] == spec.name)]
            by_name[spec.name] = info
            assert info["type"] == spec.type.name.lower()
            assert (info["bytes_key"], info["bytes_value"], info["max_entries"]) == (
                spec.key_size, spec.value_size, spec.max_entries), spec.name
            assert info["flags"] & ~MapFlag.MMAPABLE == spec.flags, spec.name
        # prog_three uses no helper the verifier would inline: xlated = our linked program, slot for slot
        linked = link(obj, "prog_three")
        show = _bpftool("prog", "show", "pinned", str(pins / "prog_three"))
        assert show["bytes_xlated"] // 8 == len(linked.insns)
        # libbpf also binds every .rodata map to every program (BPF_PROG_BIND_MAP)
        rodata = {by_name[m.name]["id"] for m in obj.maps.values() if m.origin == MapOrigin.RODATA}
        assert set(show["map_ids"]) == {by_name[r.target]["id"] for r in linked.map_refs} | rodata
        xlated = _bpftool("prog", "dump", "xlated", "pinned", str(pins / "prog_three"), "opcodes")
        ours = [i for n, i in enumerate(linked.insns) if not (n and linked.insns[n - 1].is_lddw)]
        assert len(xlated) == len(ours)
        for mine, theirs in zip(ours, xlated):
            op = theirs["opcodes"]
            assert (int(op["code"], 16), int(op["dst_reg"], 16)) == (mine.code, mine.dst)
            if mine.is_subprog_call:
                assert int(op["src_reg"], 16) == PseudoCall.CALL
        for name in obj.programs:
            show = _bpftool("prog", "show", "pinned", str(pins / name))
            assert set(show["map_ids"]) == {by_name[r.target]["id"] for r in link(obj, name).map_refs} | rodata
    finally:
        shutil.rmtree(pins, ignore_errors=True)
        shutil.rmtree(mpins, ignore_errors=True)
