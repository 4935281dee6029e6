"""Helper calls checked against their prototypes (`vxdp.bpf.helpers.PROTOTYPES`).

Each argument register must hold what the prototype names: the map a map helper
acts on (of a type that helper accepts), a key or value pointer with
``key_size`` / ``value_size`` bytes behind it, the unmodified context, memory
with a bounded size in the next argument. After the call r0 holds the return
kind (a map lookup's value-or-null gets a fresh id for its null check), r1-r5
are unreadable, and a helper that moves the packet makes every packet pointer a
plain number.
"""

from __future__ import annotations

from ...bpf.helpers import PROTOTYPES, ArgType, Helper, RetType
from ...bpf.mapspec import MapSpec, MapType
from . import access
from .access import Refuse
from .alu import clobber_caller_saved, read
from .scalar import Scalar
from .state import UNKNOWN, Reg, RegType, State

MAX_HELPER_MEM = 1 << 29
MEMORY = (RegType.STACK, RegType.PACKET, RegType.PACKET_META, RegType.MAP_VALUE)
_MEM_NAMES = "fp, pkt, pkt_meta, map_value"

REDIRECT_MAPS = {MapType.DEVMAP, MapType.DEVMAP_HASH, MapType.CPUMAP, MapType.XSKMAP}
# helper -> the map types it takes (None: any map but these special ones)
_SPECIAL = {MapType.PROG_ARRAY} | REDIRECT_MAPS
MAP_COMPAT = {Helper.tail_call: {MapType.PROG_ARRAY}, Helper.redirect_map: REDIRECT_MAPS}


def helper_name(h: int) -> str:
    try:
        return f"bpf_{Helper(h).name}#{h}"
    except ValueError:
        return f"unknown#{h}"


class HelperCall:
    """Checks one ``call`` of a helper on ``state``; ``maps`` are the program's maps by handle."""

    def __init__(self, st: State, helper: int, maps: dict[int, MapSpec], privileged: bool, next_id):
        self.st, self.helper, self.maps, self.privileged, self.next_id = st, helper, maps, privileged, next_id
        self.map: MapSpec | None = None
        self.callback: int | None = None
        self.const_key: int | None = None

    def check(self) -> None:
        proto = PROTOTYPES.get(self.helper)  # type: ignore[call-overload]
        if proto is None:
            raise Refuse(f"invalid func {helper_name(self.helper)}: not a helper an XDP program may call")
        args = proto.args
        for i, kind in enumerate(args):
            regno = i + 1
            reg = read(self.st, regno)
            self._arg(regno, reg, kind, args[i + 1] if i + 1 < len(args) else None)
        self._finish(proto)

    def _arg(self, regno: int, reg: Reg, kind: ArgType, next_kind: ArgType | None) -> None:
        name = helper_name(self.helper)
        if kind is ArgType.ANYTHING or kind in (ArgType.CONST_SIZE, ArgType.CONST_SIZE_OR_ZERO):
            if kind is not ArgType.ANYTHING and reg.type is not RegType.SCALAR:
                raise Refuse(f"R{regno} type={reg.type.value} expected=scalar (a size for {name})")
            return
        if kind is ArgType.CONST_MAP_PTR:
            if reg.type is not RegType.MAP_PTR:
                raise Refuse(f"R{regno} type={reg.type.value} expected=map_ptr for {name}")
            self.map = self.maps[reg.map]
            want = MAP_COMPAT.get(self.helper)  # type: ignore[call-overload]
            if (want is not None and self.map.type not in want) or (want is None and self.map.type in _SPECIAL):
                raise Refuse(f"cannot pass map_type {int(self.map.type)} ({self.map.type.name}) into func {name}")
            return
        if kind is ArgType.CTX:
            if reg.type is not RegType.CTX:
                raise Refuse(f"R{regno} type={reg.type.value} expected=ctx for {name}")
            if reg.off or not reg.scalar.is_const or reg.scalar.value:
                raise Refuse(f"dereference of modified ctx ptr R{regno} off={reg.off} disallowed")
            return
        if kind is ArgType.FUNC:
            if reg.type is not RegType.FUNC:
                raise Refuse(f"R{regno} type={reg.type.value} expected=func for {name}")
            self.callback = reg.map
            return
        if kind is ArgType.STACK_OR_NULL:
            if not (reg.type is RegType.STACK or reg.is_const and reg.scalar.value == 0):
                raise Refuse(f"R{regno} type={reg.type.value} expected=fp or null for {name}")
            return
        if kind in (ArgType.MAP_KEY, ArgType.MAP_VALUE):
            assert self.map is not None
            size = self.map.key_size if kind is ArgType.MAP_KEY else self.map.value_size
            self._memory(regno, reg, size, write=False)
            if kind is ArgType.MAP_KEY and reg.type is RegType.STACK and reg.scalar.is_const:
                self.const_key = access.stack_const(self.st, reg, size)
            return
        # MEM, MEM_OR_NULL, UNINIT_MEM: the size is the next argument
        size_reg = read(self.st, regno + 1)
        if size_reg.type is not RegType.SCALAR:
            raise Refuse(f"R{regno + 1} type={size_reg.type.value} expected=scalar (the size of R{regno})")
        s = size_reg.scalar
        if s.smin < 0:
            raise Refuse(f"R{regno + 1} min value is negative, either use unsigned or 'var &= const'")
        if s.umax >= MAX_HELPER_MEM:
            raise Refuse(f"R{regno + 1} unbounded memory access, use 'var &= const' or 'if (var < const)'")
        if s.umin == 0 and next_kind is ArgType.CONST_SIZE and s.umax == 0:
            raise Refuse(f"R{regno + 1} invalid zero-sized read")
        if kind is ArgType.MEM_OR_NULL and reg.is_const and reg.scalar.value == 0:
            if s.umax:
                raise Refuse(f"R{regno} is NULL but its size R{regno + 1} may be {s.umax}")
            return
        self._memory(regno, reg, s.umax, write=kind is ArgType.UNINIT_MEM)

    def _memory(self, regno: int, reg: Reg, size: int, write: bool) -> None:
        if reg.type not in MEMORY:
            raise Refuse(f"R{regno} type={reg.type.value} expected={_MEM_NAMES} for {helper_name(self.helper)}")
        if size == 0:
            return
        if reg.type is RegType.STACK:
            access.stack_range(self.st, reg, regno, size, write, self.privileged)
        elif reg.type is RegType.MAP_VALUE:
            access.map_value(reg, regno, 0, size, self.maps[reg.map], write)
        else:
            access.packet(reg, regno, 0, size)

    def _finish(self, proto) -> None:
        st = self.st
        if proto.changes_pkt_data:
            st.retype(lambda r: r.type in (RegType.PACKET, RegType.PACKET_META, RegType.PACKET_END),
                      lambda r: UNKNOWN)
        clobber_caller_saved(st)
        if proto.ret is RetType.INTEGER:
            st.regs[0] = UNKNOWN
        elif proto.ret is RetType.VOID:
            st.regs[0] = Reg(RegType.NOT_INIT)
        else:
            assert self.map is not None
            handle = next(h for h, m in self.maps.items() if m is self.map)
            # an array lookup of a constant key below max_entries cannot fail (the kernel knows it too)
            if self.map.type in (MapType.ARRAY, MapType.PERCPU_ARRAY) and self.const_key is not None \
                    and self.const_key < self.map.max_entries:
                st.regs[0] = Reg(RegType.MAP_VALUE, Scalar.const(0), map=handle)
            else:
                st.regs[0] = Reg(RegType.MAP_VALUE_OR_NULL, Scalar.const(0), id=self.next_id(None), map=handle)
