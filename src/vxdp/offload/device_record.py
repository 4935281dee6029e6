"""The device's record of its offloaded objects, read over the BPF ctrl class (OBJ_LIST, protocol 1.2).

A device keeps one table of the maps and programs it holds, whoever made them:
its driver, the host's operator, a state import. `OffloadRecord` is that table
as the `vxdp.engine.registry.DeviceRecord` both daemons' program registries read
for their offload slot, so the guest's ``prog show``, the operator's and ``host
show`` list the same objects, and ``map …`` by name works on any of them (its
maps are `RemoteMap`s on the device's handles). The guest reaches the device
over its ctrl vq, the operator through the device's own handler in process; the
transport is the client's business.
"""

from __future__ import annotations

import errno

from ..bpf.isa import ACTION_NAMES
from ..bpf.mapspec import MapSpec, MapType
from ..engine.registry import RecordedMap, RecordedProgram
from .client import OffloadClient, OffloadRefused, OffloadTransportError
from .messages import ObjInfo
from .remote import RemoteMap
from .wire import Errno, ObjOrigin

ORIGIN_NAMES = {ObjOrigin.DRIVER: "guest", ObjOrigin.OPERATOR: "operator", ObjOrigin.IMPORT: "import"}


class OffloadRecord:
    """A `DeviceRecord` over one device's OBJ_LIST (the caller checked `OffloadClient.can_list`)."""

    def __init__(self, client: OffloadClient, *, keeps: frozenset[str] = frozenset()):
        """``keeps``: origins `clear` leaves alone. The guest's detach keeps what the host's operator put
        on its device (the operator's to remove); the operator's clears everything (the host's admin)."""
        self.client = client
        self.keeps = keeps

    def objects(self) -> tuple[list[RecordedProgram], list[RecordedMap]]:
        progs, maps = [], []
        for o in self.client.obj_list():
            origin = ORIGIN_NAMES.get(o.origin, str(o.origin))  # type: ignore[call-overload]
            if o.is_map:
                maps.append(RecordedMap(o.name, self._map(o), origin))
            else:
                progs.append(RecordedProgram(o.handle, o.name, o.attached, o.insns, o.tag.hex(), origin))
        return progs, maps

    def _map(self, o: ObjInfo) -> RemoteMap:
        try:
            spec = MapSpec(name=o.name or "map", type=MapType(o.type), key_size=o.key_size,
                           value_size=o.value_size, max_entries=o.max_entries, flags=o.map_flags)
        except ValueError:
            raise OffloadTransportError(errno.EIO, f"OBJ_LIST: map {o.handle} has type {o.type}, which this "
                                        "driver does not know") from None
        m = RemoteMap(self.client, o.handle, spec, self.client.caps().ncpus if spec.is_percpu else 1)
        m.frozen = o.frozen
        return m

    def counters(self) -> dict[str, int]:
        q = self.client.prog_query()
        return {} if q is None else dict(zip(ACTION_NAMES, q.actions))

    def clear(self) -> int:
        """Detach what runs on RX, free every program, then every map (a map is busy while a program
        uses it), but for objects whose origin this record `keeps`; objects somebody else freed
        meanwhile are fine. How many objects it freed."""
        objs = [o for o in self.client.obj_list() if ORIGIN_NAMES.get(o.origin, str(o.origin)) not in self.keeps]
        if any(o.attached for o in objs):
            _quiet(self.client.prog_detach)
        for o in objs:  # a program in a prog_array cannot be freed: empty them first
            if o.is_map and o.type == MapType.PROG_ARRAY and not o.frozen:
                _quiet(self.client.empty_prog_array, o.handle)
        for o in objs:
            if not o.is_map:
                _quiet(self.client.prog_free, o.handle)
        for o in objs:
            if o.is_map:
                _quiet(self.client.map_free, o.handle)
        return len(objs)


def _quiet(fn, *args) -> None:
    """Run a detach/free; the object being gone already (EBADF, ENOENT) is what we wanted."""
    try:
        fn(*args)
    except OffloadRefused as e:
        if e.code not in (Errno.EBADF, Errno.ENOENT):
            raise


__all__ = ["ORIGIN_NAMES", "OffloadRecord"]
