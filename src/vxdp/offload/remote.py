"""The device's objects as the guest's engine sees them: `RemoteMap`, and `OffloadEngine`.

`OffloadEngine` is the offload as an `vxdp.engine.base.Engine`, so the shared
loader (`vxdp.engine.loader.load_object`) offloads a whole object unchanged: its
maps are `RemoteMap`s whose ``handle`` is the guest map handle (the loader puts
it in the lddw immediates, which is what the device expects), programs are
guest program handles (which is what prog_array values carry on the wire).

Global data is prepared as libbpf prepares it: ``.rodata`` is created with
``BPF_F_RDONLY_PROG``, its initial image written, then frozen (MAP_FREEZE,
protocol 1.1) before any program loads, so the device's verifier sees its
``const volatile`` values as constants and skips the branches they make dead,
exactly as a local load does. A 1.0 device has no MAP_FREEZE: the map stays
writable and unfrozen there (a warning says so), and a program whose
verification depends on those constants may be refused offloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from ..bpf.isa import ACTION_NAMES, Insn
from ..bpf.mapapi import Map, freezes_after_init
from ..bpf.mapspec import MapFlag, MapOrigin, MapSpec, MapType, UpdateFlag
from ..engine.base import Engine, RunResult, XdpMd
from .client import OffloadClient, OffloadRefused
from .codec import Reply
from .messages import ProgQueryReply
from .wire import Errno

log = logging.getLogger(__name__)


class RemoteMap(Map):
    """A map in the device, reached over the ctrl channel; ``handle`` is its guest map handle.

    Values are as on the wire: per-CPU maps carry the device's ``ncpus`` slots of
    ``round_up(value_size, 8)`` bytes, prog_array values are guest program handles.
    Errors are `OffloadRefused` (an `OSError` with the device's errno), as `Map` promises.
    """

    def __init__(self, client: OffloadClient, handle: int, spec: MapSpec, ncpus: int = 1):
        self.client = client
        self.handle = handle
        self.spec = spec
        self.ncpus = ncpus
        self.closed = False
        self.frozen = False

    @property
    def value_bytes(self) -> int:
        return self.spec.user_value_size(self.ncpus)

    def lookup(self, key: bytes) -> bytes | None:
        return self.client.map_lookup(self.handle, key)

    def update(self, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
        self.client.map_update(self.handle, key, value, flags)

    def delete(self, key: bytes) -> None:
        self.client.map_delete(self.handle, key)

    def next_key(self, key: bytes | None) -> bytes | None:
        return self.client.map_get_next_key(self.handle, key)

    def freeze(self) -> None:
        """MAP_FREEZE: the device answers what its kernel does (EPERM for a second freeze)."""
        self.client.map_freeze(self.handle)
        self.frozen = True

    def items_batched(self, count: int = 64) -> list[tuple[bytes, bytes]]:
        return self.client.map_items(self.handle, count)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every entry in batches: a walk by next_key + lookup costs two ctrl round trips an entry
        (a 256-entry array took over 30 s through the guest driver)."""
        return iter(self.items_batched())

    def update_batch(self, keys: list[bytes], values: list[bytes], flags: int = UpdateFlag.ANY) -> int:
        return self.client.map_update_batch(self.handle, list(zip(keys, values)), key_size=self.spec.key_size,
                                            value_size=self.value_bytes, flags=flags)

    def close(self) -> None:
        """Free the map in the device (idempotent; a handle the device already forgot is fine)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.client.map_free(self.handle)
        except OffloadRefused as e:
            if e.code != Errno.EBADF:
                raise

    def __repr__(self) -> str:
        return f"RemoteMap({self.spec.name!r}, handle={self.handle})"


class OffloadEngine(Engine):
    """Maps and programs in the device (the host), loaded over the BPF ctrl class.

    Programs run on the device's port as frames arrive, not on demand, so `run` is not
    available; `attach`, `detach` and `query` put a program on the RX path and read its
    verdict counts. `close` detaches what it attached (unless another program replaced it since)
    and frees every object it made.
    """

    name = "offload"
    prog_types = None  # every type goes to the device; its policy refuses what it does not run (rule prog_type)

    def __init__(self, client: OffloadClient):
        self.client = client
        self.maps: list[RemoteMap] = []
        self.programs: list[int] = []
        self.tags: dict[int, str] = {}  # program handle -> the tag the device computed
        self.attached: int | None = None

    def create_map(self, spec: MapSpec) -> RemoteMap:
        flags = spec.flags
        if spec.origin is MapOrigin.RODATA:
            flags |= MapFlag.RDONLY_PROG  # as libbpf
        handle = self.client.map_create(spec.type, spec.key_size, spec.value_size, spec.max_entries,
                                        flags=flags, name=spec.name)
        ncpus = self.client.caps().ncpus if spec.is_percpu else 1
        m = RemoteMap(self.client, handle, spec, ncpus)
        self.maps.append(m)
        if spec.data is not None:
            if len(spec.data) > spec.value_size:
                raise ValueError(f"map {spec.name!r}: initial data of {len(spec.data)} bytes is above "
                                 f"value_size {spec.value_size}")
            m.update(bytes(spec.key_size), spec.data.ljust(spec.value_size, b"\0"))
        if freezes_after_init(spec):
            if self.client.can_freeze():
                m.freeze()  # before any program loads: the device's verifier sees constants
            else:
                log.warning("map %r: the device (protocol 1.0) cannot freeze it; its values are not "
                            "constants to the device's verifier", spec.name)
        return m

    def load_program(self, name: str, insns: list[Insn], *, license: str = "GPL", **extra: object) -> int:
        """Offload resolved instructions (guest map handles in the lddw immediates); the guest program handle.

        ``extra``: ``btf``, ``func_info``, ``line_info`` and ``prog_type`` (from the section; XDP by
        default) go with the program; the device's policy refuses any type but XDP (rule ``prog_type``),
        and the refusal is given back naming ``section``. ``log_size`` bounds the verifier log a
        refusal brings back (`OffloadRefused.log`).
        """
        try:
            handle, tag = self.client.prog_load(
                insns, name=name, license=license, btf=extra.get("btf") or None,  # type: ignore[arg-type]
                func_info=extra.get("func_info") or (), line_info=extra.get("line_info") or (),  # type: ignore[arg-type]
                prog_type=int(extra.get("prog_type", 6)),  # type: ignore[call-overload]
                log_size=int(extra.get("log_size", 64 << 10)))  # type: ignore[call-overload]
        except OffloadRefused as e:
            if e.rule != "prog_type" or not extra.get("section"):
                raise
            text = f'program {name!r} from section "{extra["section"]}": {e.reply.text}'
            raise OffloadRefused(e.command, Reply.error(e.code, text)) from None
        self.programs.append(handle)
        self.tags[handle] = tag.hex() if isinstance(tag, bytes) else str(tag)
        return handle

    def run(self, prog: int, packet: bytes, *, repeat: int = 1, ctx: XdpMd | None = None) -> RunResult:
        raise NotImplementedError("an offloaded program runs in the device on the frames its port receives; "
                                  "the protocol has no test-run command: attach it and send traffic, or run "
                                  "the object on a local engine (kernel, interp)")

    def attach(self, prog: int, *, replace: bool = False) -> None:
        self.client.prog_attach(prog, replace=replace)
        self.attached = prog

    def runs(self, prog: int) -> bool:
        """Whether the device's attach point runs ``prog`` now (PROG_QUERY)."""
        q = self.query()
        return q is not None and q.prog == prog

    def detach(self) -> None:
        """Detach this engine's program if the device still runs it. A program that replaced it (the
        next load of the same slot, or an operator's ``--replace``) is somebody else's: left attached.
        An attach point the device already cleared (ENOENT: the device was reset meanwhile) is what
        detaching wants, not an error."""
        if self.attached is not None and self.runs(self.attached):
            try:
                self.client.prog_detach()
            except OffloadRefused as e:
                if e.code != Errno.ENOENT:
                    raise
                log.info("offload engine detach: %s (nothing to detach)", e.message)
        self.attached = None

    def query(self) -> ProgQueryReply | None:
        return self.client.prog_query()

    def attachment(self, prog: int, *, replace: bool = False,
                   replaces: int | None = None) -> tuple[Callable[[], None], Callable[[], dict[str, int]]]:
        """Attach ``prog`` and return (detach, counters) callables, the shape
        `vxdp.engine.registry.ProgramRegistry.load` takes.

        The attach carries REPLACE (an atomic swap on the device) when ``replace`` (the user asked)
        or when the device runs ``replaces``, the program of the load this one replaces: the owner
        of a slot replaces its own program without asking. Otherwise an occupied attach point is
        EBUSY, naming the program it runs. ``counters`` reads ``prog``'s verdict counts while the
        device runs it, nothing (``{}``) once another program replaced it.
        """
        self.attach(prog, replace=replace or (replaces is not None and self.runs(replaces)))

        def counters() -> dict[str, int]:
            q = self.query()
            return {} if q is None or q.prog != prog else dict(zip(ACTION_NAMES, q.actions))

        return self.detach, counters

    def close(self) -> None:
        """Detach (if the device still runs what this engine attached), free programs, then maps; never raises (a device that was
        reset already forgot the handles). Failures are logged."""
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.attached is not None:
            steps.append(("detach", self.detach))
        steps += [(f"empty prog_array {m.handle}", lambda m=m: self.client.empty_prog_array(m.handle))
                  for m in self.maps if m.spec.type == MapType.PROG_ARRAY and not m.closed]
        steps += [(f"free program {h}", lambda h=h: self.client.prog_free(h)) for h in reversed(self.programs)]
        steps += [(f"free map {m.handle}", m.close) for m in reversed(self.maps)]
        for what, step in steps:
            try:
                step()
            except OffloadRefused as e:
                if e.code not in (Errno.EBADF, Errno.ENOENT):
                    log.warning("offload engine close: %s: %s", what, e)
            except OSError as e:
                log.warning("offload engine close: %s: %s", what, e)
        self.attached = None
        self.programs.clear()
        self.maps.clear()
