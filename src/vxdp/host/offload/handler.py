"""The device end of the BPF control class: a `CtrlRequest` in, its `CtrlReply` out, through `OffloadService`.

`BpfCommandHandler` answers one device's BPF ctrl requests. It takes the request as the
ctrl framing decoded it and gives back the reply frame to write, sized to the writable
area (``capacity``, the ack included), so a command is decoded and encoded once on this
side whoever carries it: `answer` has the ``(request, capacity) -> reply | Deferred``
shape a ctrl-vq class table plugs in, `handle` the same on the caller's thread (the
operator's in-process path, tests). Nothing here knows about descriptors, guest memory
or vhost-user.

The order of checks is the spec's (docs/offload-protocol.md §2, §3, §6):

1. offload feature not negotiated → ``EOPNOTSUPP`` (rule ``feature``); the command is not looked
   at. The service answers that (`OffloadService.require_negotiated`) from the device's acked
   features, as ``host show`` does; the operator's handler skips it (it offloads for stock
   guests, which never negotiate);
2. the guest's command rate is charged (`OffloadService.charged`: one token, one more per
   64 KiB) → ``EAGAIN`` (rule ``rate``); before decoding, so malformed requests pay too;
3. writable area under ``MIN_REPLY`` → ``ENOBUFS``; the command is not executed;
4. decode; a malformed request → ``EINVAL`` (``E2BIG`` for a field above a cap) with
   the codec's message (command and field) as text;
5. dispatch through `_HANDLERS` (one method per `Command`) to the service. PROG_LOAD's
   verifier pass comes back from `begin` as a callable; `answer` runs it on this handler's
   worker thread (one per device) and returns it `Deferred`, `handle` runs it in place.

Refusal codes are Linux user-space errnos: a kernel-internal one (ENOTSUPP 524...) is mapped
here (`errors.linux_errno`), the one place refusals become replies.

Every refusal the service raises is an `OffloadError`; its reply text is one line,
``message`` followed by `` (rule R)`` when a policy rule refused, then, for a program
the verifier refused, a newline and the verifier log, cut to the request's
``log_size`` when that is non-zero (``TEXT_TRUNCATED`` set); a driver splits it back
at the first newline. Anything else that goes wrong is a bug on our side: it is logged
once and answered ``EIO``; nothing is ever raised out of `answer`, `handle` or
`begin`, whatever the request (spec §6: the device never fails as a whole because of a
request).

Where the service and the spec differ, the handler bridges: the spec's ATTACH
without REPLACE on an occupied port is ``EBUSY`` (naming who loaded the running
program, its handle and name) and DETACH/QUERY with nothing
attached ``ENOENT`` (the service replaces and detaches silently); MAP_FREE and
PROG_FREE check the handle's kind (the service's ``free`` takes either);
lookups that find nothing become ``ENOENT``. STATE_EXPORT fills the writable
area: each chunk is as large as the area leaves room for after the header and the
continuation token (so it never needs ENOBUFS); STATE_IMPORT hands chunks to the
service, which recreates the objects at the LAST one (`vxdp.host.offload.state`).
CAPS sets flag STATE. OBJ_LIST (1.2) reads the service's table of the device
(`OffloadService.objects`), so the guest sees what the operator and an import made
too; it puts as many 56-byte records as the writable area holds, its token is the
le32 handle to continue after.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ...bpf.isa import ACTION_NAMES
from ...offload.codec import Reply, decode_request, encode_reply, error_reply
from ...offload.layout import Message
from ...offload.messages import (
    CapsReply,
    MapCreateReply,
    MapGetNextKeyReply,
    MapLookupBatchReply,
    MapLookupReply,
    MapUpdateBatchReply,
    ObjInfo,
    ObjListReply,
    ProgLoadReply,
    ProgQueryReply,
    StateExportReply,
)
from ...offload.wire import (
    DEVICE_MAX_REQUEST,
    MAX_BATCH,
    MAX_CHUNK,
    MIN_REPLY,
    OBJ_RECORD_SIZE,
    REPLY_HEADER_SIZE,
    AttachFlag,
    AttachPoint,
    CapsFlag,
    Command,
    Errno,
    ObjFlag,
    ObjKind,
    ObjOrigin,
    OffloadProtocolError,
    StateImportFlag,
    command_name,
    wire_name,
)
from ...virtio.ctrl_framing import HEADER_SIZE, Ack, CtrlReply, CtrlRequest
from ..ctrl_queue import Deferred
from .errors import OffloadError, linux_errno
from .handles import Kind
from .objects import Device, MapObj, ProgObj
from .service import OffloadService

log = logging.getLogger(__name__)

BPF_XDP_ATTACH_TYPE = 37  # enum bpf_attach_type BPF_XDP: the only expected_attach_type besides 0
EXPORT_TOKEN_ROOM = 12  # the service's continuation token (snapshot serial, offset)
LIST_TOKEN_SIZE = 4  # OBJ_LIST's token: le32, the handle to continue after
ORIGINS = {"guest": ObjOrigin.DRIVER, "operator": ObjOrigin.OPERATOR, "import": ObjOrigin.IMPORT}
_WHO = {"guest": "the guest", "operator": "the operator", "import": "a state import"}  # for refusals


def refusal_text(err: OffloadError, log_size: int = 0) -> tuple[str, bool]:
    """The reply text for a refusal, and whether the verifier log in it was cut to ``log_size``.

    Line one is the message (with `` (rule R)``); the verifier log, if any, follows
    after one newline. ``log_size`` 0 means the log is bounded only by the reply area. A log cut
    to ``log_size`` keeps its tail, as the kernel's rotating log does: the reason is at the end.
    """
    text, cut = str(err), False
    if err.log:
        body = err.log.encode("utf-8")
        if log_size and len(body) > log_size:
            body, cut = body[-log_size:], True
        text += "\n" + body.decode("utf-8", "ignore")
    return text, cut


class BpfCommandHandler:
    """Answers one device's BPF ctrl requests with the replies the device writes back."""

    def __init__(self, service: OffloadService, device: str, *, operator: bool = False):
        """``operator``: this handler carries the host operator's commands (`OffloadService.as_operator`:
        same rules and quotas, but not charged to the guest's command rate)."""
        self.service = service
        self.device = device
        self.operator = operator
        self._capacity = MIN_REPLY  # the writable area of the command being answered
        self._executor: ThreadPoolExecutor | None = None  # PROG_LOAD's verifier passes (answer)

    # -- the entry points ----------------------------------------------------------------------
    def answer(self, req: CtrlRequest, capacity: int) -> CtrlReply | Deferred:
        """The ctrl-vq table's entry (``CtrlTable.register(CtrlClass.BPF, handler.answer)``). A PROG_LOAD
        comes back `Deferred`: its verifier pass runs on this handler's worker thread, and the ctrl
        ring completes the chain (and those after it, in order) when it is done."""
        out = self.begin(req, capacity)
        return out if isinstance(out, CtrlReply) else Deferred(self._worker().submit(out))

    def handle(self, req: CtrlRequest, capacity: int) -> CtrlReply:
        """The reply to one command, made on this thread (a PROG_LOAD's verifier pass included)."""
        out = self.begin(req, capacity)
        return out if isinstance(out, CtrlReply) else out()

    def begin(self, req: CtrlRequest, capacity: int) -> CtrlReply | Callable[[], CtrlReply]:
        """The reply to one command, or, for one whose work may take long (PROG_LOAD: the host
        verifier), a callable making it, to run on a worker thread; neither ever raises."""
        command = req.command
        try:
            if self.operator:
                with self.service.as_operator():
                    out = self._handle(req, capacity)
            else:
                out = self._handle(req, capacity)
        except Exception as e:  # noqa: BLE001 -- a bug of ours: one line in the log, EIO to the guest
            return self._internal_error(command, e, capacity)
        if isinstance(out, CtrlReply):
            return out
        finish = out

        def later() -> CtrlReply:
            try:
                return finish()
            except Exception as e:  # noqa: BLE001 -- as above, on the worker thread
                return self._internal_error(command, e, capacity)
        return later

    def _internal_error(self, command: int, e: Exception, capacity: int) -> CtrlReply:
        # with the traceback: an internal error is a bug of ours, and the log is where it gets reported
        log.error("device %s: %s: internal error: %s: %s", self.device, command_name(command), type(e).__name__, e,
                  exc_info=e)
        return self._encode_safely(command, Reply.error(Errno.EIO, f"{command_name(command)}: device "
                                                        "internal error"), capacity)

    def _handle(self, req: CtrlRequest, capacity: int) -> CtrlReply | Callable[[], CtrlReply]:
        if self.operator:  # the operator offloads for stock guests, which never negotiate; not rate-charged
            return self._decode_and_run(req, capacity)
        try:
            self.service.require_negotiated(self.device)
            # charged before anything is looked at: a malformed request pays like a good one
            with self.service.charged(self.device, HEADER_SIZE + len(req.data)):
                return self._decode_and_run(req, capacity)
        except OffloadError as e:
            return self._encode_safely(req.command, self._refusal(e, 0), capacity)

    def _decode_and_run(self, ctrl: CtrlRequest, capacity: int) -> CtrlReply | Callable[[], CtrlReply]:
        if capacity < MIN_REPLY:
            return self._encode_safely(ctrl.command, Reply.error(
                Errno.ENOBUFS, f"writable area of {capacity} bytes is below {MIN_REPLY}"), capacity)
        try:
            req = decode_request(ctrl)
        except OffloadProtocolError as e:
            return error_reply(e, capacity)
        self._capacity = capacity
        reply = self._run(req, lambda: _HANDLERS[req.COMMAND](self, req))
        if isinstance(reply, _Later):
            run = reply.run
            return lambda: encode_reply(req.COMMAND, self._run(req, run), capacity)
        return encode_reply(req.COMMAND, reply, capacity)

    def _run(self, req: Message, fn: Callable[[], Reply | _Later]) -> Reply | _Later:
        """``fn``'s reply, or its refusal as a reply: the one place service errors become replies."""
        try:
            return fn()
        except OffloadError as e:
            return self._refusal(e, getattr(req, "log_size", 0))  # PROG_LOAD's, for the verifier log
        except _Refused as e:
            return e.reply

    @staticmethod
    def _refusal(e: OffloadError, log_size: int) -> Reply:
        text, cut = refusal_text(e, log_size)
        return Reply(code=linux_errno(e.errno or Errno.EIO), text=text, text_truncated=cut)

    def _worker(self) -> ThreadPoolExecutor:
        """One thread per device: its ctrl ring has one command in flight at most."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"verify-{self.device}")
        return self._executor

    @staticmethod
    def _encode_safely(command: int, reply: Reply, capacity: int) -> CtrlReply:
        try:
            return encode_reply(command, reply, capacity)
        except Exception:  # noqa: BLE001 -- cannot happen for payload-less errors; never let it escape
            return CtrlReply(Ack.ERR)

    # -- helpers -------------------------------------------------------------------------------
    def _dev(self) -> Device:
        dev = self.service.devices.get(self.device)
        if dev is None:
            raise OffloadError(errno.ENODEV, f"no device named {self.device!r}")
        return dev

    def _expect(self, handle: int, kind: Kind) -> object:
        return self._dev().handles.get(handle, kind)

    def _map(self, handle: int) -> MapObj:
        return self._expect(handle, Kind.MAP)  # type: ignore[return-value]

    # -- commands ------------------------------------------------------------------------------
    def caps(self, req: Message) -> Reply:
        c = self.service.caps(self.device)
        q = c["limits"]
        map_types = 0
        for t in c["map_types"]:
            map_types |= 1 << int(t)
        return Reply(payload=CapsReply(
            engine=str(c["engine"])[:32], map_types=map_types, helpers=tuple(c["helpers"]),
            max_maps=q["max_maps"], max_progs=q["max_progs"], max_map_memory=q["max_map_memory"],
            max_insns=q["max_insns"], max_key_size=q["max_key_size"], max_value_size=q["max_value_size"],
            max_entries=q["max_entries"], max_batch=MAX_BATCH, max_request=DEVICE_MAX_REQUEST,
            cmd_rate=int(q["commands_per_second"]), ncpus=c["possible_cpus"],
            attach_points=1 << AttachPoint.RX, flags=CapsFlag.STATE))

    def map_create(self, req) -> Reply:
        h = self.service.map_create(self.device, type=req.map_type, key_size=req.key_size,
                                    value_size=req.value_size, max_entries=req.max_entries,
                                    flags=req.map_flags, name=req.name)
        return Reply(payload=MapCreateReply(h))

    def map_free(self, req) -> Reply:
        self._map(req.map)
        self.service.free(self.device, req.map)
        return Reply()

    def map_lookup(self, req) -> Reply:
        if req.flags:
            raise _Refused(Errno.EINVAL, f"MAP_LOOKUP: flags {req.flags:#x} must be 0 in version 1")
        value = self.service.map_lookup(self.device, req.map, req.key)
        if value is None:
            raise _Refused(Errno.ENOENT, f"map {req.map}: no such key")
        return Reply(payload=MapLookupReply(value))

    def map_update(self, req) -> Reply:
        self.service.map_update(self.device, req.map, req.key, req.value, req.flags)
        return Reply()

    def map_delete(self, req) -> Reply:
        self.service.map_delete(self.device, req.map, req.key)
        return Reply()

    def map_freeze(self, req) -> Reply:
        self.service.map_freeze(self.device, req.map)
        return Reply()

    def map_get_next_key(self, req) -> Reply:
        key = self.service.map_get_next_key(self.device, req.map, req.key or None)
        if key is None:
            raise _Refused(Errno.ENOENT, f"map {req.map}: no key after the one given (end of the map)")
        return Reply(payload=MapGetNextKeyReply(key))

    def map_lookup_batch(self, req) -> Reply:
        obj = self._map(req.map)
        items, token = self.service.map_lookup_batch(self.device, req.map, req.token or None, req.max_count)
        return Reply(payload=MapLookupBatchReply(
            key_size=obj.spec.key_size, value_size=obj.spec.user_value_size(),
            keys=tuple(k for k, _ in items), values=tuple(v for _, v in items), token=token or b""))

    def map_update_batch(self, req) -> Reply:
        obj = self._map(req.map)
        for field, got, want in (("key_size", req.key_size, obj.spec.key_size),
                                 ("value_size", req.value_size, obj.spec.user_value_size())):
            if got != want:
                raise _Refused(Errno.EINVAL, f"MAP_UPDATE_BATCH: {field} {got} is not the map's {want}",
                               MapUpdateBatchReply(0))
        applied = self.service.map_update_batch(self.device, req.map, list(zip(req.keys, req.values)),
                                                req.flags)
        return Reply(payload=MapUpdateBatchReply(applied))

    def prog_load(self, req) -> Reply:
        if req.prog_flags:
            raise _Refused(Errno.EINVAL, f"PROG_LOAD: prog_flags {req.prog_flags:#x} are not supported")
        if req.expected_attach_type not in (0, BPF_XDP_ATTACH_TYPE):
            raise _Refused(Errno.EINVAL, f"PROG_LOAD: expected_attach_type {req.expected_attach_type} is not "
                           f"0 or BPF_XDP ({BPF_XDP_ATTACH_TYPE})")
        pending = self.service.prog_load_begin(
            self.device, req.insns, name=req.name or "prog", license=req.license, prog_type=req.prog_type,
            btf=req.btf or None, func_info=req.func_info, line_info=req.line_info, log_level=req.log_level,
            log_size=req.log_size)

        def verify() -> Reply:
            h, tag = pending.run()
            return Reply(payload=ProgLoadReply(h, bytes.fromhex(tag)))
        return _Later(verify)  # type: ignore[return-value]

    def prog_free(self, req) -> Reply:
        self._expect(req.prog, Kind.PROG)
        self.service.free(self.device, req.prog)
        return Reply()

    def prog_attach(self, req) -> Reply:
        _check_attach_point(req.attach_point)
        if req.flags & ~AttachFlag.REPLACE:
            raise _Refused(Errno.EINVAL, f"PROG_ATTACH: unknown flags {req.flags & ~AttachFlag.REPLACE:#x}")
        self._expect(req.prog, Kind.PROG)
        attached = self._dev().attached
        if attached is not None and not req.flags & AttachFlag.REPLACE:
            running = self._expect(attached, Kind.PROG)
            raise _Refused(Errno.EBUSY, f"attach point RX already runs program {attached} "
                           f"({running.name!r}, loaded by {_WHO.get(running.origin, running.origin)}); set REPLACE to "
                           "replace it (vxdp prog load --replace)")
        self.service.prog_attach(self.device, req.prog)
        return Reply()

    def prog_detach(self, req) -> Reply:
        _check_attach_point(req.attach_point)
        if self._dev().attached is None:
            raise _Refused(Errno.ENOENT, "attach point RX: no program attached")
        self.service.prog_detach(self.device)
        return Reply()

    def prog_query(self, req) -> Reply:
        _check_attach_point(req.attach_point)
        q = self.service.prog_query(self.device)
        prog = next((p for p in q["programs"] if p["handle"] == q["attached"]), None)
        if prog is None:
            raise _Refused(Errno.ENOENT, "attach point RX: no program attached")
        return Reply(payload=ProgQueryReply(prog["handle"], bytes.fromhex(prog["tag"]),
                                            tuple(prog["actions"][a] for a in ACTION_NAMES)))

    def state_export(self, req) -> Reply:
        # ack, header, blob(token), blob(chunk): the chunk takes what is left of the area
        room = self._capacity - 1 - REPLY_HEADER_SIZE - 4 - EXPORT_TOKEN_ROOM - 4
        chunk, token = self.service.state_export_chunk(self.device, req.token, min(max(room, 1), MAX_CHUNK))
        return Reply(payload=StateExportReply(token, chunk))

    def state_import(self, req) -> Reply:
        if req.flags & ~StateImportFlag.LAST:
            raise _Refused(Errno.EINVAL, f"STATE_IMPORT: unknown flags {req.flags & ~StateImportFlag.LAST:#x}")
        self.service.state_import_chunk(self.device, req.chunk, bool(req.flags & StateImportFlag.LAST))
        return Reply()

    def obj_list(self, req) -> Reply:
        if len(req.token) not in (0, LIST_TOKEN_SIZE):
            raise _Refused(Errno.EINVAL, f"OBJ_LIST: token of {len(req.token)} bytes was not issued by this device")
        after = int.from_bytes(req.token, "little")
        objs = self.service.objects(self.device, after)
        dev = self._dev()
        # ack, header, blob(token), count, rec_size, then records; at least one (else ENOBUFS, needed size)
        room = self._capacity - 1 - REPLY_HEADER_SIZE - 4 - LIST_TOKEN_SIZE - 8
        n = max(1, room // OBJ_RECORD_SIZE)
        if req.max_count:
            n = min(n, req.max_count)
        page = objs[:n]
        token = page[-1].handle.to_bytes(LIST_TOKEN_SIZE, "little") if len(objs) > n else b""
        return Reply(payload=ObjListReply(tuple(_obj_info(o, dev) for o in page), token))


def _obj_info(o: MapObj | ProgObj, dev: Device) -> ObjInfo:
    """One OBJ_LIST record for an object of the service's table."""
    origin = ORIGINS.get(o.origin, ObjOrigin.DRIVER)
    if isinstance(o, MapObj):
        s = o.spec
        return ObjInfo(o.handle, ObjKind.MAP, wire_name(o.name), origin,
                       ObjFlag.FROZEN if getattr(o.map, "frozen", False) else 0, int(s.type), s.key_size,
                       s.value_size, s.max_entries, int(s.flags))
    return ObjInfo(o.handle, ObjKind.PROG, wire_name(o.name), origin,
                   ObjFlag.ATTACHED if dev.attached == o.handle else 0,
                   o.source.prog_type if o.source else 6, insns=o.guest_insns, tag=bytes.fromhex(o.tag))


class _Later:
    """A command's reply that takes long to make (PROG_LOAD's verifier pass): ``run`` makes it."""

    def __init__(self, run: Callable[[], Reply]):
        self.run = run


class _Refused(Exception):
    """A refusal the handler itself decides (spec rules the service does not know)."""

    def __init__(self, code: int, text: str, payload: Message | None = None):
        super().__init__(text)
        self.reply = Reply.error(code, text, payload)


def _check_attach_point(point: int) -> None:
    if point != AttachPoint.RX:
        raise _Refused(Errno.EINVAL, f"attach point {point} does not exist (only 0, RX)")


_HANDLERS: dict[Command, Callable[[BpfCommandHandler, Message], Reply]] = {
    Command.CAPS: BpfCommandHandler.caps,
    Command.MAP_CREATE: BpfCommandHandler.map_create,
    Command.MAP_FREE: BpfCommandHandler.map_free,
    Command.MAP_LOOKUP: BpfCommandHandler.map_lookup,
    Command.MAP_UPDATE: BpfCommandHandler.map_update,
    Command.MAP_DELETE: BpfCommandHandler.map_delete,
    Command.MAP_GET_NEXT_KEY: BpfCommandHandler.map_get_next_key,
    Command.MAP_LOOKUP_BATCH: BpfCommandHandler.map_lookup_batch,
    Command.MAP_UPDATE_BATCH: BpfCommandHandler.map_update_batch,
    Command.MAP_FREEZE: BpfCommandHandler.map_freeze,
    Command.PROG_LOAD: BpfCommandHandler.prog_load,
    Command.PROG_FREE: BpfCommandHandler.prog_free,
    Command.PROG_ATTACH: BpfCommandHandler.prog_attach,
    Command.PROG_DETACH: BpfCommandHandler.prog_detach,
    Command.PROG_QUERY: BpfCommandHandler.prog_query,
    Command.STATE_EXPORT: BpfCommandHandler.state_export,
    Command.STATE_IMPORT: BpfCommandHandler.state_import,
    Command.OBJ_LIST: BpfCommandHandler.obj_list,
}
assert set(_HANDLERS) == set(Command), "every command of the class has a handler"
