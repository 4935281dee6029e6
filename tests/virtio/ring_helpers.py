"""Helpers of the virtio tests: raw descriptor writes, and the hostile rings each walker must refuse."""

from __future__ import annotations

import struct

from vxdp.virtio.memory import GuestMemory
from vxdp.virtio.virtqueue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DriverQueue,
    QueueState,
    RingError,
)

MEM_SIZE = 4 << 20
DATA = 0x10000  # buffers live from here on; rings sit below
TABLE = 0x20000  # indirect tables written by the hostile cases


def put_desc(mem: GuestMemory, table: int, i: int, addr: int, ln: int, flags: int, nxt: int = 0) -> None:
    mem.write(table + 16 * i, struct.pack("<QIHH", addr, ln, flags, nxt))


def make_avail(mem: GuestMemory, dq: DriverQueue, heads: list[int], idx: int | None = None) -> None:
    for k, h in enumerate(heads):
        mem.write_u16(dq.avail_gpa + 4 + 2 * (k % dq.num), h)
    mem.write_u16(dq.avail_gpa + 2, len(heads) if idx is None else idx)


def _case_oom(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, MEM_SIZE - 10, 100, 0)
    make_avail(mem, dq, [0])


def _case_huge_addr(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, 1 << 63, 16, DESC_F_WRITE)
    make_avail(mem, dq, [0])


def _case_loop(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, DATA, 16, DESC_F_NEXT, 1)
    put_desc(mem, dq.desc_gpa, 1, DATA, 16, DESC_F_NEXT, 0)
    make_avail(mem, dq, [0])


def _case_self_loop(mem, dq):
    put_desc(mem, dq.desc_gpa, 3, DATA, 16, DESC_F_NEXT | DESC_F_WRITE, 3)
    make_avail(mem, dq, [3])


def _case_avail_jump(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, DATA, 16, 0)
    make_avail(mem, dq, [0], idx=dq.num + 1)


def _case_head_range(mem, dq):
    make_avail(mem, dq, [dq.num])


def _case_next_range(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, DATA, 16, DESC_F_NEXT, dq.num)
    make_avail(mem, dq, [0])


def _case_nested(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, TABLE, 32, DESC_F_INDIRECT)
    put_desc(mem, TABLE, 0, TABLE + 64, 16, DESC_F_INDIRECT)
    make_avail(mem, dq, [0])


def _case_indirect_next(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, TABLE, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1)
    put_desc(mem, TABLE, 0, DATA, 16, 0)
    make_avail(mem, dq, [0])


def _case_indirect_len(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, TABLE, 24, DESC_F_INDIRECT)
    make_avail(mem, dq, [0])


def _case_indirect_zero(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, TABLE, 0, DESC_F_INDIRECT)
    make_avail(mem, dq, [0])


def _case_indirect_oom(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, MEM_SIZE - 16, 32, DESC_F_INDIRECT)
    make_avail(mem, dq, [0])


def _case_indirect_next_range(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, TABLE, 32, DESC_F_INDIRECT)
    put_desc(mem, TABLE, 0, DATA, 16, DESC_F_NEXT, 2)
    make_avail(mem, dq, [0])


def _case_indirect_loop(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, TABLE, 32, DESC_F_INDIRECT)
    put_desc(mem, TABLE, 0, DATA, 16, DESC_F_NEXT, 1)
    put_desc(mem, TABLE, 1, DATA, 16, DESC_F_NEXT, 0)
    make_avail(mem, dq, [0])


def _case_read_after_write(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, DATA, 16, DESC_F_WRITE | DESC_F_NEXT, 1)
    put_desc(mem, dq.desc_gpa, 1, DATA, 16, 0)
    make_avail(mem, dq, [0])


def _case_buffer_crosses_end(mem, dq):
    put_desc(mem, dq.desc_gpa, 0, DATA, 16, DESC_F_NEXT, 1)
    put_desc(mem, dq.desc_gpa, 1, MEM_SIZE - 8, 9, 0)
    make_avail(mem, dq, [0])


# name -> (setup, expected code, queue negotiates INDIRECT_DESC)
HOSTILE = {
    "outside memory": (_case_oom, RingError.OUT_OF_MEMORY, True),
    "address >= 2**62": (_case_huge_addr, RingError.OUT_OF_MEMORY, True),
    "segment crosses the end": (_case_buffer_crosses_end, RingError.OUT_OF_MEMORY, True),
    "loop": (_case_loop, RingError.CHAIN_LOOP, True),
    "self loop": (_case_self_loop, RingError.CHAIN_LOOP, True),
    "avail idx jump": (_case_avail_jump, RingError.AVAIL_IDX, True),
    "head >= num": (_case_head_range, RingError.HEAD_RANGE, True),
    "next >= num": (_case_next_range, RingError.NEXT_RANGE, True),
    "nested indirect": (_case_nested, RingError.INDIRECT_NESTED, True),
    "indirect with NEXT": (_case_indirect_next, RingError.INDIRECT_NEXT, True),
    "indirect len 24": (_case_indirect_len, RingError.INDIRECT_LEN, True),
    "indirect len 0": (_case_indirect_zero, RingError.INDIRECT_LEN, True),
    "indirect table outside memory": (_case_indirect_oom, RingError.OUT_OF_MEMORY, True),
    "indirect not negotiated": (_case_indirect_len, RingError.INDIRECT_NOT_NEGOTIATED, False),
    "next outside indirect table": (_case_indirect_next_range, RingError.NEXT_RANGE, True),
    "loop inside indirect table": (_case_indirect_loop, RingError.CHAIN_LOOP, True),
    "readable after writable": (_case_read_after_write, RingError.READ_AFTER_WRITE, True),
}


def hostile_ring(mem: GuestMemory, name: str, num: int = 8) -> tuple[DriverQueue, QueueState, RingError]:
    setup, code, indirect = HOSTILE[name]
    dq = DriverQueue.create(mem, num, 0)
    setup(mem, dq)
    return dq, dq.state(indirect=indirect), code
