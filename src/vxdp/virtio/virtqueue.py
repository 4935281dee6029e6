"""Split virtqueues (virtio 1.x §2.7): the device half, the driver half, and the chain walker.

Layout, all little-endian: a descriptor table of ``num`` 16-byte entries
(addr u64, len u32, flags u16, next u16); the avail ring (flags u16, idx u16,
ring[num] u16, used_event u16); the used ring (flags u16, idx u16,
ring[num] {id u32, len u32}, avail_event u16).

The queue's state (:class:`QueueState`) lives apart from guest memory, and the
memory is passed into every call, as in rust-vmm's virtio-queue: the state is
ours, the memory belongs to a party we do not trust. This module is the
reference: the compiled loops of ``vxdp.virtio.fastring`` walk chains by the
same rules and return the same :class:`RingError` codes, and the tests hold
them to it.

Hostile-input rules of the walker (every loop the driver controls is bounded):
avail idx more than ``num`` ahead of ours; a head or ``next`` index >= num (or
outside an indirect table); more descriptors in one chain than ``num`` (a
loop); an indirect descriptor when INDIRECT_DESC is not negotiated, with NEXT,
nested in a table, or whose length is zero or not a multiple of 16; a buffer
(or table) not inside one region of guest memory; a device-readable
descriptor after a device-writable one; a total readable or writable length
over 2**32 - 1. Any of them raises :class:`VirtqueueError`, and the queue
marks itself broken: the device then reports NEEDS_RESET and stops the queue.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from vxdp.virtio.memory import GPA_LIMIT, GuestMemory, GuestMemoryError

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1
MAX_QUEUE_SIZE = 32768
DESC_SIZE = 16
U32_MAX = 0xFFFFFFFF


class RingError(IntEnum):
    """Why a ring was refused. The numba loops return these codes (0 = no error)."""

    OK = 0
    AVAIL_IDX = 1  # avail idx jumped more than num ahead
    HEAD_RANGE = 2  # head index >= num
    NEXT_RANGE = 3  # next index >= num (or outside the indirect table)
    CHAIN_LOOP = 4  # more descriptors than num: a loop or an over-long chain
    OUT_OF_MEMORY = 5  # a buffer or an indirect table not inside one region
    INDIRECT_NOT_NEGOTIATED = 6
    INDIRECT_NEXT = 7  # INDIRECT together with NEXT
    INDIRECT_NESTED = 8
    INDIRECT_LEN = 9  # indirect table length zero or not a multiple of 16
    LEN_OVERFLOW = 10  # total readable or writable length > u32
    READ_AFTER_WRITE = 11  # device-readable descriptor after a device-writable one
    USED_ID = 12  # (driver side) the device returned an id that is not an outstanding head
    USED_IDX = 13  # (driver side) used idx jumped more than num ahead
    USED_LEN = 14  # (driver side) used length larger than the buffer
    NUM_BUFFERS = 15  # (driver side) a merged frame's num_buffers is 0 or more than num


class VirtqueueError(Exception):
    """The ring (or its setup) breaks the rules; ``code`` says which (a RingError or None)."""

    def __init__(self, message: str, code: RingError | None = None):
        super().__init__(message)
        self.code = code


class Segment(NamedTuple):
    gpa: int
    len: int
    writable: bool


@dataclass
class Chain:
    """A descriptor chain popped from the avail ring: its head id and its buffers in order."""

    head: int
    segments: list[Segment]

    @property
    def readable_len(self) -> int:
        return sum(s.len for s in self.segments if not s.writable)

    @property
    def writable_len(self) -> int:
        return sum(s.len for s in self.segments if s.writable)

    def read_all(self, mem: GuestMemory) -> bytes:
        return b"".join(mem.read(s.gpa, s.len) for s in self.segments if not s.writable)

    def write_all(self, mem: GuestMemory, data: bytes) -> int:
        """Scatter ``data`` over the writable segments; returns the bytes written (may be short)."""
        pos = 0
        for s in self.segments:
            if s.writable and pos < len(data):
                n = min(s.len, len(data) - pos)
                mem.write(s.gpa, data[pos:pos + n])
                pos += n
        return pos


def ring_sizes(num: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, avail ring and used ring (with their event fields)."""
    return DESC_SIZE * num, 6 + 2 * num, 6 + 8 * num


def ring_layout(num: int, base: int) -> tuple[int, int, int, int]:
    """``(desc, avail, used, end)`` gpas for a ring laid out at ``base`` (16/2/4-aligned, used 4 KiB-aligned)."""
    d, a, u = ring_sizes(num)
    desc = (base + 15) & ~15
    avail = desc + d
    used = (avail + a + 4095) & ~4095
    return desc, avail, used, used + u


def check_queue_size(num: int) -> None:
    if not (1 <= num <= MAX_QUEUE_SIZE) or num & (num - 1):
        raise VirtqueueError(f"queue size {num} is not a power of two in 1..{MAX_QUEUE_SIZE}")


def need_event(event: int, new: int, old: int) -> bool:
    """vring_need_event (§2.7.10): has idx just moved past ``event``? (u16 arithmetic)"""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


_DESC = struct.Struct("<QIHH")


def _fail(code: RingError, msg: str) -> VirtqueueError:
    return VirtqueueError(msg, code)


def walk_chain(mem: GuestMemory, num: int, desc_gpa: int, head: int, indirect_ok: bool) -> Chain:
    """Walk the chain starting at ``head`` and return it, or raise VirtqueueError (the reference walker)."""
    if head >= num:
        raise _fail(RingError.HEAD_RANGE, f"head {head} >= queue size {num}")
    segments: list[Segment] = []
    table, tsize = desc_gpa, num  # current table and its entry count
    in_indirect = False
    idx = head
    count = 0
    rlen = wlen = 0
    seen_write = False
    while True:
        count += 1
        if count > num:
            raise _fail(RingError.CHAIN_LOOP, f"chain at head {head} longer than queue size {num}")
        try:
            addr, length, flags, nxt = _DESC.unpack(mem.read(table + DESC_SIZE * idx, DESC_SIZE))
        except GuestMemoryError as e:
            raise _fail(RingError.OUT_OF_MEMORY, f"descriptor {idx}: {e}") from None
        if flags & DESC_F_INDIRECT:
            if not indirect_ok:
                raise _fail(RingError.INDIRECT_NOT_NEGOTIATED, f"descriptor {idx}: indirect not negotiated")
            if in_indirect:
                raise _fail(RingError.INDIRECT_NESTED, f"descriptor {idx}: nested indirect table")
            if flags & DESC_F_NEXT:
                raise _fail(RingError.INDIRECT_NEXT, f"descriptor {idx}: INDIRECT together with NEXT")
            if length == 0 or length % DESC_SIZE:
                raise _fail(RingError.INDIRECT_LEN, f"descriptor {idx}: indirect table length {length}")
            if addr >= GPA_LIMIT:
                raise _fail(RingError.OUT_OF_MEMORY, f"descriptor {idx}: indirect table at {addr:#x}")
            try:
                mem.translate(addr, length)
            except GuestMemoryError as e:
                raise _fail(RingError.OUT_OF_MEMORY, f"descriptor {idx}: indirect table: {e}") from None
            table, tsize, in_indirect, idx = addr, length // DESC_SIZE, True, 0
            continue
        writable = bool(flags & DESC_F_WRITE)
        if writable:
            seen_write = True
            wlen += length
        else:
            if seen_write:
                raise _fail(RingError.READ_AFTER_WRITE, f"descriptor {idx}: readable after writable")
            rlen += length
        if rlen > U32_MAX or wlen > U32_MAX:
            raise _fail(RingError.LEN_OVERFLOW, f"chain at head {head}: total length overflows u32")
        if addr >= GPA_LIMIT:
            raise _fail(RingError.OUT_OF_MEMORY, f"descriptor {idx}: buffer at {addr:#x}")
        try:
            mem.translate(addr, length)
        except GuestMemoryError as e:
            raise _fail(RingError.OUT_OF_MEMORY, f"descriptor {idx}: {e}") from None
        segments.append(Segment(addr, length, writable))
        if not flags & DESC_F_NEXT:
            return Chain(head, segments)
        if nxt >= tsize:
            raise _fail(RingError.NEXT_RANGE, f"descriptor {idx}: next {nxt} >= {tsize}")
        idx = nxt


@dataclass
class QueueState:
    """The device's view of one split virtqueue; guest memory is passed into each call."""

    num: int
    desc_gpa: int
    avail_gpa: int
    used_gpa: int
    last_avail_idx: int = 0
    used_idx: int = 0
    event_idx: bool = False
    indirect: bool = False
    signalled_used: int | None = None  # used idx when we last decided about an interrupt
    broken: bool = False
    error: str = ""

    def __post_init__(self) -> None:
        check_queue_size(self.num)

    def validate(self, mem: GuestMemory) -> None:
        """Check alignment (§2.7: 16/2/4) and that each ring lies inside one region; else VirtqueueError."""
        d, a, u = ring_sizes(self.num)
        for name, gpa, size, align in (("descriptor table", self.desc_gpa, d, 16),
                                       ("avail ring", self.avail_gpa, a, 2), ("used ring", self.used_gpa, u, 4)):
            if gpa % align:
                raise VirtqueueError(f"{name} at {gpa:#x} is not {align}-byte aligned")
            try:
                mem.translate(gpa, size)
            except GuestMemoryError as e:
                raise VirtqueueError(f"{name}: {e}") from None

    def _break(self, err: VirtqueueError) -> VirtqueueError:
        self.broken = True
        self.error = str(err)
        return err

    def _check_usable(self) -> None:
        if self.broken:
            raise VirtqueueError(f"queue is broken (needs reset): {self.error}")

    # -- device half ---------------------------------------------------------------------------
    def avail_idx(self, mem: GuestMemory) -> int:
        return mem.read_u16(self.avail_gpa + 2)

    def pending(self, mem: GuestMemory) -> int:
        """How many chains the driver has made available beyond ours (VirtqueueError if > num)."""
        self._check_usable()
        delta = (self.avail_idx(mem) - self.last_avail_idx) & 0xFFFF
        if delta > self.num:
            raise self._break(_fail(RingError.AVAIL_IDX, f"avail idx {delta} ahead of ours, queue size {self.num}"))
        return delta

    def pop_chain(self, mem: GuestMemory) -> Chain | None:
        """The next available chain, or None; VirtqueueError (and the queue broken) on a hostile ring."""
        if self.pending(mem) == 0:
            return None
        head = mem.read_u16(self.avail_gpa + 4 + 2 * (self.last_avail_idx % self.num))
        try:
            chain = walk_chain(mem, self.num, self.desc_gpa, head, self.indirect)
        except VirtqueueError as e:
            raise self._break(e) from None
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        return chain

    def undo_pop(self) -> None:
        self.last_avail_idx = (self.last_avail_idx - 1) & 0xFFFF

    def push_used(self, mem: GuestMemory, head: int, written_len: int) -> None:
        """Put ``(head, written_len)`` in the used ring and publish the new used idx after it."""
        self._check_usable()
        if not 0 <= head < self.num:
            raise VirtqueueError(f"push_used: head {head} >= queue size {self.num}")
        slot = self.used_gpa + 4 + 8 * (self.used_idx % self.num)
        mem.write(slot, struct.pack("<II", head, written_len & U32_MAX))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        mem.write_u16(self.used_gpa + 2, self.used_idx)  # after the entry (x86 keeps store order)

    def needs_notification(self, mem: GuestMemory) -> bool:
        """Should the device interrupt the driver now? (EVENT_IDX aware; call after push_used.)"""
        old = self.signalled_used
        new = self.used_idx
        self.signalled_used = new
        if self.event_idx:
            used_event = mem.read_u16(self.avail_gpa + 4 + 2 * self.num)
            return old is None or need_event(used_event, new, old)
        return not mem.read_u16(self.avail_gpa) & AVAIL_F_NO_INTERRUPT

    def disable_notification(self, mem: GuestMemory) -> None:
        """Ask the driver not to kick (used.flags NO_NOTIFY; with EVENT_IDX nothing is needed)."""
        if not self.event_idx:
            mem.write_u16(self.used_gpa, USED_F_NO_NOTIFY)

    def enable_notification(self, mem: GuestMemory) -> bool:
        """Ask for kicks again; True if chains arrived meanwhile (then process them, don't sleep)."""
        if self.event_idx:
            mem.write_u16(self.used_gpa + 4 + 8 * self.num, self.last_avail_idx)
        else:
            mem.write_u16(self.used_gpa, 0)
        return self.pending(mem) > 0


@dataclass
class DriverQueue:
    """The driver's half of a split virtqueue over real guest memory (our guest; tests' ring mock).

    Free descriptors are a stack in numpy arrays so that the driver loops of
    ``fastring`` share them; shadow copies of what we wrote into each
    descriptor let us free chains without trusting the device's memory.
    """

    num: int
    desc_gpa: int
    avail_gpa: int
    used_gpa: int
    event_idx: bool = False
    indirect_gpa: int | None = None  # num tables of indirect_max descriptors, one per head
    indirect_max: int = 0
    avail_idx: int = 0  # our shadow of avail->idx
    last_used_idx: int = 0
    kicked_avail: int = 0  # avail idx at the last kick decision
    free: np.ndarray = field(init=False, repr=False)
    nfree: int = field(init=False)
    ndesc: np.ndarray = field(init=False, repr=False)  # per head: descriptors it holds (0 = not in flight)
    shadow_next: np.ndarray = field(init=False, repr=False)
    buf_len: np.ndarray = field(init=False, repr=False)  # per head: writable bytes posted

    def __post_init__(self) -> None:
        check_queue_size(self.num)
        self.free = np.arange(self.num - 1, -1, -1, dtype=np.int32)
        self.nfree = self.num
        self.ndesc = np.zeros(self.num, np.int32)
        self.shadow_next = np.zeros(self.num, np.int32)
        self.buf_len = np.zeros(self.num, np.int64)

    @classmethod
    def create(cls, mem: GuestMemory, num: int, base_gpa: int, event_idx: bool = False,
               indirect_max: int = 0) -> DriverQueue:
        """Lay out a fresh ring at ``base_gpa`` (plus indirect tables after it) and zero it."""
        check_queue_size(num)
        desc, avail, used, end = ring_layout(num, base_gpa)
        ind = None
        if indirect_max:
            ind = (end + 15) & ~15
            end = ind + num * indirect_max * DESC_SIZE
        mem.array(desc, end - desc)[:] = 0
        return cls(num, desc, avail, used, event_idx, ind, indirect_max)

    @property
    def end_gpa(self) -> int:
        if self.indirect_gpa is not None:
            return self.indirect_gpa + self.num * self.indirect_max * DESC_SIZE
        return self.used_gpa + ring_sizes(self.num)[2]

    def state(self, indirect: bool = False) -> QueueState:
        """The device's QueueState for this ring (what vhost-user would carry to the backend)."""
        return QueueState(self.num, self.desc_gpa, self.avail_gpa, self.used_gpa,
                          event_idx=self.event_idx, indirect=indirect)

    def _write_desc(self, mem: GuestMemory, table: int, i: int, gpa: int, ln: int, flags: int, nxt: int) -> None:
        mem.write(table + DESC_SIZE * i, _DESC.pack(gpa, ln, flags, nxt))

    def add_buffers(self, mem: GuestMemory, segments: list[tuple[int, int, bool]], indirect: bool = False) -> int:
        """Post one chain (readable segments first) and publish it; returns the head id.

        VirtqueueError if the ring is full or the segments are out of order.
        """
        if not segments:
            raise VirtqueueError("a chain needs at least one segment")
        seen_write = False
        for _, _, w in segments:
            if w:
                seen_write = True
            elif seen_write:
                raise VirtqueueError("readable segments must come before writable ones")
        need = 1 if indirect else len(segments)
        if indirect and (self.indirect_gpa is None or len(segments) > self.indirect_max):
            raise VirtqueueError(f"indirect chain of {len(segments)} does not fit (max {self.indirect_max})")
        if need > self.nfree:
            raise VirtqueueError(f"ring full: {need} descriptors wanted, {self.nfree} free")
        ids = [int(self.free[self.nfree - 1 - k]) for k in range(need)]
        self.nfree -= need
        head = ids[0]
        if indirect:
            table = self.indirect_gpa + head * self.indirect_max * DESC_SIZE
            for k, (gpa, ln, w) in enumerate(segments):
                last = k == len(segments) - 1
                self._write_desc(mem, table, k, gpa, ln, (DESC_F_WRITE if w else 0) | (0 if last else DESC_F_NEXT),
                                 0 if last else k + 1)
            self._write_desc(mem, self.desc_gpa, head, table, DESC_SIZE * len(segments), DESC_F_INDIRECT, 0)
        else:
            for k, (gpa, ln, w) in enumerate(segments):
                last = k == len(segments) - 1
                nxt = 0 if last else ids[k + 1]
                self._write_desc(mem, self.desc_gpa, ids[k], gpa, ln,
                                 (DESC_F_WRITE if w else 0) | (0 if last else DESC_F_NEXT), nxt)
                self.shadow_next[ids[k]] = nxt
        self.ndesc[head] = need
        self.buf_len[head] = sum(ln for _, ln, w in segments if w)
        mem.write_u16(self.avail_gpa + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        mem.write_u16(self.avail_gpa + 2, self.avail_idx)  # after the entry (x86 keeps store order)
        return head

    def kick_needed(self, mem: GuestMemory) -> bool:
        """Must the driver notify the device about what it added since the last call? (EVENT_IDX aware)"""
        old, new = self.kicked_avail, self.avail_idx
        self.kicked_avail = new
        if old == new:
            return False
        if self.event_idx:
            return need_event(mem.read_u16(self.used_gpa + 4 + 8 * self.num), new, old)
        return not mem.read_u16(self.used_gpa) & USED_F_NO_NOTIFY

    def _release(self, head: int) -> None:
        n = int(self.ndesc[head])
        d = head
        for _ in range(n):
            self.free[self.nfree] = d
            self.nfree += 1
            d = int(self.shadow_next[d])
        self.ndesc[head] = 0

    def get_used(self, mem: GuestMemory) -> tuple[int, int] | None:
        """The next ``(id, len)`` the device returned, its descriptors freed; None if nothing new.

        VirtqueueError if the device returned an id that is not in flight or jumped the used idx.
        """
        used_idx = mem.read_u16(self.used_gpa + 2)
        delta = (used_idx - self.last_used_idx) & 0xFFFF
        if delta == 0:
            return None
        if delta > self.num:
            raise VirtqueueError(f"used idx {delta} ahead of ours, queue size {self.num}", RingError.USED_IDX)
        slot = self.used_gpa + 4 + 8 * (self.last_used_idx % self.num)
        head, ln = struct.unpack("<II", mem.read(slot, 8))
        if head >= self.num or self.ndesc[head] == 0:
            raise VirtqueueError(f"device returned id {head}, which is not in flight", RingError.USED_ID)
        if ln > self.buf_len[head]:
            raise VirtqueueError(f"device wrote {ln} bytes into a {self.buf_len[head]}-byte buffer",
                                 RingError.USED_LEN)
        self._release(head)
        self.last_used_idx = (self.last_used_idx + 1) & 0xFFFF
        if self.event_idx:
            mem.write_u16(self.avail_gpa + 4 + 2 * self.num, self.last_used_idx)
        return head, ln

    def disable_interrupts(self, mem: GuestMemory) -> None:
        if not self.event_idx:
            mem.write_u16(self.avail_gpa, AVAIL_F_NO_INTERRUPT)

    def enable_interrupts(self, mem: GuestMemory) -> bool:
        """Ask for interrupts again; True if used entries arrived meanwhile."""
        if self.event_idx:
            mem.write_u16(self.avail_gpa + 4 + 2 * self.num, self.last_used_idx)
        else:
            mem.write_u16(self.avail_gpa, 0)
        return mem.read_u16(self.used_gpa + 2) != self.last_used_idx
