"""Memory accesses: which pointer may be read or written where, and what a load gives.

One function per region, as the kernel's ``check_mem_access`` dispatches: the
XDP context (``struct xdp_md``, 4-byte reads of its fields only), the packet
(``[data, data + range)`` as ``data_end`` comparisons proved it), the stack
(512 bytes per frame, aligned, with spills and fills of whole registers) and
map values (``[0, value_size)``, read-only for ``BPF_F_RDONLY_PROG`` maps).
A refusal raises `Refuse` with the one line a person needs.
"""

from __future__ import annotations

from dataclasses import replace

from ...bpf.mapspec import MapFlag, MapSpec
from .scalar import S64_MIN, Scalar, alu64
from .state import STACK_SIZE, UNKNOWN, Reg, RegType, State, scalar

MAX_VAR_OFF = 1 << 29
MAX_PACKET_OFF = 0xFFFF

# struct xdp_md: offset -> (name, what a 4-byte read gives)
XDP_MD = {0: ("data", RegType.PACKET), 4: ("data_end", RegType.PACKET_END), 8: ("data_meta", RegType.PACKET_META),
          12: ("ingress_ifindex", RegType.SCALAR), 16: ("rx_queue_index", RegType.SCALAR)}
XDP_MD_SIZE = 24


class Refuse(Exception):
    """One access (or operation) that cannot be proven safe; the message is the reason."""


def _loaded(size: int, signed: bool) -> Reg:
    if signed:
        return scalar(Scalar.unknown().sign_extend(8 * size))
    return scalar(Scalar.urange(0, (1 << (8 * size)) - 1)) if size < 8 else UNKNOWN


def ctx_read(reg: Reg, regno: int, off: int, size: int, signed: bool) -> Reg:
    if reg.off or not reg.scalar.is_const or reg.scalar.value:
        raise Refuse(f"dereference of modified ctx ptr R{regno} off={reg.off} disallowed")
    field = XDP_MD.get(off)
    if field is None or size != 4 or signed:
        raise Refuse(f"invalid bpf_context access off={off} size={size}"
                     + (" (sign-extending)" if signed else "")
                     + ": struct xdp_md allows 4-byte reads of data, data_end, data_meta, ingress_ifindex and "
                       "rx_queue_index")
    if field[1] is RegType.SCALAR:
        return scalar(Scalar.urange(0, 0xFFFFFFFF))
    return Reg(field[1])  # id 0: every pointer read from the context is the same base


def packet(reg: Reg, regno: int, off: int, size: int) -> None:
    lo = reg.off + off
    if reg.scalar.smin < 0:
        raise Refuse(f"R{regno} min value is negative, either use unsigned index or do a if (index >=0) check")
    if lo < 0 or lo + size > reg.range or reg.scalar.umax + lo + size > MAX_PACKET_OFF:
        raise Refuse(f"invalid access to packet, off={lo} size={size}, R{regno}({reg}): bytes "
                     f"[{lo}, {lo + size}) not proven below data_end (proven: {reg.range}); "
                     f"compare the pointer plus {lo + size} with data_end first")


def map_value(reg: Reg, regno: int, off: int, size: int, spec: MapSpec, write: bool) -> Scalar | None:
    """Check an access; for a read of a frozen read-only map at a constant offset, the bytes' value."""
    if write and spec.flags & MapFlag.RDONLY_PROG:
        raise Refuse(f"write into map forbidden: map {spec.name!r} is read-only to programs")
    lo = reg.off + off + reg.scalar.smin
    hi = reg.off + off + (reg.scalar.umax if reg.scalar.smin >= 0 else reg.scalar.smax)
    if reg.scalar.smin < 0 and not reg.scalar.is_const:
        raise Refuse(f"R{regno} min value is negative, either use unsigned index or do a if (index >=0) check")
    if reg.scalar.umax >= MAX_VAR_OFF and not reg.scalar.is_const:
        raise Refuse(f"R{regno} unbounded memory access, make sure to bounds check any such access")
    if lo < 0 or hi + size > spec.value_size:
        where = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise Refuse(f"invalid access to map value, value_size={spec.value_size} off={where} size={size} "
                     f"(map {spec.name!r}, R{regno}={reg}): bound the offset so that off + size <= value_size")
    # a frozen read-only array of one element (``.rodata``, frozen before any program loads, as libbpf
    # does): `verify` hands its bytes in ``spec.data`` and only then; they are constants, as the
    # kernel's bpf_map_direct_read makes them
    if (not write and spec.flags & MapFlag.RDONLY_PROG and spec.data is not None
            and reg.scalar.is_const and size <= 8 and lo + size <= len(spec.data)):
        return Scalar.const(int.from_bytes(spec.data[lo:lo + size], "little"))
    return None


def _stack_bounds(reg: Reg, regno: int, off: int, size: int, write: bool) -> tuple[int, int]:
    lo = reg.off + off + reg.scalar.smin
    hi = reg.off + off + reg.scalar.smax
    what = "write to" if write else "read from"
    if not reg.scalar.is_const and (reg.scalar.smin <= -MAX_VAR_OFF or reg.scalar.smax >= MAX_VAR_OFF):
        raise Refuse(f"invalid unbounded variable-offset {what} stack R{regno}")
    if lo < -STACK_SIZE or hi + size > 0:
        raise Refuse(f"invalid {what} stack R{regno} off={lo if lo < -STACK_SIZE else hi} size={size}: "
                     f"the stack is [-{STACK_SIZE}, 0) from r10")
    if reg.scalar.is_const and (lo % size) or not reg.scalar.is_const and (reg.off + off) % size:
        raise Refuse(f"misaligned stack access off {lo} size {size}")
    return lo, hi


def stack_write(st: State, reg: Reg, regno: int, off: int, size: int, value: Reg | None) -> None:
    """Store ``size`` bytes; ``value`` is the register stored (``None``: an immediate or atomic, some data)."""
    lo, hi = _stack_bounds(reg, regno, off, size, True)
    if value is not None and value.is_pointer and size != 8:
        raise Refuse(f"invalid size of register spill: {size} bytes of a {value.type.value} pointer "
                     "(spill pointers whole, 8 bytes)")
    frame = st.frames[reg.frame]
    frame.depth = max(frame.depth, -lo)
    if lo == hi and size == 8 and value is not None:
        frame.stack[(-lo - 8) // 8] = value
        return
    if value is not None and value.is_const and lo == hi and (lo % 8 == 0 or value.scalar.value == 0):
        # the kernel keeps a number written at an 8-aligned offset (a "spill" of any size), and zeros anywhere
        kinds = _byte_kinds(value.scalar.value, size)
    else:
        kinds = "m" * (hi + size - lo)
    for i, b in enumerate(range(lo, hi + size)):
        k, j = (-b - 1) // 8, b % 8
        slot = frame.stack.get(k, "iiiiiiii")
        if isinstance(slot, Reg):
            slot = _spill_bytes(slot)
        frame.stack[k] = slot[:j] + kinds[i] + slot[j + 1:]


def _byte_kinds(value: int, size: int) -> str:
    """Byte kinds of a known number: ``z`` for a zero byte, ``chr(256 + b)`` for byte ``b``."""
    return "".join("z" if b == 0 else chr(256 + b) for b in (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))


def _known(kinds: str) -> int | None:
    if any(c in "imp" for c in kinds):
        return None
    return int.from_bytes(bytes(0 if c == "z" else ord(c) - 256 for c in kinds), "little")


def _spill_bytes(reg: Reg) -> str:
    if reg.is_const:
        return _byte_kinds(reg.scalar.value, 8)
    return "mmmmmmmm" if reg.type is RegType.SCALAR else "pppppppp"


def stack_read(st: State, reg: Reg, regno: int, off: int, size: int, signed: bool, privileged: bool) -> Reg:
    lo, hi = _stack_bounds(reg, regno, off, size, False)
    frame = st.frames[reg.frame]
    if lo == hi:
        k = (-lo - 1) // 8
        slot = frame.stack.get(k, "iiiiiiii")
        if isinstance(slot, Reg):
            if size == 8:
                return slot
            if slot.type is not RegType.SCALAR:
                raise Refuse(f"invalid size of register fill: {size} bytes of a spilled {slot.type.value} pointer")
            if slot.is_const:
                v = slot.scalar.value >> (8 * (lo % 8))
                s = Scalar.const(v).truncate(size)
                return scalar(s.sign_extend(8 * size) if signed else s)
            return _loaded(size, signed)
    kinds = ""
    for b in range(lo, hi + size):
        slot = frame.stack.get((-b - 1) // 8, "iiiiiiii")
        kinds += (_spill_bytes(slot) if isinstance(slot, Reg) else slot)[b % 8]
    if "i" in kinds and not privileged:
        raise Refuse(f"invalid read from stack R{regno} off {lo}+{hi - lo} size {size}: bytes never written")
    known = _known(kinds) if lo == hi else None
    if known is not None:
        s = Scalar.const(known)
        return scalar(s.sign_extend(8 * size) if signed and size < 8 else s)
    return _loaded(size, signed)


def stack_range(st: State, reg: Reg, regno: int, size_max: int, write: bool, privileged: bool) -> None:
    """A helper reads (or writes) ``[reg, reg + size_max)`` of the stack."""
    if size_max == 0:
        return
    lo = reg.off + reg.scalar.smin
    hi = reg.off + reg.scalar.smax + size_max
    if lo < -STACK_SIZE or hi > 0:
        raise Refuse(f"invalid indirect access to stack R{regno} off={lo} size={size_max}: "
                     f"the stack is [-{STACK_SIZE}, 0) from r10")
    frame = st.frames[reg.frame]
    frame.depth = max(frame.depth, -lo)
    for b in range(lo, hi):
        k, j = (-b - 1) // 8, b % 8
        slot = frame.stack.get(k, "iiiiiiii")
        if write:
            if isinstance(slot, Reg):
                slot = _spill_bytes(slot).replace("p", "m")
            frame.stack[k] = slot[:j] + "m" + slot[j + 1:]
        elif not privileged and not isinstance(slot, Reg) and slot[j] == "i":
            raise Refuse(f"invalid indirect read from stack R{regno} off {lo}+{b - lo} size {size_max}: "
                         "bytes never written")


def add_offset(reg: Reg, s: Scalar, regno: int, sub: bool, next_id) -> Reg:
    """``reg += s`` (``-=`` with ``sub``) for a pointer ``reg`` and scalar ``s``."""
    if s.is_const:
        v = s.smin
        off = reg.off - v if sub else reg.off + v
        if not -MAX_VAR_OFF < off < MAX_VAR_OFF:
            raise Refuse(f"value {v} makes {reg.type.value} pointer be out of bounds")
        return replace(reg, off=off)
    if s.smin == S64_MIN:  # the kernel's check_reg_sane_offset looks at the minimum only
        raise Refuse(f"math between {reg.type.value} pointer and register with unbounded min value is not allowed "
                     f"(R{regno}+={s}): bound it first (&= or a comparison)")
    if not -MAX_VAR_OFF < s.smin < MAX_VAR_OFF:
        raise Refuse(f"value {s.smin} makes {reg.type.value} pointer be out of bounds")
    var = alu64(0x10 if sub else 0x00, reg.scalar, s)
    if not -MAX_VAR_OFF < var.smin + reg.off < MAX_VAR_OFF:  # the result is checked too
        raise Refuse(f"{reg.type.value} pointer offset {var.smin + reg.off} is not allowed (R{regno} {'-=' if sub else '+='} "
                     f"{s})")
    if reg.type in (RegType.PACKET, RegType.PACKET_META):
        return replace(reg, scalar=var, id=next_id(reg.type), range=0)
    return replace(reg, scalar=var)


def stack_const(st: State, reg: Reg, size: int) -> int | None:
    """The number in ``[reg, reg + size)`` of the stack, if every byte of it is known."""
    lo = reg.off + reg.scalar.value
    slot = st.frames[reg.frame].stack.get((-lo - 1) // 8)
    if isinstance(slot, Reg):
        return slot.scalar.value if slot.is_const and size == 8 and lo % 8 == 0 else None
    kinds = ""
    for b in range(lo, lo + size):
        slot = st.frames[reg.frame].stack.get((-b - 1) // 8, "iiiiiiii")
        kinds += (_spill_bytes(slot) if isinstance(slot, Reg) else slot)[b % 8]
    return _known(kinds)
