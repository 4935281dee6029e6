"""Programs with one known class of bug each, in `vxdp.bpf.asm` text: both verifiers must refuse them.

A case's text names its maps by placeholder (``{arr}`` an array of 4 x 16 bytes,
``{one}`` an array of one 8-byte value, ``{hash}``, ``{jmp}`` a prog_array,
``{ro}`` a frozen read-only global-data map, ``{dev}`` a devmap); `MAPS` declares
them. ``says`` is a piece of our refusal's reason, so a case refused for some
other cause than its bug fails. ``btf``: load with func_info (the kernel wants
it for ``bpf_loop`` callbacks).
"""

from __future__ import annotations

from dataclasses import dataclass

from vxdp.bpf.mapspec import MapFlag, MapOrigin, MapSpec, MapType

MAPS = {
    "arr": MapSpec("arr", MapType.ARRAY, 4, 16, 4),
    "one": MapSpec("one", MapType.ARRAY, 4, 8, 1),
    "hash": MapSpec("hash", MapType.HASH, 8, 8, 16),
    "jmp": MapSpec("jmp", MapType.PROG_ARRAY, 4, 4, 2),
    "ro": MapSpec("ro", MapType.ARRAY, 4, 8, 1, flags=MapFlag.RDONLY_PROG, origin=MapOrigin.RODATA, data=bytes(8)),
    "dev": MapSpec("dev", MapType.DEVMAP, 4, 4, 4),
}


@dataclass(frozen=True)
class Bad:
    name: str
    text: str
    says: str
    btf: bool = False
    slow: bool = False  # walks the whole budget of 1,000,000 instructions (a minute in Python)


PKT = "r2 = *(u32 *)(r1 +0)\nr3 = *(u32 *)(r1 +4)\nr0 = 2\n"
META = "r2 = *(u32 *)(r1 +8)\nr3 = *(u32 *)(r1 +0)\nr0 = 2\n"


def guarded(n: int, body: str) -> str:
    """``body`` runs only when the first ``n`` bytes of the packet are proven present."""
    return f"{PKT}r4 = r2\nr4 += {n}\nif r4 > r3 goto +{body.count(chr(10)) + 1}\n{body}\nexit"


LOOKUP = "r1 = map[fd:{%s}] ll\nr2 = 0\n*(u32 *)(r10 -4) = r2\nr2 = r10\nr2 += -4\ncall bpf_map_lookup_elem\n"
LOOKUP_ARR = LOOKUP % "arr"  # a constant key below max_entries: the value is never NULL
LOOKUP_HASH = ("r1 = map[fd:{hash}] ll\nr2 = 0\n*(u64 *)(r10 -8) = r2\nr2 = r10\nr2 += -8\n"
               "call bpf_map_lookup_elem\n")
CHECKED = LOOKUP_ARR + "if r0 == 0 goto +{skip}\n"


def checked(body: str) -> str:
    """``body`` runs with r0 a non-null value of ``{arr}``; the program returns 2."""
    return CHECKED.replace("{skip}", str(body.count("\n") + 1)) + body + "\nr0 = 2\nexit"


CALLBACK = "r1 = 4\nr2 = func[cb] ll\nr3 = 0\nr4 = 0\ncall bpf_loop\nr0 = 2\nexit\ncb:\n"

BAD: list[Bad] = [
    # --- the packet -------------------------------------------------------------------------
    Bad("pkt.read without data_end check", f"{PKT}r5 = *(u8 *)(r2 +0)\nexit", "invalid access to packet"),
    Bad("pkt.off-by-one range (14 proven, byte 14 read)", guarded(14, "r5 = *(u8 *)(r2 +14)"),
        "invalid access to packet"),
    Bad("pkt.u16 straddles the proven end", guarded(14, "r5 = *(u16 *)(r2 +13)"), "invalid access to packet"),
    Bad("pkt.u64 past a 4-byte check", guarded(4, "r5 = *(u64 *)(r2 +0)"), "invalid access to packet"),
    Bad("pkt.read on the branch where the check failed",
        f"{PKT}r4 = r2\nr4 += 8\nif r4 > r3 goto +1\nexit\nr5 = *(u8 *)(r2 +0)\nexit", "invalid access to packet"),
    Bad("pkt.negative offset", guarded(8, "r5 = *(u8 *)(r2 -1)"), "invalid access to packet"),
    Bad("pkt.write without check", f"{PKT}*(u8 *)(r2 +0) = 1\nexit", "invalid access to packet"),
    Bad("pkt.check against data instead of data_end",
        f"{PKT}r4 = r2\nr4 += 8\nif r4 > r2 goto +1\nr5 = *(u8 *)(r2 +0)\nexit", "invalid access to packet"),
    Bad("pkt.variable offset not checked again",
        guarded(1, "r5 = *(u8 *)(r2 +0)\nr2 += r5\nr5 = *(u8 *)(r2 +0)"), "invalid access to packet"),
    Bad("pkt.unbounded variable offset", f"{PKT}r5 = *(u32 *)(r1 +12)\nr5 <<= 32\nr2 += r5\nexit",
        "pointer and register with unbounded"),
    Bad("pkt.pointer kept across xdp_adjust_head",
        guarded(8, "r6 = r2\nr7 = r1\nr2 = 0\ncall bpf_xdp_adjust_head\nr5 = *(u8 *)(r6 +0)\nr0 = 2"),
        "invalid mem access 'scalar'"),
    Bad("pkt.arithmetic on pkt_end", f"{PKT}r3 += 1\nexit", "pointer arithmetic on pkt_end prohibited"),
    Bad("pkt.read through pkt_end", f"{PKT}r5 = *(u8 *)(r3 +0)\nexit", "invalid mem access 'pkt_end'"),
    Bad("pkt.meta read without check against data", f"{META}r5 = *(u8 *)(r2 +0)\nexit",
        "invalid access to packet"),
    Bad("pkt.32-bit atomic on the packet", guarded(8, "r5 = 1\nlock *(u32 *)(r2 +0) += r5"),
        "BPF_ATOMIC stores into R2 pkt"),
    # --- map values and helpers ---------------------------------------------------------------
    Bad("map.null value dereferenced", f"{LOOKUP_HASH}r1 = *(u64 *)(r0 +0)\nr0 = 2\nexit",
        "invalid mem access 'map_value_or_null'"),
    Bad("map.dereference on the null branch", f"{LOOKUP_HASH}if r0 != 0 goto +1\nr1 = *(u64 *)(r0 +0)\nr0 = 2\nexit",
        "invalid mem access 'scalar'"),
    Bad("map.arithmetic before the null check", f"{LOOKUP_HASH}r0 += 4\nr0 = 2\nexit",
        "pointer arithmetic on map_value_or_null prohibited"),
    Bad("map.second lookup used unchecked",
        f"{LOOKUP_HASH}r6 = r0\n{LOOKUP_HASH}if r6 == 0 goto +1\nr1 = *(u64 *)(r0 +0)\nr0 = 2\nexit",
        "invalid mem access 'map_value_or_null'"),
    Bad("map.value read past value_size", checked("r1 = *(u64 *)(r0 +16)"), "invalid access to map value"),
    Bad("map.value off-by-one (u32 at 13 of 16)", checked("r1 = *(u32 *)(r0 +13)"), "invalid access to map value"),
    Bad("map.value negative offset", checked("r1 = *(u32 *)(r0 -4)"), "invalid access to map value"),
    Bad("map.value write past value_size", checked("*(u64 *)(r0 +12) = 1"), "invalid access to map value"),
    Bad("map.value unbounded variable offset", checked("r1 = *(u64 *)(r0 +0)\nr0 += r1\nr1 = *(u8 *)(r0 +0)"),
        "unbounded"),
    Bad("map.value variable offset too large", checked("r1 = *(u64 *)(r0 +0)\nr1 &= 15\nr0 += r1\n"
                                                      "r1 = *(u64 *)(r0 +0)"), "invalid access to map value"),
    Bad("map.value negative variable offset", checked("r1 = *(u64 *)(r0 +0)\nr1 |= -8\nr0 += r1\n"
                                                     "r1 = *(u8 *)(r0 +0)"), "min value is negative"),
    Bad("map.key pointer is NULL", "r1 = map[fd:{arr}] ll\nr2 = 0\ncall bpf_map_lookup_elem\nr0 = 2\nexit",
        "R2 type=scalar expected="),
    Bad("map.key runs past the stack top", "r1 = map[fd:{arr}] ll\nr2 = r10\nr2 += -2\n*(u16 *)(r10 -2) = 0\n"
        "call bpf_map_lookup_elem\nr0 = 2\nexit", "invalid indirect access to stack"),
    Bad("map.lookup given a stack pointer for the map", "r1 = r10\nr1 += -8\n*(u64 *)(r10 -8) = 0\nr2 = r1\n"
        "call bpf_map_lookup_elem\nr0 = 2\nexit", "expected=map_ptr"),
    Bad("map.update value runs past the stack top",
        "r1 = map[fd:{arr}] ll\n*(u64 *)(r10 -8) = 0\nr2 = r10\nr2 += -8\nr3 = r10\nr3 += -8\nr4 = 0\n"
        "call bpf_map_update_elem\nr0 = 2\nexit", "invalid indirect access to stack"),
    Bad("map.lookup in a prog_array", LOOKUP % "jmp" + "r0 = 2\nexit", "cannot pass map_type 3"),
    Bad("map.tail_call through an array", "r2 = map[fd:{arr}] ll\nr3 = 0\ncall bpf_tail_call\nr0 = 2\nexit",
        "cannot pass map_type 2"),
    Bad("map.redirect_map through a hash", "r1 = map[fd:{hash}] ll\nr2 = 0\nr3 = 0\ncall bpf_redirect_map\nexit",
        "cannot pass map_type 1"),
    Bad("map.arithmetic on a map pointer", "r1 = map[fd:{arr}] ll\nr1 += 8\nr0 = 2\nexit",
        "pointer arithmetic on map_ptr prohibited"),
    Bad("map.store into a read-only map (st)", "r1 = map[fd:{ro}][0]+0 ll\n*(u32 *)(r1 +0) = 1\nr0 = 2\nexit",
        "write into map forbidden"),
    Bad("map.helper writes into a read-only map",
        "r3 = map[fd:{ro}][0]+0 ll\nr2 = 0\nr4 = 4\ncall bpf_xdp_load_bytes\nr0 = 2\nexit", "write into map forbidden"),
    Bad("map.direct value offset past value_size", "r1 = map[fd:{one}][0]+8 ll\nr0 = 2\nexit",
        "invalid access to map value pointer"),
    Bad("map.fd that is no map", "r1 = map[fd:999] ll\nr0 = 2\nexit", "is not pointing to valid bpf_map"),
    Bad("helper.unknown id", "call unknown#9999\nr0 = 2\nexit", "invalid func unknown#9999"),
    Bad("helper.not for XDP (skb_load_bytes)", "r2 = 0\nr3 = r10\nr3 += -8\nr4 = 8\ncall bpf_skb_load_bytes\n"
        "r0 = 2\nexit", "invalid func bpf_skb_load_bytes"),
    Bad("helper.ctx argument is a stack pointer", "r1 = r10\nr2 = 0\ncall bpf_xdp_adjust_head\nr0 = 2\nexit",
        "expected=ctx"),
    Bad("helper.ctx argument modified", "r1 += 4\nr2 = 0\ncall bpf_xdp_adjust_head\nr0 = 2\nexit",
        "dereference of modified ctx ptr"),
    Bad("helper.argument never written", "r1 = map[fd:{arr}] ll\ncall bpf_map_lookup_elem\nr0 = 2\nexit",
        "R2 !read_ok"),
    Bad("helper.r1 read after a call clobbered it", "call bpf_ktime_get_ns\nr0 = r1\nexit", "R1 !read_ok"),
    Bad("helper.csum_diff size unbounded", "r2 = *(u32 *)(r1 +12)\nr1 = r10\nr1 += -8\n*(u64 *)(r10 -8) = 0\n"
        "r3 = 0\nr4 = 0\nr5 = 0\ncall bpf_csum_diff\nr0 = 2\nexit", "unbounded memory access"),
    Bad("helper.csum_diff size past the stack", "r1 = r10\nr1 += -8\n*(u64 *)(r10 -8) = 0\nr2 = 16\nr3 = 0\n"
        "r4 = 0\nr5 = 0\ncall bpf_csum_diff\nr0 = 2\nexit", "invalid indirect access to stack"),
    Bad("helper.load_bytes into pkt_end", f"{PKT}r6 = r3\nr2 = 0\nr3 = r6\nr4 = 4\ncall bpf_xdp_load_bytes\n"
        "r0 = 2\nexit", "R3 type=pkt_end"),
    Bad("helper.bpf_loop callback returns 5", CALLBACK + "r0 = 5\nexit", "At callback return", btf=True),
    Bad("helper.kfunc call", "call kfunc#1\nr0 = 2\nexit", "kfunc"),
    # --- the context --------------------------------------------------------------------------
    Bad("ctx.write data (stx)", "r2 = 0\n*(u32 *)(r1 +0) = r2\nr0 = 2\nexit", "invalid bpf_context access"),
    Bad("ctx.write rx_queue_index", "*(u32 *)(r1 +16) = 1\nr0 = 2\nexit", "invalid bpf_context access"),
    Bad("ctx.offset past struct xdp_md", "r0 = *(u32 *)(r1 +24)\nexit", "invalid bpf_context access"),
    Bad("ctx.negative offset", "r0 = *(u32 *)(r1 -4)\nexit", "invalid bpf_context access"),
    Bad("ctx.narrow read of ingress_ifindex", "r0 = *(u8 *)(r1 +12)\nexit", "invalid bpf_context access"),
    Bad("ctx.u16 read of rx_queue_index", "r0 = *(u16 *)(r1 +16)\nexit", "invalid bpf_context access"),
    Bad("ctx.u64 read of data", "r0 = *(u64 *)(r1 +0)\nexit", "invalid bpf_context access"),
    Bad("ctx.misaligned read", "r0 = *(u32 *)(r1 +2)\nexit", "invalid bpf_context access"),
    Bad("ctx.egress_ifindex outside devmap programs", "r0 = *(u32 *)(r1 +20)\nexit", "invalid bpf_context access"),
    Bad("ctx.dereference of a modified pointer", "r1 += 4\nr0 = *(u32 *)(r1 +0)\nexit",
        "dereference of modified ctx ptr"),
    # --- the stack ----------------------------------------------------------------------------
    Bad("stack.write below the frame", "r1 = 0\n*(u64 *)(r10 -520) = r1\nr0 = 2\nexit", "invalid write to stack"),
    Bad("stack.write at r10 + 0", "r1 = 0\n*(u64 *)(r10 +0) = r1\nr0 = 2\nexit", "invalid write to stack"),
    Bad("stack.read above the frame", "r0 = *(u32 *)(r10 +4)\nexit", "invalid read from stack"),
    Bad("stack.misaligned u32", "r1 = 0\n*(u32 *)(r10 -6) = r1\nr0 = 2\nexit", "misaligned stack access"),
    Bad("stack.misaligned u64 read", "r1 = 0\n*(u64 *)(r10 -16) = r1\nr0 = *(u64 *)(r10 -12)\nexit",
        "misaligned stack access"),
    Bad("stack.partial fill of a spilled pointer", "*(u64 *)(r10 -8) = r1\nr0 = *(u32 *)(r10 -8)\nexit",
        "invalid size of register fill"),
    Bad("stack.unbounded variable offset", "r2 = *(u32 *)(r1 +12)\nr3 = r10\nr3 -= r2\n*(u8 *)(r3 -1) = 0\n"
        "r0 = 2\nexit", "subtraction from stack pointer prohibited"),
    Bad("stack.frame pointer overwritten", "r10 = *(u64 *)(r10 -8)\nr0 = 2\nexit", "frame pointer is read only"),
    # --- registers ----------------------------------------------------------------------------
    Bad("reg.exit with r0 never written", "exit", "R0 !read_ok"),
    Bad("reg.r0 written on one path only", "r2 = *(u32 *)(r1 +16)\nif r2 == 0 goto +1\nr0 = 2\nexit",
        "R0 !read_ok"),
    Bad("reg.arithmetic on a register never written", "r0 = 0\nr0 += r7\nexit", "R7 !read_ok"),
    Bad("reg.dereference of a number", "r2 = 64\nr0 = *(u8 *)(r2 +0)\nexit", "invalid mem access 'scalar'"),
    # --- pointer arithmetic -------------------------------------------------------------------
    Bad("ptr.bitwise and on a pointer", "r1 &= 1\nr0 = 2\nexit", "bitwise operator &= on pointer prohibited"),
    Bad("ptr.multiplication of a pointer", "r1 *= 2\nr0 = 2\nexit", "pointer arithmetic with *= operator"),
    Bad("ptr.32-bit arithmetic on a pointer", "w1 += 1\nr0 = 2\nexit", "32-bit pointer arithmetic prohibited"),
    Bad("ptr.scalar minus pointer", "r0 = 0\nr0 -= r10\nr0 = 2\nexit", "tried to subtract pointer from scalar"),
    Bad("ptr.pointer plus pointer", "r2 = r10\nr2 += r1\nr0 = 2\nexit", "pointer += pointer prohibited"),
    Bad("ptr.shift of a pointer", "r2 = r10\nr2 <<= 1\nr0 = 2\nexit", "pointer arithmetic with <<= operator"),
    # --- ALU encodings --------------------------------------------------------------------------
    Bad("alu.signed modulo by constant zero", "r0 = 1\nr0 s%= 0\nexit", "div by zero"),
    Bad("alu.shift by a negative constant", "r0 = 1\nr0 <<= -1\nexit", "invalid shift"),
    Bad("alu.32-bit shift by 40", "w0 = 1\nw0 <<= 40\nexit", "invalid shift 40"),
    Bad("alu.unknown opcode", "r0 = 2\nraw(code=0xf7, dst=0, src=0, off=0, imm=0)\nexit", "unknown opcode f7"),
    Bad("alu.neg with a source register", "r0 = 2\nraw(code=0x8f, dst=0, src=1, off=0, imm=0)\nexit",
        "unknown opcode 8f"),
    Bad("alu.neg with an immediate", "r0 = 2\nraw(code=0x87, dst=0, src=0, off=0, imm=1)\nexit",
        "BPF_NEG uses reserved fields"),
    Bad("alu.exit with reserved fields", "r0 = 2\nraw(code=0x95, dst=1, src=0, off=0, imm=0)", "BPF_EXIT uses reserved"),
    # --- control flow --------------------------------------------------------------------------
    Bad("cfg.jump past the end", "r0 = 2\ngoto +5\nexit", "jump out of range"),
    Bad("cfg.jump before the start", "goto -3\nr0 = 2\nexit", "jump out of range"),
    Bad("cfg.jump into a lddw", "r0 = 2\nif r0 == 0 goto +1\nr1 = 0x100000000 ll\nexit", "middle of a lddw"),
    Bad("cfg.falls off the end", "r0 = 2", "last insn is not an exit or jmp"),
    Bad("cfg.code after exit", "r0 = 2\nexit\nr0 = 1\nexit", "unreachable insn"),
    Bad("cfg.loop that never changes its state", "r1 = 0\nr0 = 2\nl:\nr1 += 0\nif r1 != 1 goto l\nexit",
        "infinite loop detected"),
    Bad("cfg.loop on an unknown count", "r1 = *(u32 *)(r1 +16)\nr0 = 2\nl:\nr1 += -1\nif r1 != 0 goto l\nexit",
        "loops too long", slow=True),
    # --- bpf-to-bpf calls ----------------------------------------------------------------------
    Bad("call.nine frames deep", "r1 = 0\ncall f1\nr0 = 2\nexit\n"
        + "\n".join(f"f{i}:\ncall f{i + 1}\nr0 = 0\nexit" for i in range(1, 8)) + "\nf8:\nr0 = 0\nexit",
        "frames is too deep"),
    Bad("call.combined stack over 512 bytes", "*(u64 *)(r10 -320) = 0\ncall f\nr0 = 2\nexit\n"
        "f:\n*(u64 *)(r10 -320) = 0\nr0 = 0\nexit", "combined stack size"),
    Bad("call.callee returns its stack pointer", "call f\nr0 = 2\nexit\nf:\nr0 = r10\nr0 += -8\nexit",
        "cannot return stack pointer"),
    Bad("call.callee returns r0 never written", "call f\nexit\nf:\nexit", "R0 !read_ok"),
    Bad("call.callee reads the caller's r6", "r6 = 1\ncall f\nr0 = 2\nexit\nf:\nr0 = r6\nexit", "R6 !read_ok"),
    Bad("call.caller reads r1 after the call", "r1 = 1\ncall f\nr0 = r1\nexit\nf:\nr0 = 0\nexit", "R1 !read_ok"),
]
