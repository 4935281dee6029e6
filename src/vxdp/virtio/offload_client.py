"""The driver end of the BPF control class: an offload client, and an `Engine` that offloads through it.

It sits beside the codec, below both daemons: the guest driver speaks it over
its ctrl virtqueue, and the host's operator path (``vxdp prog load --device``,
for a stock guest that cannot) speaks it straight into the device's own
command handler, so both go through the same commands, policy and checks.

`OffloadClient` turns Python calls into BPF ctrl requests (`vxdp.virtio.offload`)
and replies back into Python values or an `OffloadRefused`. It does not know how
bytes reach the device: its transport is any ``(request, capacity) -> reply``
callable, where ``request`` is the whole device-readable part (class, command,
data, as `encode_request` gives it) and the reply is what the device wrote in a
``capacity``-byte writable area (ack byte first). The ctrl virtqueue, a socket to
a daemon, or a `BpfCommandHandler` in the same process all fit; `ctrl_transport`
adapts a ``command(cls, cmd, data, reply_capacity) -> (ack, result)`` client.

Reply sizing (spec §3): each call offers a writable area big enough for its usual
reply; a side-effect-free command whose payload did not fit comes back ``ENOBUFS``
with ``PAYLOAD_OMITTED`` and the needed size, and the client asks once more with
room for exactly that. Commands with side effects are never repeated.

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

import errno
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ..bpf.isa import Insn
from ..bpf.mapapi import Map, freezes_after_init
from ..bpf.mapspec import MapFlag, MapOrigin, MapSpec, MapType, UpdateFlag, percpu_value_stride
from ..bpf.obj import FuncInfo, LineInfo
from ..engine.base import Engine, RunResult, XdpMd
from .offload import (
    AttachFlag,
    AttachPoint,
    CapsFlag,
    CapsReply,
    CapsRequest,
    Errno,
    MapCreateRequest,
    MapDeleteRequest,
    MapFreeRequest,
    MapFreezeRequest,
    MapGetNextKeyRequest,
    MapLookupBatchReply,
    MapLookupBatchRequest,
    MapLookupRequest,
    MapUpdateBatchRequest,
    MapUpdateRequest,
    Message,
    ObjInfo,
    ObjListReply,
    ObjListRequest,
    OffloadProtocolError,
    ProgAttachRequest,
    ProgDetachRequest,
    ProgFreeRequest,
    ProgLoadRequest,
    ProgQueryReply,
    ProgQueryRequest,
    Reply,
    StateExportReply,
    StateExportRequest,
    StateImportFlag,
    StateImportRequest,
    command_name,
    decode_reply,
    encode_request,
)
from .offload_wire import NAME_LEN, REPLY_HEADER_SIZE

log = logging.getLogger(__name__)

ACTION_NAMES = ("aborted", "drop", "pass", "tx", "redirect")  # the order PROG_QUERY counts them in

Transport = Callable[[bytes, int], bytes]
"""``(request bytes incl. class and command, writable area size incl. the ack) -> bytes the device wrote``."""

DEFAULT_CAPACITY = 4096  # enough for CAPS, a lookup of a 4 KiB value, a modest batch
STATE_CHUNK = 64 << 10  # bytes of state per STATE_EXPORT / STATE_IMPORT when the transport has no limit
LIST_CAPACITY = 64 << 10  # OBJ_LIST: the device fills the area, so offer what the transport allows
LOAD_TEXT_ROOM = 1024  # room for a refusal message on top of the verifier log wanted
_RULE = re.compile(r" \(rule ([\w.\-]+)\)$")


class OffloadRefused(OSError):
    """The device refused a command: ``errno``, the first line as ``message``, the policy ``rule`` (if one
    refused), and the verifier ``log`` (for a refused program; ``log_truncated`` if it was cut)."""

    def __init__(self, command: int, reply: Reply):
        first, _, rest = reply.text.partition("\n")
        m = _RULE.search(first)
        super().__init__(int(reply.code), first or _errno_name(reply.code))
        self.command = command
        self.code = int(reply.code)
        self.message = first
        self.rule = m.group(1) if m else None
        self.log = rest or None
        self.log_truncated = reply.text_truncated
        self.reply = reply

    def __str__(self) -> str:
        return f"{command_name(self.command)}: [{_errno_name(self.code)}] {self.message}"


class OffloadTransportError(OSError):
    """The device answered with bytes that are not a reply to the command sent (a broken device)."""


def _errno_name(code: int) -> str:
    try:
        return Errno(code).name
    except ValueError:
        return errno.errorcode.get(code, f"errno {code}")


def ctrl_transport(ctrl: Any, cls: int | None = None, *, timeout: float | None = None) -> Transport:
    """A `Transport` over a ctrl-vq client whose ``command(cls, cmd, data, reply_capacity)`` returns
    ``(ack, result)`` with the capacity counting the result only (the guest driver's ``CtrlClient``).
    Give the client ``max_capacity`` = the ctrl buffer's writable size so no area exceeds it.
    ``timeout``: seconds to wait for each answer (default: the ctrl client's own)."""
    wait = {} if timeout is None else {"timeout": timeout}

    def send(request: bytes, capacity: int) -> bytes:
        ack, result = ctrl.command(request[0] if cls is None else cls, request[1], request[2:], capacity - 1,
                                   **wait)
        return bytes((int(ack),)) + bytes(result)
    return send


class OffloadClient:
    """BPF ctrl commands as Python calls; every refusal raises `OffloadRefused`."""

    def __init__(self, transport: Transport, *, capacity: int = DEFAULT_CAPACITY, max_capacity: int | None = None):
        """``capacity``: the writable area offered by default; ``max_capacity``: the most the transport can
        offer (a ctrl vq's buffer), never exceeded — a verifier log is then cut by the device to fit."""
        self.transport = transport
        self.max_capacity = max_capacity
        self.capacity = self._clamp(max(int(capacity), 1))
        self._caps: CapsReply | None = None

    def _clamp(self, cap: int) -> int:
        return cap if self.max_capacity is None else min(cap, self.max_capacity)

    # -- the one round trip --------------------------------------------------------------------
    def call(self, req: Message, capacity: int | None = None, *, none_on_enoent: bool = False) -> Message | None:
        """Send ``req``; return its reply payload (``None`` for commands that answer none).

        A payload the area could not hold is asked for once more with room for it.
        ``none_on_enoent`` turns ENOENT into ``None`` (lookups, iteration ends).
        """
        cmd = int(req.COMMAND)
        data = encode_request(req)
        cap = self.capacity if capacity is None else self._clamp(capacity)
        reply = self._round_trip(cmd, data, cap)
        if reply.payload_omitted and reply.needed:
            bigger = self._clamp(max(cap, 1 + REPLY_HEADER_SIZE + reply.needed + LOAD_TEXT_ROOM))
            if bigger > cap:
                reply = self._round_trip(cmd, data, bigger)
        if reply.ok:
            return reply.payload
        if none_on_enoent and reply.code == Errno.ENOENT:
            return None
        raise OffloadRefused(cmd, reply)

    def _round_trip(self, cmd: int, data: bytes, cap: int) -> Reply:
        raw = self.transport(data, cap)
        if len(raw) > cap:
            raise OffloadTransportError(errno.EIO, f"{command_name(cmd)}: device wrote {len(raw)} bytes into a "
                                        f"{cap}-byte area")
        try:
            return decode_reply(cmd, raw)
        except OffloadProtocolError as e:
            raise OffloadTransportError(errno.EIO, f"{command_name(cmd)}: bad reply: {e}") from None

    # -- capabilities --------------------------------------------------------------------------
    def caps(self, *, refresh: bool = False) -> CapsReply:
        if self._caps is None or refresh:
            self._caps = self.call(CapsRequest())  # type: ignore[assignment]
        return self._caps  # type: ignore[return-value]

    # -- maps ----------------------------------------------------------------------------------
    def map_create(self, map_type: int, key_size: int, value_size: int, max_entries: int, *,
                   flags: int = 0, name: str = "") -> int:
        r = self.call(MapCreateRequest(int(map_type), key_size, value_size, max_entries, flags,
                                       wire_name(name)))
        return r.map  # type: ignore[union-attr]

    def map_free(self, handle: int) -> None:
        self.call(MapFreeRequest(handle))

    def map_lookup(self, handle: int, key: bytes) -> bytes | None:
        r = self.call(MapLookupRequest(handle, bytes(key)), none_on_enoent=True)
        return None if r is None else r.value  # type: ignore[union-attr]

    def map_update(self, handle: int, key: bytes, value: bytes, flags: int = UpdateFlag.ANY) -> None:
        self.call(MapUpdateRequest(handle, bytes(key), bytes(value), int(flags)))

    def map_delete(self, handle: int, key: bytes) -> None:
        self.call(MapDeleteRequest(handle, bytes(key)))

    def map_freeze(self, handle: int) -> None:
        """Make the map read-only to the driver for good (MAP_FREEZE, protocol 1.1); EPERM if it already is."""
        self.call(MapFreezeRequest(handle))

    def can_freeze(self) -> bool:
        """Whether the device knows MAP_FREEZE (CAPS version 1.1 or later)."""
        caps = self.caps()
        return (caps.version_major, caps.version_minor) >= (1, 1)

    def map_get_next_key(self, handle: int, key: bytes | None) -> bytes | None:
        r = self.call(MapGetNextKeyRequest(handle, bytes(key or b"")), none_on_enoent=True)
        return None if r is None else r.key  # type: ignore[union-attr]

    def map_lookup_batch(self, handle: int, max_count: int, token: bytes = b"") -> MapLookupBatchReply:
        """Up to ``max_count`` entries from ``token`` on; the reply's token is empty at the end."""
        return self.call(MapLookupBatchRequest(handle, max_count, token))  # type: ignore[return-value]

    def map_update_batch(self, handle: int, items: Sequence[tuple[bytes, bytes]], *, key_size: int,
                         value_size: int, flags: int = UpdateFlag.ANY) -> int:
        """Write entries in order; returns how many were applied (the device stops at the first failure)."""
        r = self.call(MapUpdateBatchRequest(handle, key_size, value_size, tuple(k for k, _ in items),
                                            tuple(v for _, v in items), int(flags)))
        return r.applied  # type: ignore[union-attr]

    def map_items(self, handle: int, batch: int = 64) -> list[tuple[bytes, bytes]]:
        """Every entry, ``batch`` per command (a bounded walk: it ends when the device says so)."""
        out: list[tuple[bytes, bytes]] = []
        token = b""
        for _ in range(1 << 20):
            r = self.map_lookup_batch(handle, batch, token)
            out.extend(zip(r.keys, r.values))
            if not r.token:
                break
            token = r.token
        return out

    def empty_prog_array(self, handle: int) -> None:
        """Delete every entry of a prog_array: a program still in one cannot be freed (PROG_FREE is
        EBUSY, docs/offload-protocol.md "PROG_FREE and prog_arrays"), so freeing everything starts here."""
        for key, _ in self.map_items(handle):
            self.map_delete(handle, key)

    # -- programs ------------------------------------------------------------------------------
    def prog_load(self, insns: Sequence[Insn], *, name: str = "", license: str = "GPL",
                  btf: bytes | None = None, func_info: Iterable[FuncInfo] = (),
                  line_info: Iterable[LineInfo] = (), prog_type: int = 6, log_level: int = 0,
                  log_size: int = 64 << 10) -> tuple[int, bytes]:
        """Load a program whose map references carry guest handles; return (program handle, tag)."""
        req = ProgLoadRequest(tuple(insns), license, wire_name(name), prog_type, log_level=log_level,
                              log_size=log_size, btf=bytes(btf or b""), func_info=tuple(func_info),
                              line_info=tuple(line_info))
        cap = max(self.capacity, 1 + REPLY_HEADER_SIZE + 12 + log_size + LOAD_TEXT_ROOM)
        r = self.call(req, cap)
        return r.prog, r.tag  # type: ignore[union-attr]

    def prog_free(self, handle: int) -> None:
        self.call(ProgFreeRequest(handle))

    def prog_attach(self, handle: int, *, attach_point: int = AttachPoint.RX, replace: bool = False) -> None:
        self.call(ProgAttachRequest(handle, attach_point, AttachFlag.REPLACE if replace else 0))

    def prog_detach(self, attach_point: int = AttachPoint.RX) -> None:
        self.call(ProgDetachRequest(attach_point))

    def prog_query(self, attach_point: int = AttachPoint.RX) -> ProgQueryReply | None:
        """The attached program, its tag and per-action frame counts; ``None`` if nothing is attached."""
        return self.call(ProgQueryRequest(attach_point), none_on_enoent=True)  # type: ignore[return-value]

    # -- the device's record (protocol 1.2) -----------------------------------------------------------
    def can_list(self) -> bool:
        """Whether the device lists its objects (OBJ_LIST: CAPS version 1.2 or later)."""
        caps = self.caps()
        return (caps.version_major, caps.version_minor) >= (1, 2)

    def obj_list(self) -> list[ObjInfo]:
        """Every map and program the device holds, whoever made them, in handle order: OBJ_LIST from
        an empty token until the device answers an empty one (bounded: a token must move on)."""
        out: list[ObjInfo] = []
        token = b""
        for _ in range(1 << 20):
            r: ObjListReply = self.call(ObjListRequest(0, token), LIST_CAPACITY)  # type: ignore[assignment]
            out.extend(r.objects)
            if not r.token:
                return out
            if r.token == token or not r.objects:
                raise OffloadTransportError(errno.EIO, "OBJ_LIST: the device's token did not move on")
            token = r.token
        raise OffloadTransportError(errno.EIO, "OBJ_LIST: the listing did not end")

    # -- state ---------------------------------------------------------------------------------
    def can_migrate(self) -> bool:
        """Whether the device exports and imports its state (CAPS flag STATE)."""
        return bool(self.caps().flags & CapsFlag.STATE)

    def state_export_chunk(self, token: bytes = b"", capacity: int | None = None) -> StateExportReply:
        """One STATE_EXPORT: the chunk from ``token`` on (empty: a new snapshot) and the next token."""
        cap = self._clamp(capacity or max(self.capacity, STATE_CHUNK + 64))
        return self.call(StateExportRequest(token), cap)  # type: ignore[return-value]

    def state_import_chunk(self, chunk: bytes, *, last: bool = False) -> None:
        self.call(StateImportRequest(chunk, StateImportFlag.LAST if last else 0))

    def state_export(self) -> bytes:
        """The device's whole state (maps with contents, programs, attachment) as one blob: the walk
        from an empty token until the device answers an empty one (bounded by the blob's 64 MiB cap)."""
        parts: list[bytes] = []
        token = b""
        for _ in range(1 << 24):
            r = self.state_export_chunk(token)
            parts.append(r.chunk)
            if not r.token:
                return b"".join(parts)
            if not r.chunk:
                raise OffloadTransportError(errno.EIO, "STATE_EXPORT: the device sent an empty chunk mid-walk")
            token = r.token
        raise OffloadTransportError(errno.EIO, "STATE_EXPORT: the walk did not end")

    def state_import(self, blob: bytes, *, chunk_size: int | None = None) -> None:
        """Feed a blob from `state_export` to this (empty) device, in chunks that fit the ctrl buffers
        (``max_capacity``, the size of one ctrl buffer, bounds the request too); LAST on the final one,
        when the device recreates everything or nothing."""
        size = chunk_size or max((self.max_capacity or STATE_CHUNK + 64) - 64, 1)
        blob = bytes(blob)
        chunks = [blob[i:i + size] for i in range(0, len(blob), size)] or [b""]
        for i, chunk in enumerate(chunks):
            self.state_import_chunk(chunk, last=i == len(chunks) - 1)


def wire_name(name: str) -> str:
    """A name the wire's ``name[16]`` can carry: ASCII, no NUL, at most 15 characters."""
    clean = "".join(c if c.isascii() and c != "\0" else "_" for c in name)
    return clean[: NAME_LEN - 1]


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
        if self.spec.is_percpu:
            return self.ncpus * percpu_value_stride(self.spec.value_size)
        return 4 if self.spec.type == MapType.PROG_ARRAY else self.spec.value_size

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


__all__ = [
    "OffloadClient",
    "OffloadEngine",
    "OffloadRefused",
    "OffloadTransportError",
    "RemoteMap",
    "Transport",
    "ctrl_transport",
    "wire_name",
]
