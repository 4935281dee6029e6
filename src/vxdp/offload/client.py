"""The driver end of the BPF control class: BPF commands as Python calls (`OffloadClient`).

Both daemons use it: the guest driver speaks it over
its ctrl virtqueue, and the host's operator path (``vxdp prog load --device``,
for a stock guest that cannot) speaks it straight into the device's own
command handler, so both go through the same commands, policy and checks.

`OffloadClient` turns Python calls into BPF ctrl requests (`vxdp.offload.codec`)
and replies back into Python values or an `OffloadRefused`. It does not know how
a request reaches the device: its transport is any `Transport`, a
``(CtrlRequest, capacity) -> CtrlReply`` callable, ``capacity`` being the
writable area the device may fill (its ack byte included). The frames go as they
are: whoever carries them turns them into bytes once (a ctrl virtqueue client),
or not at all (the device's command handler called in the same process).

Reply sizing (spec §3): each call offers a writable area big enough for its usual
reply; a side-effect-free command whose payload did not fit comes back ``ENOBUFS``
with ``PAYLOAD_OMITTED`` and the needed size, and the client asks once more with
room for exactly that. Commands with side effects are never repeated.

Both daemons' control sockets carry a device's state as base64 JSON
(`state_export_base64`, `state_import_base64`): one spelling of that document
for the guest's and the operator's ``vxdp offload export/import``.
"""

from __future__ import annotations

import base64
import errno
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..bpf.isa import Insn
from ..bpf.mapspec import UpdateFlag
from ..bpf.obj import FuncInfo, LineInfo
from ..virtio.ctrl_framing import CtrlReply, CtrlRequest
from .codec import Reply, decode_reply, encode_request
from .layout import Message
from .messages import (
    CapsReply,
    CapsRequest,
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
    ObjInfo,
    ObjListReply,
    ObjListRequest,
    ProgAttachRequest,
    ProgDetachRequest,
    ProgFreeRequest,
    ProgLoadRequest,
    ProgQueryReply,
    ProgQueryRequest,
    StateExportReply,
    StateExportRequest,
    StateImportRequest,
)
from .wire import (
    REPLY_HEADER_SIZE,
    AttachFlag,
    AttachPoint,
    CapsFlag,
    Errno,
    OffloadProtocolError,
    StateImportFlag,
    command_name,
    wire_name,
)

log = logging.getLogger(__name__)

Transport = Callable[[CtrlRequest, int], CtrlReply]
"""``(request, writable area size incl. the ack) -> the reply the device wrote`` (at most that size)."""

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
    """The device answered with what is not a reply to the command sent (a broken device)."""


def _errno_name(code: int) -> str:
    try:
        return Errno(code).name
    except ValueError:
        return errno.errorcode.get(code, f"errno {code}")


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
        ctrl = encode_request(req)
        cap = self.capacity if capacity is None else self._clamp(capacity)
        reply = self._round_trip(cmd, ctrl, cap)
        if reply.payload_omitted and reply.needed:
            bigger = self._clamp(max(cap, 1 + REPLY_HEADER_SIZE + reply.needed + LOAD_TEXT_ROOM))
            if bigger > cap:
                reply = self._round_trip(cmd, ctrl, bigger)
        if reply.ok:
            return reply.payload
        if none_on_enoent and reply.code == Errno.ENOENT:
            return None
        raise OffloadRefused(cmd, reply)

    def _round_trip(self, cmd: int, ctrl: CtrlRequest, cap: int) -> Reply:
        out = self.transport(ctrl, cap)
        size = 1 + len(out.result)
        if size > cap:
            raise OffloadTransportError(errno.EIO, f"{command_name(cmd)}: device wrote {size} bytes into a "
                                        f"{cap}-byte area")
        try:
            return decode_reply(cmd, out)
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

    def state_export_base64(self) -> dict[str, Any]:
        """`state_export` as a control socket's JSON carries it: ``{"state": base64, "bytes": n}``."""
        blob = self.state_export()
        return {"state": base64.b64encode(blob).decode("ascii"), "bytes": len(blob)}

    def state_import_base64(self, state: str) -> dict[str, Any]:
        """`state_import` of a `state_export_base64` document's ``state``; EINVAL if it is not base64."""
        try:
            blob = base64.b64decode(state, validate=True)
        except (ValueError, TypeError) as e:
            raise OSError(errno.EINVAL, f"state: not base64: {e}") from None
        self.state_import(blob)
        return {"imported": len(blob)}
