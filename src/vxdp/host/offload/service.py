"""The host's `OffloadService`: every offload command, for every device, through one policy.

Callers (the guest's ctrl-vq commands once decoded, the host operator's) call the plain
methods here; each returns a Python value or raises `OffloadError`. Nothing here knows the
wire format.

What it does per command, in order: take a token from the device's command bucket (rule
``rate``; not for the host operator, see `as_operator`), translate guest handles through the
device's `HandleTable` (EBADF for anything the device does not own), apply the policy (type
allowlists, sizes, quotas), then ask the device's engine. On the kernel engine the maps are made
in the host kernel and the program goes through the host verifier after `rewrite` has checked
it, put the engine's map handles in place of guest handles and added the action-counting
epilogue; ``prog_attach`` puts it on the device's `Port`, so on a kernel port DROP and TX never
leave the kernel. Kernel object names are ``<device>_<name>`` cut to the kernel's 15
characters, so ``bpftool prog show`` says which device owns a program; `show` keeps the full names.

Two things are injected, so that the same service runs on any engine: the engine factory
(one engine per device, made again at each reset) and the port factory (the device's port from
its interface name and netns). The defaults are the host kernel's (`KernelEngine`, `KernelPort`);
the interpreter pairs with a `RecordedPort` and needs no privilege.

One record: a device's handle table, each handle bound to its `MapObj` or `ProgObj`, is all the
service keeps of its objects; quotas, ``show``, `objects` (OBJ_LIST), caps usage and a state
export all read it, and map memory is computed from it and the device's BTF ledger.

prog_array values cross the boundary as guest *program handles*: an update translates them to
the engine's program handle (the kernel's prog_array takes fds), and what a lookup answers (the
program id) goes back through `Device.guest_values`, the one place that translation is made.

Lifetimes: `free` closes one object; `reset` (the guest reset the device or went away) and
`remove_device` detach and close everything the device made, so no kernel map or program
outlives it. A map a live program uses, an attached program, and a program in one of the
device's prog_arrays cannot be freed (EBUSY): detach, delete the entry or free the user first,
so every program the engine holds for a device is one its quota counts. BTF is charged to the
device's map memory (`btf_ledger`).

The feature bit: a guest that did not negotiate offload gets every BPF command refused. The
device's acked features are the one source: `add_device` takes a callable reading them, the device
record answers from it each time (`Device.negotiated`), ``show`` reports that as
``offload_negotiated`` and `require_negotiated` refuses by it, which the guest's ctrl handler calls
before decoding. The operator path offloads on behalf of stock guests, which never negotiate, so
it skips that check and nothing else.

State export/import (`state`) goes through a small public API that works on a device record
under the lock, skipping the command rate: `create_map_at`, `load_prog_at`, `fill_map`,
`attach`, `clear`.

Every object records who made it (``origin``: the guest, the operator, an import), so each view
of the device's table can say so.
"""

from __future__ import annotations

import errno
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ...bpf.helpers import Helper
from ...bpf.isa import Insn
from ...bpf.kernel.maps import sanitize_name
from ...bpf.mapspec import MapFlag, MapSpec, MapType, UpdateFlag, possible_cpus
from ...bpf.obj import FuncInfo, LineInfo
from ...engine.base import Engine, XdpMd
from ...engine.kernel import KernelEngine
from ...engine.xdp_hook import XdpHook
from ...frames import FrameBatch
from ...offload.messages import ProgLoadRequest
from . import loading, state
from .errors import OffloadError, engine_call
from .handles import HandleTable, Kind
from .objects import Device, MapObj, ProgObj, in_prog_array
from .policy import PROG_TYPES, Policy, TimeBudget, TokenBucket
from .port import KernelPort, Port, RecordedPort

_U32 = struct.Struct("<I")
ALLOWED_MAP_FLAGS = MapFlag.NO_PREALLOC | MapFlag.NO_COMMON_LRU | MapFlag.RDONLY_PROG | MapFlag.WRONLY_PROG
CHARGE_BYTES = 64 << 10  # a guest request costs one more command-rate token per this many bytes
DEVICE_PREFIX_LEN = 7  # of the 15 characters of a kernel name, this many name the device


def kernel_prefix(device: str) -> str:
    """The ``<device>_`` prefix of every kernel object a device's engine makes."""
    return sanitize_name(device)[:DEVICE_PREFIX_LEN] + "_"


def default_engine_factory(prefix: str) -> Engine:
    return KernelEngine(name_prefix=prefix)


class OffloadService:
    """Devices, their handles and objects, under one `Policy`. Thread-safe (one lock)."""

    def __init__(self, engine_factory: Callable[[str], Engine] = default_engine_factory,
                 policy: Policy | None = None, *, clock: Callable[[], float] = time.monotonic,
                 port_factory: Callable[[str, str | None], Port] = KernelPort):
        """``engine_factory(prefix)``: a device's engine (``prefix`` starts its kernel names);
        ``port_factory(ifname, netns)``: a device's port, where that engine's programs run."""
        self.engine_factory = engine_factory
        self.port_factory = port_factory
        self.policy = policy or Policy()
        self.clock = clock
        self.devices: dict[str, Device] = {}
        self._lock = threading.RLock()
        self._operator = threading.local()  # .active: this thread runs the host operator's commands

    @contextmanager
    def as_operator(self) -> Iterator[None]:
        """Commands this thread issues inside are the host operator's (``vxdp prog load --device``), not
        the guest's: they take no token from the device's command-rate bucket, which exists to stop a
        guest from flooding its host, so an operator's load never starves the guest of its rate (nor
        the other way round). Every other rule and quota (maps, map memory, programs, instructions,
        sizes, helpers) still applies: they protect host memory whoever asks."""
        before = getattr(self._operator, "active", False)
        self._operator.active = True
        try:
            yield
        finally:
            self._operator.active = before

    @contextmanager
    def charged(self, device: str, nbytes: int) -> Iterator[None]:
        """Charge one guest request to the device's command rate *before* it is decoded (rule
        ``rate``, EAGAIN): a malformed request costs what a good one does, so floods of garbage are
        refused as fast as the bucket says. The cost is one token plus one per `CHARGE_BYTES` of the
        request (decoding is linear in its bytes: a 1 MiB request is 17 commands' worth, a program
        of 4096 instructions one), at most the burst. The commands run inside take no other token."""
        with self._lock:
            dev = self._device(device)
            dev.counters["commands"] += 1
            if not dev.bucket.take(1 + max(0, nbytes) // CHARGE_BYTES):
                dev.counters["rate_limited"] += 1
                q = self.policy.quota
                raise OffloadError(errno.EAGAIN, f"policy: device {device} sent more than "
                                   f"{q.commands_per_second:g} commands a second (burst {q.command_burst}; a "
                                   f"request costs one more per {CHARGE_BYTES >> 10} KiB)", "rate")
        before = getattr(self._operator, "prepaid", False)
        self._operator.prepaid = True
        try:
            yield
        finally:
            self._operator.prepaid = before

    # -- devices -------------------------------------------------------------------------------
    def add_device(self, name: str, ifname: str, *, netns: str | None = None,
                   acked_features: Callable[[], int] = lambda: 0) -> Device:
        """Register device ``name`` whose host port is ``ifname`` (in ``netns``, else ours).

        ``acked_features``: reads the features the device's frontend acked (whether it negotiated
        offload is read from them per command, never copied); without it, none (a stock frontend)."""
        with self._lock:
            if name in self.devices:
                raise OffloadError(errno.EEXIST, f"device {name} already exists")
            port = self.port_factory(ifname, netns)
            q = self.policy.quota
            dev = Device(name=name, port=port, engine=self.engine_factory(kernel_prefix(name)),
                         handles=HandleTable(name),
                         bucket=TokenBucket(q.commands_per_second, q.command_burst, self.clock),
                         budget=TimeBudget(q.verifier_seconds_per_minute, self.clock),
                         acked_features=acked_features)
            self.devices[name] = dev
            port.open(name, kernel_prefix(name))
            return dev

    def remove_device(self, name: str) -> None:
        """Detach and free everything ``name`` offloaded, then forget the device."""
        with self._lock:
            dev = self._device(name)
            try:
                self.clear(dev)
            finally:
                dev.engine.close()
                del self.devices[name]

    def require_negotiated(self, device: str) -> None:
        """Refuse (EOPNOTSUPP, rule ``feature``) unless the guest negotiated the offload feature bit."""
        dev = self._device(device)
        if not dev.negotiated:
            raise OffloadError(errno.EOPNOTSUPP, f"device {device}: VIRTIO_NET_F_BPF_OFFLOAD was not negotiated; "
                               "BPF commands are refused", "feature")

    def close(self) -> None:
        """Remove every device (daemon shutdown)."""
        with self._lock:
            for name in list(self.devices):
                self.remove_device(name)

    # -- capabilities --------------------------------------------------------------------------
    def caps(self, device: str) -> dict:
        """What this device may do: engine, program types, helpers, map types, limits, usage."""
        with self._lock:
            dev = self._begin(device)
            p = self.policy
            helpers = sorted(h for h in Helper if p.helper_allowed(h) is None)
            return {
                "engine": getattr(dev.engine, "name", "?"),
                "prog_types": sorted(PROG_TYPES[t] for t in p.prog_types),
                "helpers": [int(h) for h in helpers],
                "helper_names": [h.name for h in helpers],
                "map_types": sorted(int(t) for t in p.map_types),
                "map_flags": int(ALLOWED_MAP_FLAGS),
                "possible_cpus": possible_cpus(),
                "limits": dict(p.quota.__dict__),
                "usage": {"maps": dev.handles.count(Kind.MAP), "map_memory": dev.map_memory,
                          "progs": dev.handles.count(Kind.PROG), "insns": dev.insns},
            }

    # -- maps ----------------------------------------------------------------------------------
    def map_create(self, device: str, *, type: int, key_size: int, value_size: int, max_entries: int,
                   flags: int = 0, name: str = "") -> int:
        """Create a map; return its guest handle."""
        with self._lock:
            dev = self._begin(device)
            return self._create_map(dev, None, self._origin(), type=type, key_size=key_size,
                                    value_size=value_size, max_entries=max_entries, flags=flags, name=name).handle

    def create_map_at(self, dev: Device, handle: int, *, type: int, key_size: int, value_size: int,
                      max_entries: int, flags: int = 0, name: str = "") -> MapObj:
        """MAP_CREATE under ``handle`` (a state import: origin ``import``), without the command rate;
        the lock is held. EEXIST if the handle is in use."""
        return self._create_map(dev, handle, "import", type=type, key_size=key_size, value_size=value_size,
                                max_entries=max_entries, flags=flags, name=name)

    def _create_map(self, dev: Device, handle: int | None, origin: str, *, type: int, key_size: int,
                    value_size: int, max_entries: int, flags: int, name: str) -> MapObj:
        device = dev.name
        try:
            if handle is not None and dev.handles.kind(handle) is not None:
                raise OffloadError(errno.EEXIST, f"device {device}: handle {handle} is already in use")
            memory = self.policy.check_map(type=type, key_size=key_size, value_size=value_size,
                                           max_entries=max_entries, name=name)
            if flags & ~ALLOWED_MAP_FLAGS:
                raise OffloadError(errno.EPERM, f"policy: map {name!r}: flags {flags:#x} not allowed "
                                   f"(allowed {int(ALLOWED_MAP_FLAGS):#x})", "map_flags")
            q = self.policy.quota
            if dev.handles.count(Kind.MAP) >= q.max_maps:
                raise OffloadError(errno.ENOSPC, f"policy: device {device} already has {q.max_maps} maps",
                                   "quota.max_maps")
            used = dev.map_memory
            if used + memory > q.max_map_memory:
                raise OffloadError(errno.ENOSPC, f"policy: map {name!r} needs {memory} bytes; device {device} "
                                   f"uses {used} of {q.max_map_memory}", "quota.max_map_memory")
            spec = MapSpec(name=name or "map", type=MapType(type), key_size=key_size, value_size=value_size,
                           max_entries=max_entries, flags=flags)
            m = engine_call(f"map {name!r}", dev.engine.create_map, spec)
        except OffloadError:
            dev.counters["refused"] += 1
            raise
        handle = dev.handles.add(Kind.MAP, None, handle)
        info = m.info() if hasattr(m, "info") else None  # engines outside the kernel have no kernel id
        obj = MapObj(handle, name, spec, m, memory, info.id if info else 0, info.name if info else name,
                     origin=origin)
        dev.handles.bind(handle, obj)
        return obj

    def map_lookup(self, device: str, handle: int, key: bytes) -> bytes | None:
        """The value at ``key``, or ``None`` if there is none."""
        with self._lock:
            dev = self._begin(device)
            obj = self._map(dev, handle)
            value = engine_call(f"map {handle}", obj.map.lookup, key)
            return None if value is None else dev.guest_values(obj, [(key, value)])[0][1]

    def map_update(self, device: str, handle: int, key: bytes, value: bytes, flags: int = UpdateFlag.ANY) -> None:
        with self._lock:
            dev = self._begin(device)
            obj = self._map(dev, handle)
            if obj.is_prog_array:
                self._prog_array_update(dev, obj, key, value, flags)
                return
            engine_call(f"map {handle}", obj.map.update, key, value, flags)

    def map_delete(self, device: str, handle: int, key: bytes) -> None:
        with self._lock:
            dev = self._begin(device)
            obj = self._map(dev, handle)
            engine_call(f"map {handle}", obj.map.delete, key)
            if obj.is_prog_array and len(key) == 4:
                obj.prog_slots.pop(_U32.unpack(key)[0], None)

    def map_freeze(self, device: str, handle: int) -> None:
        """BPF_MAP_FREEZE the map: nobody in user space (guest or operator) writes it again, and a
        ``BPF_F_RDONLY_PROG`` map's contents are constants to the verifier for programs loaded after.
        A second freeze is EPERM, what the kernel answers (6.18); kernel refusals keep their errno."""
        with self._lock:
            dev = self._begin(device)
            obj = self._map(dev, handle)
            if getattr(obj.map, "frozen", False):
                raise OffloadError(errno.EPERM, f"map {handle} is already frozen")
            engine_call(f"map {handle}: freeze", obj.map.freeze)

    def map_get_next_key(self, device: str, handle: int, key: bytes | None) -> bytes | None:
        """The key after ``key`` (the first with ``None``); ``None`` at the end."""
        with self._lock:
            dev = self._begin(device)
            obj = self._map(dev, handle)
            return engine_call(f"map {handle}", obj.map.next_key, key)

    def map_lookup_batch(self, device: str, handle: int, in_batch: bytes | None = None,
                         count: int = 64) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Up to ``count`` elements from ``in_batch`` on; returns (items, token to continue or ``None`` at the end)."""
        with self._lock:
            dev = self._begin(device)
            obj = self._map(dev, handle)
            if count <= 0 or count > obj.spec.max_entries:
                count = obj.spec.max_entries
            if hasattr(obj.map, "lookup_batch") and not obj.is_prog_array:
                r = engine_call(f"map {handle}", obj.map.lookup_batch, in_batch, count)
                items, token = r.items(), r.next_batch
            else:  # the kernel has no batch ops for prog_array (ENOTSUPP), some engines none at all
                items, token = engine_call(f"map {handle}", _walk, obj, in_batch, count)
            return dev.guest_values(obj, items), token

    def map_update_batch(self, device: str, handle: int, items: Sequence[tuple[bytes, bytes]],
                         flags: int = UpdateFlag.ANY) -> int:
        """Write every (key, value); return how many were written."""
        with self._lock:
            dev = self._begin(device)
            return self.fill_map(dev, self._map(dev, handle), [k for k, _ in items], [v for _, v in items], flags)

    def fill_map(self, dev: Device, obj: MapObj, keys: Sequence[bytes], values: Sequence[bytes],
                 flags: int = UpdateFlag.ANY) -> int:
        """Write ``keys[i]`` = ``values[i]`` (a prog_array's values are guest program handles), with a
        batch update where the engine has one; the lock is held. Returns how many were written."""
        if obj.is_prog_array:  # the kernel has no batch update for fd maps
            for k, v in zip(keys, values):
                self._prog_array_update(dev, obj, k, v, flags)
            return len(keys)
        if hasattr(obj.map, "update_batch"):
            return engine_call(f"map {obj.handle}", obj.map.update_batch, list(keys), list(values), flags)
        for k, v in zip(keys, values):
            engine_call(f"map {obj.handle}", obj.map.update, k, v, flags)
        return len(keys)

    # -- programs ------------------------------------------------------------------------------
    def prog_load(self, device: str, insns: Sequence[Insn], *, name: str, license: str = "GPL",
                  prog_type: int | str = "xdp", btf: bytes | None = None,
                  func_info: Sequence[FuncInfo] | None = None,
                  line_info: Sequence[LineInfo] | None = None, log_level: int = 0,
                  log_size: int = 0) -> tuple[int, str]:
        """Check, rewrite and load a program; return (guest handle, tag as hex).

        A program the kernel verifier refuses raises `OffloadError` with rule
        ``verifier`` and the log in ``.log``. Its instruction numbers count the
        host's copy: the guest's slots, with the 16-slot counting epilogue
        inserted after the main function (subprogram slots are 16 further on).
        This is `prog_load_begin` then `PendingLoad.run` on the caller's thread.
        """
        return self.prog_load_begin(device, insns, name=name, license=license, prog_type=prog_type, btf=btf,
                                    func_info=func_info, line_info=line_info, log_level=log_level,
                                    log_size=log_size).run()

    def prog_load_begin(self, device: str, insns: Sequence[Insn], *, name: str, license: str = "GPL",
                        prog_type: int | str = "xdp", btf: bytes | None = None,
                        func_info: Sequence[FuncInfo] | None = None,
                        line_info: Sequence[LineInfo] | None = None, log_level: int = 0,
                        log_size: int = 0) -> loading.PendingLoad:
        """PROG_LOAD's checks and rewriting (under the lock, on the caller's thread); the verifier
        pass is `PendingLoad.run`, which a caller on an event loop runs on a worker thread: the
        kernel may verify for seconds, and the lock is not held meanwhile, so the datapath, ``host
        show`` and other devices go on. The device's verifier time budget
        (``quota.verifier_seconds_per_minute``) must have time left, else EAGAIN."""
        with self._lock:
            dev = self._begin(device)
            try:
                self._check_budget(dev)
                prep = loading.prepare(self.policy, dev, list(insns), name, license, prog_type, btf,
                                       list(func_info or ()), list(line_info or ()), origin=self._origin(),
                                       log_level=log_level, log_size=log_size)
            except OffloadError:
                dev.counters["refused"] += 1
                raise
        return loading.PendingLoad(self._lock, self.policy, dev, prep)

    def load_prog_at(self, dev: Device, handle: int, load: ProgLoadRequest) -> ProgObj:
        """PROG_LOAD under ``handle`` (a state import: origin ``import``), without the command rate, on
        this thread; the lock is held. Its verifier pass is charged to the device's budget like any."""
        self._check_budget(dev)
        prep = loading.prepare(self.policy, dev, list(load.insns), load.name or "prog", load.license,
                               load.prog_type, load.btf or None, list(load.func_info), list(load.line_info),
                               origin="import", handle=handle)
        return loading.load(self._lock, self.policy, dev, prep)

    def _check_budget(self, dev: Device) -> None:
        """The device's verifier time must have some left (else EAGAIN, naming the rule)."""
        if not dev.budget.available():
            dev.counters["verifier_refused"] = dev.counters.get("verifier_refused", 0) + 1
            raise OffloadError(errno.EAGAIN, f"policy: device {dev.name} used its "
                               f"{self.policy.quota.verifier_seconds_per_minute:g} s of host verifier time this "
                               "minute; load again later", "quota.verifier_seconds_per_minute")

    def prog_attach(self, device: str, handle: int) -> None:
        """Run the program on the device's port, replacing ours if one runs (no error then)."""
        with self._lock:
            self.attach(self._begin(device), handle)

    def attach(self, dev: Device, handle: int) -> None:
        """Put program ``handle`` on the device's port (replacing the one attached, atomically where
        the port can); the lock is held."""
        obj = self._prog(dev, handle)
        old = self._prog(dev, dev.attached) if dev.attached is not None else None
        dev.port.attach(obj.engine_handle, old.engine_handle if old is not None else None)
        dev.attached = handle

    def prog_detach(self, device: str) -> None:
        """Detach the device's program from its port (no error if none is attached)."""
        with self._lock:
            self._detach(self._begin(device))

    def prog_query(self, device: str) -> dict:
        """The attached program (``None`` if none) with its per-action counters, and every loaded program's."""
        with self._lock:
            dev = self._begin(device)
            listing = [{"handle": o.handle, "name": o.name, "tag": o.tag, "insns": o.guest_insns,
                        "actions": o.action_counts()} for o in dev.progs()]
            return {"attached": dev.attached, "programs": listing}

    def prog_counters(self, device: str, handle: int) -> dict[str, int]:
        """One program's verdict counts (aborted, drop, pass, tx, redirect, other), summed over CPUs."""
        with self._lock:
            dev = self._begin(device)
            return self._prog(dev, handle).action_counts()

    # -- state (migration: docs/offload-protocol.md §5 "State", the format in `state_format`) ----------
    def state_export_chunk(self, device: str, token: bytes, room: int) -> tuple[bytes, bytes]:
        """STATE_EXPORT: (chunk of at most ``room`` bytes, token to continue; empty at the end).
        An empty ``token`` snapshots the device; the walk reads that snapshot to its end."""
        with self._lock:
            return state.export_chunk(self._begin(device), token, room)

    def state_export(self, device: str) -> bytes:
        """The whole state blob at once (the operator's and the tests' shortcut)."""
        with self._lock:
            return state.encode_state(state.export_state(self._begin(device)))

    def state_import_chunk(self, device: str, chunk: bytes, last: bool) -> None:
        """STATE_IMPORT: add a chunk; with ``last``, recreate the objects (all or nothing)."""
        with self._lock:
            dev = self._begin(device)
            try:
                state.import_chunk(self, dev, chunk, last)
            except OffloadError:
                dev.counters["refused"] += 1
                raise

    def state_import(self, device: str, blob: bytes) -> None:
        self.state_import_chunk(device, blob, True)

    # -- lifetimes -----------------------------------------------------------------------------
    def free(self, device: str, handle: int) -> None:
        """Close one map or program. EBUSY for an attached program or a map a loaded program uses."""
        with self._lock:
            dev = self._begin(device)
            kind = dev.handles.kind(handle)
            if kind is Kind.PROG:
                if dev.attached == handle:
                    raise OffloadError(errno.EBUSY, f"program handle {handle} is attached to {dev.port.ifname}; "
                                       "detach it first", "handles")
                held = in_prog_array(dev.maps(), handle)
                if held is not None:  # the kernel's array would keep it (and its maps) alive, uncounted
                    raise OffloadError(errno.EBUSY, f"program handle {handle} is in prog_array handle "
                                       f"{held[0].handle} ({held[0].name!r}) at index {held[1]}; delete that "
                                       "entry or free the prog_array first", "handles")
                self._close_prog(dev, dev.handles.remove(handle).obj)
            elif kind is Kind.MAP:
                users = [p.handle for p in dev.progs() if handle in p.map_handles]
                if users:
                    raise OffloadError(errno.EBUSY, f"map handle {handle} is used by program handle(s) "
                                       f"{', '.join(map(str, users))}; free them first", "handles")
                dev.engine.free_map(dev.handles.remove(handle).obj.map)
            else:
                raise OffloadError(errno.EBADF, f"handle {handle} is not an object of device {device}")

    def reset(self, device: str) -> None:
        """The guest reset the device or went away: detach and free everything it offloaded."""
        with self._lock:
            self.clear(self._device(device))

    def clear(self, dev: Device) -> None:
        """Detach and free every object of the device and give it a fresh engine (its handles keep
        counting up); the lock is held."""
        try:
            self._detach(dev)
        finally:
            entries = dev.handles.clear()
            for e in entries:  # the programs first, then the maps they used
                if isinstance(e.obj, ProgObj):
                    self._close_prog(dev, e.obj)
            for e in entries:
                if isinstance(e.obj, MapObj):
                    dev.engine.free_map(e.obj.map)
            dev.btf.clear()
            dev.export_snapshot, dev.import_buffer = None, None
            dev.engine.close()  # BTF objects the engine cached
            dev.engine = self.engine_factory(kernel_prefix(dev.name))

    def run_rx(self, device: str, batch: FrameBatch, send: Callable[[FrameBatch], int]) -> None:
        """Run the device's attached program on a batch of its port's frames, in place (PASS frames stay,
        in order; TX ones go to ``send``, the port; the rest are dropped and counted): what the backend
        calls per batch when the device's engine is outside the kernel. Nothing attached, or a kernel
        port (the kernel runs the program itself): the batch is left as it is. Under the lock, so no
        command frees the program or its maps in the middle of a batch."""
        with self._lock:
            dev = self.devices.get(device)
            if dev is None or not isinstance(dev.port, RecordedPort) or dev.port.rx is None:
                return
            hook = dev.rx_hook
            if hook is None:
                ctx = XdpMd(ingress_ifindex=dev.port.ifindex) if dev.port.ifindex else None
                hook = dev.rx_hook = XdpHook(dev.engine, None, send, ctx)  # type: ignore[arg-type]
            # the engine is made anew at each reset; the device's counts go on
            hook.engine, hook.prog, hook.send = dev.engine, dev.port.rx, send  # type: ignore[assignment]
            hook(batch)

    def kernel_ids(self, device: str) -> tuple[set[int], set[int]]:
        """(program ids, map ids) of every kernel object the device holds now, counters included
        (engines outside the kernel: their program ids, no map ids)."""
        with self._lock:
            dev = self._device(device)
            progs = {o.kernel_id for o in dev.progs()}
            maps = {o.kernel_id for o in dev.maps()} | {_map_id(o.counters) for o in dev.progs()}
            return progs, maps - {0}

    # -- visibility ----------------------------------------------------------------------------
    def objects(self, device: str, after: int = 0) -> list[MapObj | ProgObj]:
        """The device's maps and programs with a handle above ``after``, in handle order (OBJ_LIST):
        the one table every view of the device reads, whoever made the objects."""
        with self._lock:
            dev = self._begin(device)
            return [e.obj for e in dev.handles.entries() if e.handle > after and e.obj is not None]

    def show(self) -> list[dict]:
        """Every device with its programs (name, tag, insns, maps, attach point, action counters) and maps."""
        with self._lock:
            return [dev.describe() for dev in self.devices.values()]

    # -- internals -----------------------------------------------------------------------------
    def _device(self, name: str) -> Device:
        dev = self.devices.get(name)
        if dev is None:
            raise OffloadError(errno.ENODEV, f"no device named {name!r}")
        return dev

    def _begin(self, name: str) -> Device:
        dev = self._device(name)
        if getattr(self._operator, "active", False):
            dev.counters["operator_commands"] += 1
            return dev
        if getattr(self._operator, "prepaid", False):
            return dev  # counted and charged by `charged`, before the request was decoded
        dev.counters["commands"] += 1
        if not dev.bucket.take():
            dev.counters["rate_limited"] += 1
            q = self.policy.quota
            raise OffloadError(errno.EAGAIN, f"policy: device {name} sent more than {q.commands_per_second:g} "
                               f"commands a second (burst {q.command_burst})", "rate")
        return dev

    def _origin(self) -> str:
        """Who is making an object by a command now: ``operator`` or ``guest``."""
        return "operator" if getattr(self._operator, "active", False) else "guest"

    @staticmethod
    def _map(dev: Device, handle: int) -> MapObj:
        return dev.handles.get(handle, Kind.MAP)  # type: ignore[return-value]

    @staticmethod
    def _prog(dev: Device, handle: int) -> ProgObj:
        return dev.handles.get(handle, Kind.PROG)  # type: ignore[return-value]

    def _prog_array_update(self, dev: Device, obj: MapObj, key: bytes, value: bytes, flags: int) -> None:
        """Write one prog_array slot (a guest program handle in ``value``, the engine's handle for it
        in the map) and record who is in it."""
        if len(value) != 4:
            raise OffloadError(errno.EINVAL, f"prog_array value of {len(value)} bytes; expected a 4-byte "
                               "program handle")
        prog = self._prog(dev, _U32.unpack(value)[0])
        engine_call(f"map {obj.handle}", obj.map.update, key, _U32.pack(prog.engine_handle), flags)
        if len(key) == 4:
            obj.prog_slots[_U32.unpack(key)[0]] = prog.handle

    def _detach(self, dev: Device) -> None:
        try:
            dev.port.detach()
        finally:
            dev.attached = None

    @staticmethod
    def _close_prog(dev: Device, obj: ProgObj) -> None:
        dev.engine.free_program(obj.engine_handle)
        dev.engine.free_map(obj.counters)
        dev.btf.release(obj.source.btf if obj.source is not None else b"")


def _walk(obj: MapObj, token: bytes | None, count: int) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """A batch lookup by next_key/lookup, for maps without batch operations."""
    items, key = [], obj.map.next_key(token)
    while key is not None and len(items) < count:
        value = obj.map.lookup(key)
        if value is not None:
            items.append((key, value))
        token, key = key, obj.map.next_key(key)
    return items, (token if key is not None else None)


def _map_id(m) -> int:
    info = getattr(m, "info", None)
    return info().id if info is not None else 0
