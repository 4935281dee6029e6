"""The native run state a JIT'd program sees: its context struct, its stacks, and the frame geometry.

``r1`` of a JIT'd program points to one `CTX_WORDS`-word block, the native stand-in for
``struct xdp_buff`` behind ``struct xdp_md``. Its first words are what the kernel's
``convert_ctx_access`` rewrites ``xdp_md`` loads into (``data``, ``data_end``,
``data_meta`` as real 64-bit pointers, then the device fields), so a ctx load becomes one
native load; the words after them are the run's private state (tail-call count, may_goto
budget, the fault word, CPU, PRNG state, where the stack area lies). Keeping it all in one
block means every native function takes one pointer and no Python runs while a batch runs.

Frames use the interpreter's geometry (`vxdp.engine.interp.xdp`: 4096-byte pages, 256
bytes of headroom, the ``skb_shared_info`` tailroom, the adjust limits), so the engines
agree byte for byte; only the addresses differ.

BPF stacks do not live on the native stack: a program's call chain gets frames of 512
bytes, upward from ``stack_base`` (frame k at ``stack_base + 512*k``, ``r10`` its top), so
a run-time check of a stack access is one range test against ``[stack_base, r10)`` (the
current frame and its callers), and no BPF store can reach a native return address.
"""

from __future__ import annotations

from enum import IntEnum

from ..interp.memory import MAX_CALL_FRAMES, STACK_SIZE
from ..interp.xdp import PAGE_SIZE, SKB_SHARED_INFO_TAILROOM

MAX_TAIL_CALL_CNT = 33  # the kernel's MAX_TAIL_CALL_CNT
MAX_LOOPS = 8 * 1024 * 1024  # BPF_MAX_LOOPS: may_goto's budget per run, bpf_loop's largest nr
HARD_END = PAGE_SIZE - SKB_SHARED_INFO_TAILROOM  # how far adjust_tail may grow the packet
# A call chain has at most MAX_CALL_FRAMES frames; a tail call replaces the frame it is made in, and the
# target's chain grows from there: up to 7 more frames per tail call, 33 tail calls (122 KiB in all).
STACK_FRAMES = MAX_CALL_FRAMES + MAX_TAIL_CALL_CNT * (MAX_CALL_FRAMES - 1)
STACK_AREA = STACK_FRAMES * STACK_SIZE


class Ctx(IntEnum):
    """Byte offsets of the words of the native context block."""

    DATA = 0
    DATA_END = 8
    DATA_META = 16
    INGRESS_IFINDEX = 24  # u32
    RX_QUEUE_INDEX = 28  # u32
    EGRESS_IFINDEX = 32  # u32
    FRAME = 40  # data_hard_start: the page the packet is in
    TAIL_CALLS = 48
    LOOPS_LEFT = 56
    FAULT = 64  # 0, or (pc + 1) << 8 | `FaultKind` of the first fault of this packet
    CPU = 72
    RNG = 80  # xorshift64* state of bpf_get_prandom_u32
    STACK_BASE = 88
    LAST_FAULT = 96  # the fault word of the last aborted packet of the batch (0: none)
    ELAPSED_NS = 104  # CLOCK_MONOTONIC time the last batch took, measured by the batch loop itself


CTX_WORDS = 16


class FaultKind(IntEnum):
    """Why a packet was aborted by the JIT'd code (the low byte of the fault word)."""

    ACCESS = 1  # a run-time checked load or store outside every region the program may touch
    HELPER = 2  # a helper given something the run time refuses


# struct xdp_md field offset -> (native offset, native width in bytes): convert_ctx_access.
XDP_MD_FIELDS = {
    0: (Ctx.DATA, 8),
    4: (Ctx.DATA_END, 8),
    8: (Ctx.DATA_META, 8),
    12: (Ctx.INGRESS_IFINDEX, 4),
    16: (Ctx.RX_QUEUE_INDEX, 4),
    20: (Ctx.EGRESS_IFINDEX, 4),
}

__all__ = ["CTX_WORDS", "HARD_END", "MAX_LOOPS", "MAX_TAIL_CALL_CNT", "STACK_AREA", "STACK_FRAMES", "XDP_MD_FIELDS", "Ctx",
           "FaultKind"]
