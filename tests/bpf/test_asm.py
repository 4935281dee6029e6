"""Tests for vxdp.bpf.asm: ``assemble(disassemble(p)) == p`` byte for byte, and clear errors.

The round trip is checked three ways: generated instructions of every form the
ISA has (and no form may fall back to ``raw(...)``), arbitrary 8-byte slots (the
raw fallback must carry every bit), and the code clang actually emits (the sample
corpus and a few C snippets compiled here).
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import pytest
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vxdp.bpf.asm import AsmError, assemble
from vxdp.bpf.disasm import (
    ALU_OP_TEXT,
    ATOMIC_CMPXCHG,
    ATOMIC_LOAD_ACQ,
    ATOMIC_STORE_REL,
    ATOMIC_XCHG,
    JMP_OP_TEXT,
    disassemble,
)
from vxdp.bpf.isa import LDDW, AluOp, Cls, Insn, JmpOp, Mode, PseudoCall, PseudoSrc, Size, Src, decode, encode

REPO = Path(__file__).resolve().parents[2]

# --- generated instructions of every form ------------------------------------------------

reg = st.integers(0, 15)  # any nibble prints as a register and must come back
off16 = st.integers(-(1 << 15), (1 << 15) - 1)
imm32 = st.integers(-(1 << 31), (1 << 31) - 1)
u32 = st.integers(0, (1 << 32) - 1)


def _s32(v: int) -> int:
    return v - (1 << 32) if v >= (1 << 31) else v


@st.composite
def alu(draw: st.DrawFn) -> list[Insn]:
    cls = draw(st.sampled_from([Cls.ALU, Cls.ALU64]))
    op = draw(st.sampled_from(sorted(ALU_OP_TEXT)))
    signed = op in (AluOp.DIV, AluOp.MOD) and draw(st.booleans())
    if draw(st.booleans()):
        return [Insn(cls | op | Src.X, draw(reg), draw(reg), int(signed))]
    return [Insn(cls | op, draw(reg), 0, int(signed), draw(imm32))]


@st.composite
def alu_special(draw: st.DrawFn) -> list[Insn]:
    kind = draw(st.sampled_from(["neg", "end", "bswap", "movsx", "movsx32", "arena"]))
    d = draw(reg)
    if kind == "neg":
        return [Insn(draw(st.sampled_from([Cls.ALU, Cls.ALU64])) | AluOp.NEG, d)]
    if kind == "end":
        src = draw(st.sampled_from([Src.K, Src.X]))
        return [Insn(Cls.ALU | AluOp.END | src, d, imm=draw(st.sampled_from([16, 32, 64])))]
    if kind == "bswap":
        return [Insn(Cls.ALU64 | AluOp.END, d, imm=draw(st.sampled_from([16, 32, 64])))]
    if kind == "movsx":
        return [Insn(Cls.ALU64 | AluOp.MOV | Src.X, d, draw(reg), draw(st.sampled_from([8, 16, 32])))]
    if kind == "movsx32":
        return [Insn(Cls.ALU | AluOp.MOV | Src.X, d, draw(reg), draw(st.sampled_from([8, 16])))]
    return [Insn(Cls.ALU64 | AluOp.MOV | Src.X, d, draw(reg), 1, draw(imm32))]  # addr_space_cast


@st.composite
def jmp(draw: st.DrawFn) -> list[Insn]:
    kind = draw(st.sampled_from(["cond", "ja", "gotol", "may_goto", "call", "exit"]))
    if kind == "cond":
        cls = draw(st.sampled_from([Cls.JMP, Cls.JMP32]))
        op = draw(st.sampled_from(sorted(JMP_OP_TEXT)))
        if draw(st.booleans()):
            return [Insn(cls | op | Src.X, draw(reg), draw(reg), draw(off16))]
        return [Insn(cls | op, draw(reg), 0, draw(off16), draw(imm32))]
    if kind == "ja":
        return [Insn(Cls.JMP | JmpOp.JA, off=draw(off16))]
    if kind == "gotol":
        return [Insn(Cls.JMP32 | JmpOp.JA, imm=draw(imm32))]
    if kind == "may_goto":
        return [Insn(Cls.JMP | 0xE0, off=draw(off16))]
    if kind == "exit":
        return [Insn(Cls.JMP | JmpOp.EXIT)]
    src = draw(st.sampled_from(list(PseudoCall)))
    off = draw(off16) if src == PseudoCall.KFUNC else 0
    imm = draw(st.one_of(st.integers(0, 220), imm32))  # known helper ids and anything else
    return [Insn(Cls.JMP | JmpOp.CALL, 0, src, off, imm)]


@st.composite
def mem(draw: st.DrawFn) -> list[Insn]:
    kind = draw(st.sampled_from(["ldx", "ldsx", "st", "stx", "abs", "ind"]))
    size = draw(st.sampled_from(list(Size)))
    small = draw(st.sampled_from([Size.W, Size.H, Size.B]))
    if kind == "ldx":
        return [Insn(Cls.LDX | size | Mode.MEM, draw(reg), draw(reg), draw(off16))]
    if kind == "ldsx":
        return [Insn(Cls.LDX | small | Mode.MEMSX, draw(reg), draw(reg), draw(off16))]
    if kind == "st":
        return [Insn(Cls.ST | size | Mode.MEM, draw(reg), 0, draw(off16), draw(imm32))]
    if kind == "stx":
        return [Insn(Cls.STX | size | Mode.MEM, draw(reg), draw(reg), draw(off16))]
    if kind == "abs":
        return [Insn(Cls.LD | small | Mode.ABS, imm=draw(imm32))]
    return [Insn(Cls.LD | small | Mode.IND, src=draw(reg), imm=draw(imm32))]


@st.composite
def atomic(draw: st.DrawFn) -> list[Insn]:
    rmw = [0x00, 0x40, 0x50, 0xA0]
    imm = draw(st.sampled_from(rmw + [op | 1 for op in rmw] + [ATOMIC_XCHG, ATOMIC_CMPXCHG] * 2
                               + [ATOMIC_LOAD_ACQ, ATOMIC_STORE_REL]))
    if imm in (ATOMIC_LOAD_ACQ, ATOMIC_STORE_REL):
        size = draw(st.sampled_from(list(Size)))
    else:
        size = draw(st.sampled_from([Size.W, Size.DW]))
    return [Insn(Cls.STX | size | Mode.ATOMIC, draw(reg), draw(reg), draw(off16), imm)]


@st.composite
def lddw(draw: st.DrawFn) -> list[Insn]:
    src = draw(st.sampled_from(list(PseudoSrc)))
    lo = draw(imm32)
    hi = 0
    if src in (PseudoSrc.IMM, PseudoSrc.MAP_VALUE, PseudoSrc.MAP_IDX_VALUE):
        hi = _s32(draw(u32))
    elif src == PseudoSrc.BTF_ID:
        hi = draw(st.sampled_from([0, draw(imm32)]))
    return [Insn(LDDW, draw(reg), src, 0, lo), Insn(0, imm=hi)]


any_form = st.one_of(alu(), alu_special(), jmp(), mem(), atomic(), lddw())


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_form, min_size=1, max_size=6))
def test_every_form_round_trips_and_none_is_raw(forms: list[list[Insn]]) -> None:
    insns = [slot for form in forms for slot in form]
    lines = disassemble(insns)
    assert len(lines) == len(forms), lines  # one line per instruction, lddw included
    assert not any("raw(" in line for line in lines), lines
    assert encode(assemble(lines)) == encode(insns)
    assert assemble(disassemble(insns, line_numbers=False)) == insns


# --- any 8-byte slot -----------------------------------------------------------------------


@settings(max_examples=2500, deadline=None)
@given(st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=8))
def test_arbitrary_slots_round_trip(slots: list[bytes]) -> None:
    insns = decode(b"".join(slots))
    assert encode(assemble(disassemble(insns))) == b"".join(slots)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([LDDW, 0x00, 0x85, 0xDB, 0xC3, 0xBF, 0xD4, 0xDC, 0xD7, 0x06]),
                          reg, reg, off16, imm32), min_size=1, max_size=8))
def test_near_miss_slots_round_trip(fields: list[tuple[int, int, int, int, int]]) -> None:
    """Codes with many special cases, every other field random: mostly reserved bits set."""
    insns = [Insn(*f) for f in fields]
    assert assemble(disassemble(insns)) == insns


# --- code clang emits ----------------------------------------------------------------------


def _text_sections(path: Path) -> dict[str, list[Insn]]:
    """Instructions of every executable section of a BPF ELF object."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        return {
            s.name: decode(s.data())
            for s in elf.iter_sections()
            if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and s["sh_type"] == "SHT_PROGBITS" and s.data_size
        }


def _sample_objects() -> list[Path]:
    return sorted((REPO / "samples" / "build").glob("**/*.o"))


def test_sample_corpus_round_trips() -> None:
    objects = _sample_objects()
    assert objects, "no sample objects under samples/build: run `make samples` first"
    sections = 0
    for path in objects:
        for name, insns in _text_sections(path).items():
            sections += 1
            lines = disassemble(insns)
            assert assemble(lines) == insns, f"{path.name} section {name}"
            assert not any("raw(" in line for line in lines), f"{path.name} {name}: clang emitted no raw slot"
    assert sections >= len(objects)


SNIPPETS = {
    "maps_and_calls": r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64); } m SEC(".maps");
static __attribute__((noinline)) int twice(int x) { return x * 2 + 1; }
SEC("xdp") int prog(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    __u32 k = 1;
    if (data + 14 > end) return XDP_ABORTED;
    unsigned char *p = data;
    __u64 *v = bpf_map_lookup_elem(&m, &k);
    if (v) { __sync_fetch_and_add(v, 1); *v ^= 0x1122334455667788ULL; }
    if ((signed char)p[0] < -3) return twice(__builtin_bswap16(p[12] << 8 | p[13])) & 3;
    return XDP_PASS;
}
char _license[] SEC("license") = "GPL";
""",
    "globals_atomics": r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
volatile __u64 counter;
volatile __u32 small = 7;
const volatile int limit = 10;
SEC("xdp") int prog(struct xdp_md *ctx) {
    __u64 old = __sync_fetch_and_add(&counter, 2);
    __sync_fetch_and_or(&small, 4);
    __u32 prev = __sync_val_compare_and_swap(&small, 7, 9);
    __sync_lock_test_and_set(&counter, old + prev);
    for (int i = 0; i < limit; i++) counter = counter * 3 / (i + 1) % 1000;
    return (int)(counter >> 40) - (int)small < 0 ? XDP_DROP : XDP_PASS;
}
char _license[] SEC("license") = "GPL";
""",
    "socket_filter": r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
unsigned long long load_byte(void *skb, unsigned long long off) asm("llvm.bpf.load.byte");
unsigned long long load_half(void *skb, unsigned long long off) asm("llvm.bpf.load.half");
SEC("socket") int prog(struct __sk_buff *skb) {
    if (load_half(skb, 12) != 0x0800) return 0;
    return load_byte(skb, 14 + skb->len % 8) == 6 ? -1 : 0;
}
char _license[] SEC("license") = "GPL";
""",
}


def _compile(tmp_path: Path, name: str, source: str, *extra: str) -> Path:
    c_file, o_file = tmp_path / f"{name}.c", tmp_path / f"{name}.o"
    c_file.write_text(source)
    done = subprocess.run(
        ["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{platform.machine()}-linux-gnu",
         *extra, "-c", str(c_file), "-o", str(o_file)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, f"clang failed on {name}:\n{done.stderr}"
    return o_file


# Atomics with fetch need -mcpu=v3; the others also build for v1 (no jmp32, no alu32).
CPUS = {"maps_and_calls": ["v1", "v3"], "globals_atomics": ["v3"], "socket_filter": ["v1", "v3"]}


@pytest.mark.parametrize(("name", "cpu"), [(n, c) for n in sorted(SNIPPETS) for c in CPUS[n]])
def test_compiled_snippets_round_trip(tmp_path: Path, name: str, cpu: str) -> None:
    obj = _compile(tmp_path, name, SNIPPETS[name], f"-mcpu={cpu}")
    sections = _text_sections(obj)
    assert sections, f"{name}: no executable section"
    for section, insns in sections.items():
        lines = disassemble(insns)
        assert assemble(lines) == insns, section
        assert not any("raw(" in line for line in lines), lines


def test_compiled_snippets_contain_the_forms_they_exercise(tmp_path: Path) -> None:
    """Guard on the test above: the snippets really produce the interesting forms."""
    seen = []
    for name, source in SNIPPETS.items():
        for insns in _text_sections(_compile(tmp_path, name, source, "-mcpu=v3")).values():
            seen += disassemble(insns, line_numbers=False)
    text = "\n".join(seen)
    for needle in ("ll", "call pc", "call bpf_map_lookup_elem#1", "lock *(u64 *)", "atomic_cmpxchg",
                   "skb[", "be16", "w", "exit"):
        assert needle in text, needle


# --- the grammar around instructions ----------------------------------------------------------


def test_prefixes_comments_blank_lines_and_labels() -> None:
    text = """
    ; a comment line
       0: (b7) r0 = 0          ; XDP_ABORTED
    top:
       1: (07) r0 += 1
    if r0 < 10 goto top        ; loop
    r2 = func[helper] ll
    call helper
    goto out
    out:
    exit
    helper:
    r0 = 2
    exit
    """
    insns = assemble(text)
    assert disassemble(insns, line_numbers=False) == [
        "r0 = 0", "r0 += 1", "if r0 < 0xa goto pc-2", "r2 = func[pc+4] ll",
        "call pc+2", "goto pc+0", "exit", "r0 = 2", "exit",
    ]


def test_list_input_and_bpftool_spellings() -> None:
    insns = assemble([
        "r1 = map[id:7]", "r2 = map[id:7][0]+8", "r3 = subprog[-2]", "call kernel-function#99",
        "call bpf_ktime_get_ns", "call __htab_map_lookup_elem#123", "r4 = map[idx:1][0]+4", "r5 = 5 ll",
    ])
    assert disassemble(insns, line_numbers=False) == [
        "r1 = map[fd:7] ll", "r2 = map[fd:7][0]+8 ll", "r3 = func[pc-2] ll", "call kfunc#99",
        "call bpf_ktime_get_ns#5", "call bpf_get_current_ancestor_cgroup_id#123", "r4 = map[idx:1]+4 ll", "r5 = 0x5 ll",
    ]


def test_number_spellings() -> None:
    assert assemble("r1 = 4294967295\nw2 = -0x10\nif w1 == 4294967295 goto pc+1\nr0 = -1 ll\nr1 += 0x10") == [
        Insn(0xB7, 1, 0, 0, -1), Insn(0xB4, 2, 0, 0, -16), Insn(0x16, 1, 0, 1, -1),
        Insn(LDDW, 0, 0, 0, -1), Insn(0, 0, 0, 0, -1), Insn(0x07, 1, 0, 0, 16),
    ]
    # bpftool's rule: a mov immediate prints in decimal, a lddw value in hex (no "ll").
    assert assemble("r1 = 0x10\nr2 = 0x9e3779b97f4a7c15") == [
        Insn(LDDW, 1, 0, 0, 16), Insn(0), Insn(LDDW, 2, 0, 0, 0x7F4A7C15), Insn(0, imm=-0x61C88647),
    ]


@pytest.mark.parametrize(
    ("text", "lineno", "reason"),
    [
        ("r0 = 1\nr0 = frobnicate\nexit", 2, "not an instruction"),
        ("\n\nr16 = 1", 3, "register number 16"),
        ("r1 += w2", 1, "mixes 32-bit"),
        ("r0 = 4294967296", 1, "does not fit 32 bits"),
        ("r0 = 0x10000000000000000 ll", 1, "does not fit 64 bits"),
        ("goto pc+40000", 1, "does not fit a signed 16-bit"),
        ("*(u64 *)(r10 -40000) = r1", 1, "does not fit a signed 16-bit"),
        ("goto nowhere", 1, "unknown label"),
        ("x:\nx:\nexit", 2, "defined twice"),
        ("   0: (bf) r0 = 2", 1, "opcode (bf) does not match"),
        ("r1 = be16 r2", 1, "writes the register it reads"),
        ("r2 = atomic64_xchg((u64 *)(r1 +0), r3)", 1, "result register"),
        ("r0 = atomic_cmpxchg((u64 *)(r1 +0), r0, r2)", 1, "does not operate on u64"),
        ("raw(code=0x100, dst=0, src=0, off=0, imm=0)", 1, "must fit 8 bits"),
        ("call 5", 1, "a call names a helper"),
        ("exit\ncall no_such_thing", 2, "unknown helper or label"),
        ("r1 = map[fd:1] [0]+", 1, "not an instruction"),
        ("if r1 <> r2 goto pc+1", 1, "unknown comparison"),
        ("r1 != r2", 1, "unknown operator"),
    ],
)
def test_errors_name_the_line(text: str, lineno: int, reason: str) -> None:
    with pytest.raises(AsmError) as info:
        assemble(text)
    assert info.value.lineno == lineno
    assert reason in str(info.value)
    assert f"line {lineno}:" in str(info.value)
    assert info.value.text == text.splitlines()[lineno - 1]
