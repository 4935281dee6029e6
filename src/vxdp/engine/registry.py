"""Objects a daemon has loaded on its engines, addressed the way users name them.

The guest driver (offloaded and native programs) and the host (the operator
path) both answer ``prog load/show/detach`` and ``map show/dump/lookup/update/
delete`` for what they loaded; users name maps as the object names them and
programs as ``--prog``. This table keeps, per *slot* (``offload``, ``native``),
at most one loaded object with the program attached from it, and answers those
requests over any engine, so both daemons share one implementation.

Attaching is the engine's business (an offload engine attaches on the host, the
guest driver puts a native program on its rx path), so the caller passes an
``attach``/``detach`` pair when it loads.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..bpf.elf import load_object as parse_object
from ..bpf.mapspec import percpu_value_stride, possible_cpus
from .base import Engine, Map
from .loader import LoadedObject, load_object

log = logging.getLogger(__name__)


def map_doc(name: str, m: Map, *, entries: bool = True, handle: bool = True) -> dict[str, Any]:
    """A map as JSON, the same for every engine: entries sorted by key (hash maps iterate in
    each engine's own order), per-CPU values split one per CPU as bpftool shows them.

    ``value_bytes`` is what a lookup returns and an update takes (all CPUs' slots for a
    per-CPU map). ``handle`` differs between engines (a kernel fd, a guest handle), so a
    caller comparing engines leaves it out.
    """
    spec = m.spec
    doc: dict[str, Any] = {"name": name}
    if handle:
        doc["handle"] = m.handle
    doc.update(
        type=spec.type.name.lower(),
        key_size=spec.key_size,
        value_size=spec.value_size,
        value_bytes=percpu_value_stride(spec.value_size) * possible_cpus() if spec.is_percpu else spec.value_size,
        max_entries=spec.max_entries,
        flags=spec.flags,
        frozen=bool(m.frozen),
    )
    if not entries:
        return doc
    rows = []
    for key, value in sorted(m.items()):
        row: dict[str, Any] = {"key": key.hex()}
        if spec.is_percpu:
            stride = percpu_value_stride(spec.value_size)
            ncpus = len(value) // stride
            row["values"] = [
                {"cpu": cpu, "value": value[cpu * stride : cpu * stride + spec.value_size].hex()}
                for cpu in range(ncpus)
            ]
        else:
            row["value"] = value.hex()
        rows.append(row)
    doc["entries"] = rows
    return doc


@dataclass
class Slot:
    """One loaded object and the program attached from it."""

    mode: str
    path: str
    loaded: LoadedObject
    attached: str
    detach: Callable[[], None]
    counters: Callable[[], dict[str, int]] = field(default=dict)


class RegistryError(OSError):
    """A request naming something not loaded; carries the errno a daemon replies with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)


class ProgramRegistry:
    def __init__(self) -> None:
        self.slots: dict[str, Slot] = {}

    def load(
        self,
        mode: str,
        engine: Engine,
        path: str,
        *,
        prog: str | None = None,
        attach: Callable[[LoadedObject, int], tuple[Callable[[], None], Callable[[], dict[str, int]]]],
    ) -> dict[str, Any]:
        """Load ``path`` on ``engine`` into slot ``mode`` (replacing what was there) and attach ``prog``.

        ``attach(loaded, handle)`` attaches and returns (detach, counters) callables. Replacing a
        slot: the new program is attached *first*, over the old one (its attach replaces the old
        program where it runs, atomically for an offload: see `attached_handle`), and only then is
        the old object retired: its ``detach`` leaves alone a program that is not its own any more
        (each engine's detach does), and it is freed. A refused attach frees the new object and
        keeps the old slot as it was.
        """
        obj = parse_object(path)
        name = obj.program(prog).name
        loaded = load_object(engine, obj)
        try:
            detach, counters = attach(loaded, loaded.programs[name])
        except BaseException:
            loaded.close()
            raise
        old = self.slots.pop(mode, None)
        self.slots[mode] = Slot(mode, path, loaded, name, detach, counters)
        if old is not None:
            try:
                self._retire(old)
            except Exception as e:  # noqa: BLE001 -- the new program is loaded and attached; say, don't fail
                log.warning("slot %s: freeing the replaced object %s: %s", mode, old.path, e)
        return self.slot_doc(self.slots[mode])

    def attached_handle(self, mode: str) -> int | None:
        """The engine handle of the program attached from slot ``mode`` (``None`` if the slot is empty):
        what a load into the same slot replaces without being asked (the slot is its owner's)."""
        slot = self.slots.get(mode)
        return None if slot is None else slot.loaded.programs.get(slot.attached)

    def unload(self, mode: str | None = None) -> int:
        """Detach and free the object in ``mode`` (every slot with None); how many were there."""
        modes = [mode] if mode is not None else list(self.slots)
        n = 0
        for m in modes:
            slot = self.slots.pop(m, None)
            if slot is None:
                continue
            n += 1
            self._retire(slot)
        return n

    @staticmethod
    def _retire(slot: Slot) -> None:
        try:
            slot.detach()
        finally:
            slot.loaded.close()

    def forget(self, mode: str) -> None:
        """Drop a slot whose engine state is already gone (the device was reset), freeing nothing."""
        self.slots.pop(mode, None)

    # -- views ---------------------------------------------------------------------------
    def slot_doc(self, slot: Slot) -> dict[str, Any]:
        programs = [
            {
                "name": name,
                "handle": handle,
                "mode": slot.mode,
                "object": slot.path,
                "attached": name == slot.attached,
                "insns": len(slot.loaded.obj.programs[name].function.insns),
                "tag": getattr(slot.loaded.engine, "tags", {}).get(handle),
            }
            for name, handle in slot.loaded.programs.items()
        ]
        for p in programs:
            if p["attached"]:
                p["counters"] = slot.counters()
        maps = [map_doc(name, m, entries=False) for name, m in slot.loaded.maps.items()]
        for m in maps:
            m["mode"] = slot.mode
        return {"programs": programs, "maps": maps}

    def show(self) -> dict[str, Any]:
        docs = [self.slot_doc(s) for s in self.slots.values()]
        return {
            "programs": [p for d in docs for p in d["programs"]],
            "maps": [m for d in docs for m in d["maps"]],
        }

    def find_map(self, name: str, mode: str | None = None) -> Map:
        """A map by its name in the object; the offloaded one first when both slots have it,
        unless ``mode`` names the slot (xdp_pass offloaded and xdp1 native both have ``rxcnt``)."""
        for m in ("offload", "native", *self.slots) if mode is None else (mode,):
            slot = self.slots.get(m)
            if slot is not None and name in slot.loaded.maps:
                return slot.loaded.maps[name]
        where = f" in the {mode} slot" if mode else ""
        raise RegistryError(errno.ENOENT, f"no map named {name!r} is loaded{where}")

    # -- map requests (keys and values travel as hex) ------------------------------------
    def map_dump(self, name: str, mode: str | None = None) -> dict[str, Any]:
        return map_doc(name, self.find_map(name, mode))

    def map_lookup(self, name: str, key: str, mode: str | None = None) -> dict[str, Any]:
        value = self.find_map(name, mode).lookup(bytes.fromhex(key))
        if value is None:
            raise RegistryError(errno.ENOENT, f"map {name}: no entry for key {key}")
        return {"key": key, "value": value.hex()}

    def map_update(self, name: str, key: str, value: str, flags: str = "any",
                   mode: str | None = None) -> dict[str, Any]:
        codes = {"any": 0, "noexist": 1, "exist": 2}
        if flags not in codes:
            raise RegistryError(errno.EINVAL, f"flags {flags!r}: one of {', '.join(codes)}")
        self.find_map(name, mode).update(bytes.fromhex(key), bytes.fromhex(value), codes[flags])
        return {}

    def map_next_key(self, name: str, key: str | None = None) -> dict[str, Any]:
        nxt = self.find_map(name).next_key(bytes.fromhex(key) if key is not None else None)
        return {"key": nxt.hex() if nxt is not None else None}

    def map_delete(self, name: str, key: str, mode: str | None = None) -> dict[str, Any]:
        self.find_map(name, mode).delete(bytes.fromhex(key))
        return {}

    def map_freeze(self, name: str, mode: str | None = None) -> dict[str, Any]:
        """BPF_MAP_FREEZE (offloaded: MAP_FREEZE on the device): read-only to user space from now on."""
        self.find_map(name, mode).freeze()
        return {"map": name, "frozen": True}

    def map_handlers(self) -> dict[str, Callable[..., Any]]:
        """The ``map.*`` control-socket methods (``vxdp map …``), the same in both daemons."""
        return {
            "map.show": lambda: self.show()["maps"],
            "map.dump": lambda map, mode=None: self.map_dump(map, mode),
            "map.lookup": lambda map, key, mode=None: self.map_lookup(map, key, mode),
            "map.update": lambda map, key, value, flags="any", mode=None: self.map_update(map, key, value, flags,
                                                                                            mode),
            "map.delete": lambda map, key, mode=None: self.map_delete(map, key, mode),
            "map.next_key": lambda map, key=None: self.map_next_key(map, key),
            "map.freeze": lambda map, mode=None: self.map_freeze(map, mode),
        }

    def close(self) -> None:
        self.unload()
