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

One record, many views: an offloaded object lives in the device, which keeps
the one table of what it holds, whoever made it (this daemon, the host's
operator, a state import). So for a slot whose objects live in a device, the
owner gives a `DeviceRecord` (``record``) and every view of that slot (``prog
show``, ``map …`` by name, ``prog detach``) reads and acts on the device's
table, not on what this registry loaded; the slot only adds which file its own
programs came from. Without a record (the native slot, or a device too old to
list its objects, which `record` says by returning the reason as a string) the
registry's own slot is the view.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..bpf.elf import load_object as parse_object
from ..bpf.mapapi import Map
from ..bpf.mapspec import percpu_value_stride
from .base import Engine
from .loader import LoadedObject, load_object

log = logging.getLogger(__name__)


def _handle_form(name: str) -> int | None:
    """The handle of ``id:N`` (a map named by handle), else None."""
    head, sep, tail = name.partition(":")
    if sep and head == "id" and tail.isdigit():
        return int(tail)
    return None


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
        value_bytes=spec.user_value_size(),
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


@dataclass(frozen=True)
class RecordedProgram:
    """A program as the device records it."""

    handle: int
    name: str
    attached: bool
    insns: int
    tag: str
    origin: str  # guest, operator, import


@dataclass(frozen=True)
class RecordedMap:
    """A map as the device records it, and a `Map` that reads and writes it there."""

    name: str
    map: Map
    origin: str


class DeviceRecord(Protocol):
    """The device's own table of the objects it holds (for the offload slot)."""

    def objects(self) -> tuple[list[RecordedProgram], list[RecordedMap]]: ...

    def counters(self) -> dict[str, int]:
        """The attached program's verdict counts."""
        ...

    def clear(self) -> int:
        """Detach and free everything the device holds; how many objects there were."""
        ...


RecordSource = Callable[[str], "DeviceRecord | str | None"]
"""``mode -> record``: the device's record for that slot, None for a slot without one (native),
or a string saying why the device cannot be asked (the registry falls back to its own slot)."""


class RegistryError(OSError):
    """A request naming something not loaded; carries the errno a daemon replies with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)


class ProgramRegistry:
    def __init__(self, record: RecordSource | None = None) -> None:
        self.slots: dict[str, Slot] = {}
        self._record = record or (lambda mode: None)
        self._warned: set[str] = set()

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

    def detach(self, mode: str | None = None) -> int:
        """``prog detach``: detach and free the object in ``mode`` (every slot with None) and, for a
        slot with a device record, everything else the device holds (an import's, the operator's),
        so the device is empty after; how many slots had something."""
        modes = [mode] if mode is not None else list(dict.fromkeys(("offload", *self.slots)))
        n = 0
        for m in modes:
            rec = self.record(m)
            if rec is None:
                n += self.unload(m)
                continue
            # the device's table is the truth: whatever runs on RX now (ours, the operator's, an
            # import's) is detached and everything freed, then our slot's handles are forgotten quietly
            cleared = rec.clear()
            slot = self.slots.pop(m, None)
            if slot is not None:
                slot.loaded.close()
            n += 1 if slot is not None or cleared else 0
        return n

    def forget(self, mode: str) -> None:
        """Drop a slot whose engine state is already gone (the device was reset), freeing nothing."""
        self.slots.pop(mode, None)

    # -- views ---------------------------------------------------------------------------------
    def record(self, mode: str) -> DeviceRecord | None:
        """The device's record for ``mode``, or None: the registry's own slot is the view then."""
        return self._record_or_note(mode)[0]

    def _record_or_note(self, mode: str) -> tuple[DeviceRecord | None, str | None]:
        """(record, None), or (None, why the device cannot list its objects: logged once), or (None, None)."""
        rec = self._record(mode)
        if not isinstance(rec, str):
            return rec, None
        if mode not in self._warned:
            self._warned.add(mode)
            log.warning("%s slot: %s", mode, rec)
        return None, rec

    def slot_doc(self, slot: Slot) -> dict[str, Any]:
        programs = [
            {
                "name": name,
                "handle": handle,
                "mode": slot.mode,
                "engine": slot.loaded.engine.name,
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

    def record_doc(self, mode: str, rec: DeviceRecord) -> dict[str, Any]:
        """The device's table as `slot_doc` shows a slot, each object with its ``origin``; programs
        this registry loaded name their ``object`` file."""
        progs, maps = rec.objects()
        slot = self.slots.get(mode)
        files = {h: slot.path for h in slot.loaded.programs.values()} if slot else {}
        programs = []
        for p in progs:
            doc: dict[str, Any] = {"name": p.name, "handle": p.handle, "mode": mode, "attached": p.attached,
                                   "insns": p.insns, "tag": p.tag, "origin": p.origin}
            if p.handle in files:
                doc["object"] = files[p.handle]
            if p.attached:
                doc["counters"] = rec.counters()
            programs.append(doc)
        mdocs = [dict(map_doc(m.name, m.map, entries=False), mode=mode, origin=m.origin) for m in maps]
        return {"programs": programs, "maps": mdocs}

    def show(self) -> dict[str, Any]:
        docs, notes = [], []
        for mode in dict.fromkeys(("offload", *self.slots)):
            rec, note = self._record_or_note(mode)
            if note:
                notes.append(f"{mode}: {note}")
            if rec is not None:
                docs.append(self.record_doc(mode, rec))
            elif mode in self.slots:
                docs.append(self.slot_doc(self.slots[mode]))
        out: dict[str, Any] = {
            "programs": [p for d in docs for p in d["programs"]],
            "maps": [m for d in docs for m in d["maps"]],
        }
        if notes:
            out["notes"] = notes
        return out

    def _maps_of(self, mode: str) -> list[tuple[str, Map]]:
        rec = self.record(mode)
        if rec is not None:
            return [(m.name, m.map) for m in rec.objects()[1]]
        slot = self.slots.get(mode)
        return list(slot.loaded.maps.items()) if slot is not None else []

    def find_map(self, name: str, mode: str | None = None) -> Map:
        """A map by its name, or by its handle as ``id:N`` (bpftool's ``id``); the offloaded one first
        when both slots have the name, unless ``mode`` names the slot (xdp_pass offloaded and xdp1
        native both have ``rxcnt``). Two maps of that name in one slot (a device holding the maps of
        two objects) are ambiguous: refused, naming their handles, so the caller picks one by id."""
        return self._find(name, mode)[1]

    def _find(self, name: str, mode: str | None = None) -> tuple[str, Map]:
        handle = _handle_form(name)
        for m in ("offload", "native", *self.slots) if mode is None else (mode,):
            found = [(n, mp) for n, mp in self._maps_of(m) if (mp.handle == handle if handle else n == name)]
            if len(found) > 1:
                hs = ", ".join(str(mp.handle) for _, mp in found)
                raise RegistryError(errno.EINVAL, f"map name {name!r} is ambiguous in the {m} slot: handles {hs}; "
                                                  f"name one as id:HANDLE")
            if found:
                return found[0]
        where = f" in the {mode} slot" if mode else ""
        what = f"with handle {handle}" if handle else f"named {name!r}"
        raise RegistryError(errno.ENOENT, f"no map {what} is loaded{where}")

    # -- map requests (keys and values travel as hex) ------------------------------------
    def map_dump(self, name: str, mode: str | None = None) -> dict[str, Any]:
        return map_doc(*self._find(name, mode))

    def map_info(self, name: str, mode: str | None = None) -> dict[str, Any]:
        """The map ``name`` resolves to (sizes, handle), without its entries."""
        return map_doc(*self._find(name, mode), entries=False)

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
            "map.info": lambda map, mode=None: self.map_info(map, mode),
            "map.lookup": lambda map, key, mode=None: self.map_lookup(map, key, mode),
            "map.update": lambda map, key, value, flags="any", mode=None: self.map_update(map, key, value, flags,
                                                                                            mode),
            "map.delete": lambda map, key, mode=None: self.map_delete(map, key, mode),
            "map.next_key": lambda map, key=None: self.map_next_key(map, key),
            "map.freeze": lambda map, mode=None: self.map_freeze(map, mode),
        }

    def close(self) -> None:
        self.unload()
