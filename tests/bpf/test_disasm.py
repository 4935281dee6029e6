"""Tests for vxdp.bpf.disasm: exact spellings, the line layout, the raw fallback, and
agreement with the text ``bpftool prog dump xlated`` prints for a program the kernel loaded.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

from vxdp.bpf.asm import assemble
from vxdp.bpf.disasm import disassemble, format_insn, helper_name, insn_width
from vxdp.bpf.isa import LDDW, Insn, PseudoSrc, decode


def _slots(hexbytes: str) -> list[Insn]:
    return decode(bytes.fromhex(hexbytes))


# Bytes as llvm-objdump shows them (code, src<<4|dst, off le16, imm le32) and the text we must print.
SPELLINGS = [
    ("b7 00 00 00 02 00 00 00", "r0 = 2"),
    ("b4 03 00 00 ff ff ff ff", "w3 = -1"),
    ("61 11 04 00 00 00 00 00", "r1 = *(u32 *)(r1 +4)"),
    ("79 a2 f0 ff 00 00 00 00", "r2 = *(u64 *)(r10 -16)"),
    ("91 21 fe ff 00 00 00 00", "r1 = *(s8 *)(r2 -2)"),
    ("89 21 00 00 00 00 00 00", "r1 = *(s16 *)(r2 +0)"),
    ("81 21 04 00 00 00 00 00", "r1 = *(s32 *)(r2 +4)"),
    ("7b 1a f8 ff 00 00 00 00", "*(u64 *)(r10 -8) = r1"),
    ("72 0a f0 ff 2a 00 00 00", "*(u8 *)(r10 -16) = 42"),
    ("6a 01 02 00 fe ff ff ff", "*(u16 *)(r1 +2) = -2"),
    ("07 01 00 00 01 00 00 00", "r1 += 1"),
    ("07 02 00 00 fc ff ff ff", "r2 += -4"),
    ("1f 21 00 00 00 00 00 00", "r1 -= r2"),
    ("2c 21 00 00 00 00 00 00", "w1 *= w2"),
    ("37 03 00 00 07 00 00 00", "r3 /= 7"),
    ("37 03 01 00 f9 ff ff ff", "r3 s/= -7"),
    ("9c 21 01 00 00 00 00 00", "w1 s%= w2"),
    ("97 01 00 00 0a 00 00 00", "r1 %= 10"),
    ("4f 76 00 00 00 00 00 00", "r6 |= r7"),
    ("54 01 00 00 ff 00 00 00", "w1 &= 255"),
    ("67 01 00 00 38 00 00 00", "r1 <<= 56"),
    ("7c 21 00 00 00 00 00 00", "w1 >>= w2"),
    ("c7 01 00 00 38 00 00 00", "r1 s>>= 56"),
    ("af 21 00 00 00 00 00 00", "r1 ^= r2"),
    ("bc 21 00 00 00 00 00 00", "w1 = w2"),
    ("bf 61 00 00 00 00 00 00", "r1 = r6"),
    ("bf 21 08 00 00 00 00 00", "r1 = (s8)r2"),
    ("bc 21 10 00 00 00 00 00", "w1 = (s16)w2"),
    ("bf 21 20 00 00 00 00 00", "r1 = (s32)r2"),
    ("bf 21 01 00 00 00 01 00", "r1 = addr_space_cast(r2, 1, 0)"),
    ("87 01 00 00 00 00 00 00", "r1 = -r1"),
    ("84 01 00 00 00 00 00 00", "w1 = -w1"),
    ("dc 01 00 00 10 00 00 00", "r1 = be16 r1"),
    ("d4 01 00 00 20 00 00 00", "r1 = le32 r1"),
    ("dc 06 00 00 40 00 00 00", "r6 = be64 r6"),
    ("d7 01 00 00 10 00 00 00", "r1 = bswap16 r1"),
    ("d7 01 00 00 40 00 00 00", "r1 = bswap64 r1"),
    ("25 01 05 00 03 00 00 00", "if r1 > 0x3 goto pc+5"),
    ("15 00 02 00 00 00 00 00", "if r0 == 0x0 goto pc+2"),
    ("ce 21 fd ff 00 00 00 00", "if w1 s< w2 goto pc-3"),
    ("65 01 06 00 fc ff ff ff", "if r1 s> 0xfffffffc goto pc+6"),
    ("45 03 00 00 01 00 00 00", "if r3 & 0x1 goto pc+0"),
    ("5e 21 01 00 00 00 00 00", "if w1 != w2 goto pc+1"),
    ("b5 01 01 00 0a 00 00 00", "if r1 <= 0xa goto pc+1"),
    ("7d 21 ff 7f 00 00 00 00", "if r1 s>= r2 goto pc+32767"),
    ("05 00 fe ff 00 00 00 00", "goto pc-2"),
    ("06 00 00 00 a0 86 01 00", "gotol pc+100000"),
    ("e5 00 03 00 00 00 00 00", "may_goto pc+3"),
    ("85 00 00 00 01 00 00 00", "call bpf_map_lookup_elem#1"),
    ("85 00 00 00 0c 00 00 00", "call bpf_tail_call#12"),
    ("85 10 00 00 0c 00 00 00", "call pc+12"),
    ("85 10 00 00 ff ff ff ff", "call pc-1"),
    ("85 20 00 00 d2 04 00 00", "call kfunc#1234"),
    ("85 20 03 00 d2 04 00 00", "call kfunc#1234[btf:3]"),
    ("85 00 00 00 ff ff 00 00", "call unknown#65535"),
    ("95 00 00 00 00 00 00 00", "exit"),
    ("18 01 00 00 88 77 66 55 00 00 00 00 44 33 22 11", "r1 = 0x1122334455667788 ll"),
    ("18 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00", "r1 = 0x0 ll"),
    ("18 11 00 00 03 00 00 00 00 00 00 00 00 00 00 00", "r1 = map[fd:3] ll"),
    ("18 21 00 00 03 00 00 00 00 00 00 00 10 00 00 00", "r1 = map[fd:3][0]+16 ll"),
    ("18 31 00 00 7b 00 00 00 00 00 00 00 00 00 00 00", "r1 = btf_id[123] ll"),
    ("18 31 00 00 7b 00 00 00 00 00 00 00 04 00 00 00", "r1 = btf_id[123][btf:4] ll"),
    ("18 42 00 00 04 00 00 00 00 00 00 00 00 00 00 00", "r2 = func[pc+4] ll"),
    ("18 51 00 00 02 00 00 00 00 00 00 00 00 00 00 00", "r1 = map[idx:2] ll"),
    ("18 61 00 00 02 00 00 00 00 00 00 00 08 00 00 00", "r1 = map[idx:2]+8 ll"),
    ("db 21 00 00 00 00 00 00", "lock *(u64 *)(r1 +0) += r2"),
    ("c3 21 08 00 40 00 00 00", "lock *(u32 *)(r1 +8) |= r2"),
    ("db 21 00 00 50 00 00 00", "lock *(u64 *)(r1 +0) &= r2"),
    ("c3 21 00 00 a0 00 00 00", "lock *(u32 *)(r1 +0) ^= r2"),
    ("c3 21 00 00 01 00 00 00", "r2 = atomic_fetch_add((u32 *)(r1 +0), r2)"),
    ("db 21 00 00 51 00 00 00", "r2 = atomic64_fetch_and((u64 *)(r1 +0), r2)"),
    ("db 21 f8 ff 41 00 00 00", "r2 = atomic64_fetch_or((u64 *)(r1 -8), r2)"),
    ("c3 21 00 00 a1 00 00 00", "r2 = atomic_fetch_xor((u32 *)(r1 +0), r2)"),
    ("db 21 00 00 e1 00 00 00", "r2 = atomic64_xchg((u64 *)(r1 +0), r2)"),
    ("db 21 00 00 f1 00 00 00", "r0 = atomic64_cmpxchg((u64 *)(r1 +0), r0, r2)"),
    ("c3 21 00 00 f1 00 00 00", "r0 = atomic_cmpxchg((u32 *)(r1 +0), r0, r2)"),
    ("d3 21 08 00 00 01 00 00", "r1 = load_acquire((u8 *)(r2 +8))"),
    ("cb 21 08 00 10 01 00 00", "store_release((u16 *)(r1 +8), r2)"),
    ("20 00 00 00 0c 00 00 00", "r0 = *(u32 *)skb[12]"),
    ("30 00 00 00 0e 00 00 00", "r0 = *(u8 *)skb[14]"),
    ("48 30 00 00 fc ff ff ff", "r0 = *(u16 *)skb[r3 + -4]"),
    # Not one known form: every field spelled out.
    ("ff 00 00 00 00 00 00 00", "raw(code=0xff, dst=0, src=0, off=0, imm=0)"),
    ("0f 21 00 00 01 00 00 00", "raw(code=0x0f, dst=1, src=2, off=0, imm=1)"),  # X form with imm
    ("07 21 00 00 01 00 00 00", "raw(code=0x07, dst=1, src=2, off=0, imm=1)"),  # K form with src
    ("b7 01 01 00 01 00 00 00", "raw(code=0xb7, dst=1, src=0, off=1, imm=1)"),  # off on a mov K
    ("bc 21 20 00 00 00 00 00", "raw(code=0xbc, dst=1, src=2, off=32, imm=0)"),  # movsx32 from s32
    ("dc 01 00 00 08 00 00 00", "raw(code=0xdc, dst=1, src=0, off=0, imm=8)"),  # be8
    ("df 01 00 00 10 00 00 00", "raw(code=0xdf, dst=1, src=0, off=0, imm=16)"),  # ALU64|END|X
    ("8d 00 00 00 01 00 00 00", "raw(code=0x8d, dst=0, src=0, off=0, imm=1)"),  # call with X
    ("86 00 00 00 01 00 00 00", "raw(code=0x86, dst=0, src=0, off=0, imm=1)"),  # call in JMP32
    ("85 30 00 00 01 00 00 00", "raw(code=0x85, dst=0, src=3, off=0, imm=1)"),  # call src 3
    ("95 01 00 00 00 00 00 00", "raw(code=0x95, dst=1, src=0, off=0, imm=0)"),
    ("05 00 01 00 01 00 00 00", "raw(code=0x05, dst=0, src=0, off=1, imm=1)"),  # ja with imm
    ("d3 21 00 00 00 00 00 00", "raw(code=0xd3, dst=1, src=2, off=0, imm=0)"),  # u8 atomic add
    ("db 21 00 00 02 00 00 00", "raw(code=0xdb, dst=1, src=2, off=0, imm=2)"),  # bad atomic op
    ("99 21 00 00 00 00 00 00", "raw(code=0x99, dst=1, src=2, off=0, imm=0)"),  # s64 load
    ("38 00 00 00 00 00 00 00", "raw(code=0x38, dst=0, src=0, off=0, imm=0)"),  # abs u64
    ("00 00 00 00 00 00 00 00", "raw(code=0x00, dst=0, src=0, off=0, imm=0)"),  # lone second slot
    ("18 01 00 00 01 00 00 00", "raw(code=0x18, dst=1, src=0, off=0, imm=1)"),  # lddw without its pair
]


@pytest.mark.parametrize(("hexbytes", "text"), SPELLINGS, ids=[t for _, t in SPELLINGS])
def test_spelling(hexbytes: str, text: str) -> None:
    insns = _slots(hexbytes)
    assert format_insn(insns, 0) == text
    assert disassemble(insns) == [f"   0: ({insns[0].code:02x}) {text}"]
    assert assemble(text) == insns


def test_bad_lddw_pairs_print_both_slots_raw() -> None:
    bad_second = [Insn(LDDW, 1, 0, 0, 5), Insn(0, 1, 0, 0, 0)]  # second slot with a register
    map_fd_hi = [Insn(LDDW, 1, PseudoSrc.MAP_FD, 0, 3), Insn(0, 0, 0, 0, 9)]  # fd form with upper half
    unknown_src = [Insn(LDDW, 1, 7, 0, 3), Insn(0)]
    off_set = [Insn(LDDW, 1, 0, 4, 3), Insn(0)]
    for pair in (bad_second, map_fd_hi, unknown_src, off_set):
        lines = disassemble(pair + [Insn(0x95)])
        assert [line[:9] for line in lines] == ["   0: (18", "   1: (00", "   2: (95"], lines
        assert "raw(" in lines[0] and "raw(" in lines[1]
        assert insn_width(pair, 0) == 1
        assert assemble(lines) == pair + [Insn(0x95)]


def test_line_layout_skips_second_lddw_slot_and_annotates() -> None:
    insns = assemble("r1 = map[fd:4] ll\nr2 = 7\ncall bpf_map_lookup_elem#1\nexit")
    notes = {0: "map counts", 3: "the lookup\nspans lines"}
    lines = disassemble(insns, annotate=lambda i, insn: notes.get(i))
    assert lines == [
        "   0: (18) r1 = map[fd:4] ll  ; map counts",
        "   2: (b7) r2 = 7",
        "   3: (85) call bpf_map_lookup_elem#1  ; the lookup spans lines",
        "   4: (95) exit",
    ]
    assert assemble(lines) == insns
    assert insn_width(insns, 0) == 2 and insn_width(insns, 2) == 1
    assert disassemble(insns, line_numbers=False)[1] == "r2 = 7"
    assert format_insn(insns, 1) == "raw(code=0x00, dst=0, src=0, off=0, imm=0)"
    with pytest.raises(IndexError):
        format_insn(insns, 5)


def test_helper_names_come_from_the_helper_table() -> None:
    assert helper_name(1) == "bpf_map_lookup_elem"
    assert helper_name(6) == "bpf_trace_printk"
    assert helper_name(10**6) is None


# --- against the real bpftool ------------------------------------------------------------------

BPFTOOL_PROG = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 8); __type(key, __u32); __type(value, __u64); } counts SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    unsigned char *p = data;
    if (data + 34 > end) return XDP_ABORTED;
    __u32 proto = p[23];
    __u64 mix = ((__u64)p[26] << 24 | p[27] << 16 | p[28] << 8 | p[29]) * 0x9e3779b97f4a7c15ULL;
    __u32 h = (__u32)(mix >> 32) ^ (__u32)mix;
    if ((signed char)p[14] < 0x45) return XDP_DROP;
    h ^= __builtin_bswap32(*(__u32 *)(p + 12));
    if (p[13] == 0xdd) h = -h;
    __u64 *v = bpf_map_lookup_elem(&counts, &proto);
    if (v) __sync_fetch_and_add(v, h & 0xff ? 1 : 2);
    return h % 7 == 3 ? XDP_TX : XDP_PASS;
}
char _license[] SEC("license") = "GPL";
"""


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stderr}{done.stdout}"
    return done.stdout


def _json_slots(entry: dict) -> list[Insn]:
    """The bytes of one bpftool JSON ``opcodes`` entry (a lddw carries its second slot in ``imm``)."""
    o = entry["opcodes"]
    imm = bytes(int(b, 16) for b in o["imm"])
    first = bytes([int(o["code"], 16), int(o["src_reg"], 16) << 4 | int(o["dst_reg"], 16)])
    first += bytes(int(b, 16) for b in o["off"]) + imm[:4]
    return decode(first + imm[4:])


@pytest.mark.privileged
def test_text_equals_bpftool_xlated(tmp_path: Path) -> None:
    src, obj = tmp_path / "prog.c", tmp_path / "prog.o"
    src.write_text(BPFTOOL_PROG)
    _run("clang", "-O2", "-g", "-target", "bpf", "-mcpu=v3", f"-I/usr/include/{platform.machine()}-linux-gnu",
         "-c", str(src), "-o", str(obj))
    if not os.path.ismount("/sys/fs/bpf"):
        _run("mount", "-t", "bpf", "bpf", "/sys/fs/bpf")
    pin = f"/sys/fs/bpf/vxdp_test_disasm_{os.getpid()}"
    try:
        _run("bpftool", "prog", "load", str(obj), pin)
        plain = _run("bpftool", "prog", "dump", "xlated", "pinned", pin)
        entries = json.loads(_run("bpftool", "-j", "prog", "dump", "xlated", "pinned", pin, "opcodes"))
    finally:
        if os.path.exists(pin):
            os.unlink(pin)

    # bpftool's instruction lines (it also prints the prototype and "; source" lines).
    theirs = [line for line in plain.splitlines() if line[:5].strip().rstrip(":").isdigit()]
    assert len(theirs) == len(entries)
    slots = [slot for entry in entries for slot in _json_slots(entry)]
    ours = disassemble(slots)
    assert len(ours) == len(theirs)

    compared = 0
    for entry, our_line, their_line in zip(entries, ours, theirs):
        insn = _json_slots(entry)[0]
        if insn.is_call or (insn.is_lddw and insn.src != PseudoSrc.IMM):
            continue  # relocated by the kernel: bpftool names symbols and map ids there
        if insn.is_lddw:
            our_line = our_line.removesuffix(" ll")  # our one extension to a plain lddw
        assert our_line == their_line
        compared += 1
    assert compared >= 25
    joined = "\n".join(theirs)
    for needle in ("w", "lock", "goto pc", "0x", "be32", "*(u64 *)", "0x9e3779b97f4a7c15"):
        assert needle in joined, needle  # the program really exercised these forms

    # Everything bpftool printed reads back as the kernel's bytes, calls apart (in xlated
    # form a subprogram call keeps its pc offset in `off`, which bpftool does not print).
    texts = [e["disasm"] for e in entries if not _json_slots(e)[0].is_call]
    expected = [s for e in entries if not _json_slots(e)[0].is_call for s in _json_slots(e)]
    assert assemble(texts) == expected
