"""Hand-assembled XDP programs and frames the kernel tests share (named apart from conftest.py,
which other test directories also have)."""

from __future__ import annotations

from vxdp.bpf.helpers import Helper
from vxdp.bpf.isa import EXIT, Insn, PseudoSrc, lddw


def ret_insns(value: int) -> list[Insn]:
    """``r0 = value; exit``."""
    return [Insn(0xB7, 0, 0, 0, value), Insn(EXIT)]


MARK_ETHERTYPE = 0x88B5  # IEEE 802 local experimental: frames only our tests send


def count_and_return_insns(map_fd: int, action: int) -> list[Insn]:
    """Count frames of ethertype 0x88B5 into ``map[0]`` (u64, atomic), return ``action`` for every frame.

    Only marked frames count, so the kernel's own traffic on a fresh veth
    (IPv6 router solicitations, MLD) never disturbs an exact count.
    """
    return [
        Insn(0x61, 2, 1, 0, 0),  # 0: r2 = ctx->data
        Insn(0x61, 3, 1, 4, 0),  # 1: r3 = ctx->data_end
        Insn(0xBF, 4, 2),  # 2: r4 = r2
        Insn(0x07, 4, 0, 0, 14),  # 3: r4 += 14
        Insn(0x2D, 4, 3, 11, 0),  # 4: if r4 > r3 goto 16
        Insn(0x69, 5, 2, 12, 0),  # 5: r5 = *(u16 *)(r2 + 12)
        Insn(0x55, 5, 0, 9, 0xB588),  # 6: if r5 != htons(0x88b5) goto 16
        Insn(0x62, 10, 0, -4, 0),  # 7: *(u32 *)(r10 - 4) = 0
        Insn(0xBF, 2, 10),  # 8: r2 = r10
        Insn(0x07, 2, 0, 0, -4),  # 9: r2 += -4
        *lddw(1, map_fd, PseudoSrc.MAP_FD),  # 10-11: r1 = map
        Insn(0x85, 0, 0, 0, int(Helper.map_lookup_elem)),  # 12: call bpf_map_lookup_elem
        Insn(0x15, 0, 0, 2, 0),  # 13: if r0 == 0 goto 16
        Insn(0xB7, 1, 0, 0, 1),  # 14: r1 = 1
        Insn(0xDB, 0, 1, 0, 0),  # 15: lock *(u64 *)(r0 + 0) += r1
        Insn(0xB7, 0, 0, 0, action),  # 16: r0 = action
        Insn(EXIT),  # 17
    ]


def marked_frame(size: int = 64) -> bytes:
    """A broadcast Ethernet frame of ethertype 0x88B5, ``size`` bytes."""
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + MARK_ETHERTYPE.to_bytes(2, "big") + bytes(size - 14)
