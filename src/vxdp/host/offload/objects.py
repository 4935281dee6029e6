"""What the offload service holds for each device: its handle table, objects, usage and counters.

Plain records, no syscalls: `vxdp.host.offload.service` does the work; this
module only says what a device *has*, and renders it for ``vxdp host show``.

A device's `HandleTable` is the one record of its objects: each handle is bound to its
`MapObj` or `ProgObj`, and every view (``host show``, OBJ_LIST, caps usage, a state export)
and every quota reads the table, so no second list can disagree with it. Map memory is
computed from it too: the maps' charges plus the BTF the device's programs hold (`BtfLedger`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...bpf.isa import Insn
from ...bpf.mapapi import Map
from ...bpf.mapspec import MapSpec, MapType
from ...bpf.obj import FuncInfo, LineInfo
from ...virtio.features import Experimental, has
from .btf_ledger import BtfLedger
from .handles import HandleTable, Kind
from .policy import TimeBudget, TokenBucket
from .port import Port
from .rewrite import ACTION_SLOTS

if TYPE_CHECKING:
    from ...engine.xdp_hook import XdpHook

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass
class MapObj:
    """One guest map: its spec, the engine's map, the memory it is charged for, its kernel id (0 on an
    engine outside the kernel)."""

    handle: int
    name: str
    spec: MapSpec
    map: Map
    memory: int
    kernel_id: int = 0
    kernel_name: str = ""
    origin: str = "guest"  # who made it: guest, operator, import
    # a prog_array's filled slots (index -> guest program handle): only the service writes prog_arrays
    # (programs cannot), so this is the kernel's content; PROG_FREE of a program in a slot is refused
    prog_slots: dict[int, int] = field(default_factory=dict)

    @property
    def is_prog_array(self) -> bool:
        return self.spec.type == MapType.PROG_ARRAY

    def describe(self) -> dict:
        t = self.spec.type
        return {
            "handle": self.handle, "name": self.name, "kernel_name": self.kernel_name,
            "type": t.name.lower() if isinstance(t, MapType) else int(t), "key_size": self.spec.key_size,
            "value_size": self.spec.value_size, "max_entries": self.spec.max_entries, "flags": self.spec.flags,
            "memory": self.memory, "kernel_id": self.kernel_id,
            "frozen": bool(getattr(self.map, "frozen", False)), "origin": self.origin,
        }


def in_prog_array(maps: Iterable[MapObj], prog: int) -> tuple[MapObj, int] | None:
    """The first (prog_array, index) holding program handle ``prog``, or None."""
    for m in maps:
        for index, handle in sorted(m.prog_slots.items()):
            if handle == prog:
                return m, index
    return None


@dataclass(frozen=True)
class ProgSource:
    """A program as the guest sent it (guest map handles in the lddw immediates, before rewriting):
    what a state export gives back, so the destination device loads exactly what the guest loaded."""

    insns: tuple[Insn, ...]
    license: str
    prog_type: int
    btf: bytes = b""
    func_info: tuple[FuncInfo, ...] = ()
    line_info: tuple[LineInfo, ...] = ()


@dataclass
class ProgObj:
    """One guest program: the host's loaded copy, its action counters, the guest maps it uses."""

    handle: int
    name: str
    kernel_name: str
    engine_handle: int  # what the engine names the program by (the kernel: an fd); prog_array values carry it
    tag: str
    kernel_id: int  # the engine's id for it (the kernel's program id): what a prog_array lookup answers
    guest_insns: int
    host_insns: int
    map_handles: tuple[int, ...]
    counters: Map  # host-owned PERCPU_ARRAY, one u64 per CPU per `ACTION_SLOTS` entry
    source: ProgSource | None = None  # the guest's load, for STATE_EXPORT
    origin: str = "guest"  # who loaded it: guest (the ctrl vq), operator (`vxdp prog load --device`), import

    def action_counts(self) -> dict[str, int]:
        """Verdicts so far, summed over CPUs: aborted, drop, pass, tx, redirect, other."""
        out = {}
        stride = 8  # u64 values; a per-CPU lookup returns one 8-byte slot per possible CPU
        for slot, label in enumerate(ACTION_SLOTS):
            raw = self.counters.lookup(slot.to_bytes(4, "little")) or b""
            out[label] = sum(_U64.unpack_from(raw, i)[0] for i in range(0, len(raw) - stride + 1, stride))
        return out


@dataclass
class Device:
    """One virtio-net device the service offloads for: its port, engine, handle table and budgets."""

    name: str
    port: Port
    engine: object  # a vxdp.engine.base.Engine made by the service's engine factory
    handles: HandleTable
    bucket: TokenBucket  # the guest's command rate
    budget: TimeBudget  # the device's verifier time (PROG_LOAD)
    btf: BtfLedger = field(default_factory=BtfLedger)  # the BTF its live programs hold (charged)
    # the frontend's acked features, read from the device each time (never copied): see `negotiated`
    acked_features: Callable[[], int] = lambda: 0
    attached: int | None = None  # guest handle of the program on the port
    # STATE_EXPORT's snapshot (serial, blob) from the start of a walk to its end; STATE_IMPORT's chunks so far
    export_snapshot: tuple[int, bytes] | None = None
    export_serial: int = 0
    import_buffer: bytearray | None = None
    # commands: the guest's (rate-limited); operator_commands: the host operator's (not rate-limited)
    counters: dict[str, int] = field(default_factory=lambda: {"commands": 0, "refused": 0, "rate_limited": 0,
                                                              "operator_commands": 0})
    # on an engine outside the kernel: what runs the attached program on the port's frames (`run_rx`)
    rx_hook: XdpHook | None = None

    @property
    def negotiated(self) -> bool:
        """Whether the frontend acked the offload bit: the one answer the ctrl handler refuses by and
        ``host show`` reports (``offload_negotiated``)."""
        return has(self.acked_features(), Experimental.NET_BPF_OFFLOAD)

    def maps(self) -> Iterator[MapObj]:
        """The device's maps, in handle order."""
        return (e.obj for e in self.handles.entries(Kind.MAP) if e.obj is not None)

    def progs(self) -> Iterator[ProgObj]:
        """The device's programs, in handle order."""
        return (e.obj for e in self.handles.entries(Kind.PROG) if e.obj is not None)

    @property
    def map_memory(self) -> int:
        """Bytes charged to the device's map memory quota: its maps, and the BTF its programs hold."""
        return sum(m.memory for m in self.maps()) + self.btf.charged

    @property
    def insns(self) -> int:
        """Guest instructions loaded (the ``max_total_insns`` quota)."""
        return sum(p.guest_insns for p in self.progs())

    def guest_values(self, obj: MapObj, items: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """A map's (key, value) pairs as the guest knows them: a prog_array's values are the program ids
        the engine answers, turned back into the guest's program handles (0 for one not the device's)."""
        if not obj.is_prog_array:
            return list(items)
        handles = {p.kernel_id: p.handle for p in self.progs()}
        return [(k, _U32.pack(handles.get(_U32.unpack_from(v)[0], 0))) for k, v in items]

    def describe(self) -> dict:
        port = self.port
        return {
            "name": self.name, "port": port.ifname, "ifindex": port.ifindex, "netns": port.netns,
            "offload_negotiated": self.negotiated, "engine": getattr(self.engine, "name", "?"),
            "attached": self.attached, "map_memory": self.map_memory, "counters": dict(self.counters),
            # frames of the port the daemon ran the program on, by verdict (engines outside the kernel)
            "rx_frames": self.rx_hook.snapshot() if self.rx_hook is not None else None,
            "programs": [self._describe_prog(p) for p in self.progs()],
            "maps": [m.describe() for m in self.maps()],
        }

    def _describe_prog(self, p: ProgObj) -> dict:
        port = self.port
        return {
            "handle": p.handle, "name": p.name, "kernel_name": p.kernel_name, "tag": p.tag,
            "kernel_id": p.kernel_id, "insns": p.guest_insns, "host_insns": p.host_insns,
            "maps": list(p.map_handles), "origin": p.origin,
            "attached": ({"ifname": port.ifname, "ifindex": port.ifindex, "netns": port.netns, "mode": port.mode}
                         if self.attached == p.handle else None),
            "actions": p.action_counts(),
        }
