"""The abstract machine state: what each register and stack byte may hold at one instruction.

A `Reg` is a register's type with its facts: a scalar's `Scalar`; a pointer's
fixed offset ``off``, variable part ``var`` (a `Scalar`), and, by type, the map
handle it belongs to, the packet ``range`` proven by ``data_end`` comparisons,
or the frame whose stack it points into. ``id`` ties together copies of one
pointer, so that one null check or one ``data_end`` comparison teaches every
copy at once (in registers and in stack spills).

The stack is kept per 8-byte slot: a whole spilled register, or eight byte
kinds (``i`` never written, ``m`` some data, ``z`` known zero, ``chr(256 + b)``
the known byte ``b``, ``p`` part of a pointer). `State.subsumes`
is the pruning test: a state already verified from an instruction covers a new
one if every live register and every stack slot of the new one is within it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from .scalar import Scalar

STACK_SIZE = 512
MAX_CALL_FRAMES = 8


class RegType(Enum):
    NOT_INIT = "?"
    SCALAR = "scalar"
    CTX = "ctx"
    PACKET = "pkt"
    PACKET_META = "pkt_meta"
    PACKET_END = "pkt_end"
    STACK = "fp"
    MAP_PTR = "map_ptr"
    MAP_VALUE = "map_value"
    MAP_VALUE_OR_NULL = "map_value_or_null"
    FUNC = "func"


POINTERS = frozenset(RegType) - {RegType.NOT_INIT, RegType.SCALAR}
NEVER_NULL = POINTERS - {RegType.MAP_VALUE_OR_NULL}
ZERO = Scalar.const(0)


@dataclass(frozen=True, slots=True)
class Reg:
    type: RegType
    scalar: Scalar = ZERO  # the value of a scalar; a pointer's variable offset
    off: int = 0
    id: int = 0
    range: int = 0
    map: int = 0  # map handle (map_ptr, map_value, map_value_or_null); callee pc (func)
    frame: int = 0  # stack pointers: the frame they point into

    @property
    def is_pointer(self) -> bool:
        return self.type in POINTERS

    @property
    def is_const(self) -> bool:
        return self.type is RegType.SCALAR and self.scalar.is_const

    def subsumes(self, new: Reg, ids: dict[int, int]) -> bool:
        if self.type is RegType.NOT_INIT:
            return True
        if self.type is not new.type:
            return False
        if self.type is RegType.SCALAR:
            return self.scalar.subsumes(new.scalar)
        if (self.off, self.map, self.frame) != (new.off, new.map, new.frame) or not self.scalar.subsumes(new.scalar):
            return False
        if self.range > new.range:
            return False
        return not ((self.id or new.id) and ids.setdefault(self.id, new.id) != new.id)

    def __str__(self) -> str:
        t = self.type
        if t is RegType.SCALAR:
            return f"{self.scalar}" if self.scalar.is_const else f"scalar{self.scalar}"
        if t is RegType.NOT_INIT:
            return "?"
        parts = []
        if self.id:
            parts.append(f"id={self.id}")
        if self.off:
            parts.append(f"off={self.off}")
        if t in (RegType.PACKET, RegType.PACKET_META):
            parts.append(f"r={self.range}")
        if t in (RegType.MAP_PTR, RegType.MAP_VALUE, RegType.MAP_VALUE_OR_NULL):
            parts.append(f"map={self.map}")
        if not self.scalar.is_const or self.scalar.value:
            parts.append(f"var={self.scalar}")
        if t is RegType.STACK:
            return f"fp{self.off}" + (f"(frame={self.frame},var={self.scalar})" if not self.scalar.is_const else "")
        if t is RegType.FUNC:
            return f"func(pc={self.map})"
        return f"{t.value}({','.join(parts)})" if parts else t.value


NOT_INIT = Reg(RegType.NOT_INIT)
UNKNOWN = Reg(RegType.SCALAR, Scalar.unknown())


def scalar(s: Scalar) -> Reg:
    return Reg(RegType.SCALAR, s)


Slot = Reg | str  # a spilled register, or 8 byte kinds from the slot's lowest address up


@dataclass
class Frame:
    """One call frame: its registers, its 512-byte stack, and where it returns."""

    regs: list[Reg]
    stack: dict[int, Slot] = field(default_factory=dict)  # slot index k: bytes [-8(k+1), -8k)
    callsite: int = -1  # the call instruction in the caller (-1: the main program)
    start: int = 0  # first instruction of the function
    callback: bool = False  # called by a helper (bpf_loop): returns to the helper, r0 in [0, 1]
    depth: int = 0  # deepest stack byte used so far

    def copy(self) -> Frame:
        return Frame(list(self.regs), dict(self.stack), self.callsite, self.start, self.callback, self.depth)

    def key(self) -> tuple:
        return (tuple(self.regs), tuple(sorted(self.stack.items(), key=lambda kv: kv[0])), self.callsite)


@dataclass
class State:
    frames: list[Frame]

    @property
    def cur(self) -> Frame:
        return self.frames[-1]

    @property
    def regs(self) -> list[Reg]:
        return self.frames[-1].regs

    def copy(self) -> State:
        return State([f.copy() for f in self.frames])

    def key(self) -> tuple:
        return tuple(f.key() for f in self.frames)

    def all_regs(self):
        """Every register and spill of every frame, as (frame, kind, index, reg); kind 'r' or 's'."""
        for fi, f in enumerate(self.frames):
            for i, r in enumerate(f.regs):
                yield fi, "r", i, r
            for k, s in f.stack.items():
                if isinstance(s, Reg):
                    yield fi, "s", k, s

    def set(self, fi: int, kind: str, i: int, reg: Reg) -> None:
        if kind == "r":
            self.frames[fi].regs[i] = reg
        else:
            self.frames[fi].stack[i] = reg

    def retype(self, pred, fn) -> None:
        """Replace every register and spill ``pred`` selects by ``fn(reg)``."""
        for fi, kind, i, r in list(self.all_regs()):
            if pred(r):
                self.set(fi, kind, i, fn(r))

    def subsumes(self, new: State, live: list[frozenset[int]]) -> bool:
        """Whether every run from ``new`` is one a run from ``self`` already covers.

        ``live[f]`` are the registers frame ``f`` may still read; the rest are ignored.
        """
        if len(self.frames) != len(new.frames):
            return False
        ids: dict[int, int] = {}
        for old_f, new_f, lv in zip(self.frames, new.frames, live):
            if old_f.callsite != new_f.callsite:
                return False
            for r in lv:
                if not old_f.regs[r].subsumes(new_f.regs[r], ids):
                    return False
            for k, old_s in old_f.stack.items():
                if not _slot_subsumes(old_s, new_f.stack.get(k, "iiiiiiii"), ids):
                    return False
        return True


def _slot_subsumes(old: Slot, new: Slot, ids: dict[int, int]) -> bool:
    if isinstance(old, Reg):
        return isinstance(new, Reg) and old.subsumes(new, ids)
    if isinstance(new, Reg):
        new = "mmmmmmmm" if new.type is RegType.SCALAR else "pppppppp"
    for o, n in zip(old, new):
        if o == "i" and n != "p" or o == "m" and n not in "ip" or o == n:
            continue
        return False
    return True


def with_off(reg: Reg, off: int) -> Reg:
    return replace(reg, off=off)
