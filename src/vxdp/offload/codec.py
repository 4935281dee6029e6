"""The BPF control class of virtio-net (docs/offload-protocol.md): its messages in and out of ctrl frames.

Sans-IO and shared by both ends. A command crosses the generic ctrl framing
(`CtrlRequest`, `CtrlReply`) once each way, so this module speaks in those frames,
never in their bytes: the driver calls `encode_request` for the `CtrlRequest` it
sends and `decode_reply` on the `CtrlReply` the device wrote; the device calls
`decode_request` on the `CtrlRequest` it was given and `encode_reply` for the
`CtrlReply` it writes, sized to the writable area. Turning frames into bytes is the
framing's job (`CtrlRequest.encode`, `CtrlReply.decode`), done once by whoever moves
them. Nothing here touches a socket, guest memory or bpf(2): programs travel as raw
instructions with guest map handles still in them, and the device decides what they
mean.

Malformed peer bytes raise `OffloadProtocolError` (never another exception) whose
``code`` and message the device puts in its reply; messages our caller cannot encode
raise `OffloadEncodeError`. Both, and the wire primitives, are in `vxdp.offload.wire`; the
message dataclasses are in `vxdp.offload.messages`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..virtio.ctrl_framing import HEADER_SIZE, Ack, CtrlReply, CtrlRequest
from .layout import Message
from .messages import (
    REPLIES,
    REQUESTS,
)
from .wire import (
    CTRL_CLASS_BPF,
    MAX_REPLY,
    MAX_REQUEST,
    MAX_TEXT,
    REPLY_FLAGS_KNOWN,
    REPLY_HEADER_SIZE,
    Command,
    Errno,
    OffloadEncodeError,
    OffloadProtocolError,
    Reader,
    ReplyFlag,
    Writer,
    command_name,
)


@dataclass(frozen=True)
class Reply:
    """What the device writes after a BPF command: code, typed payload, text.

    ``payload`` is the command's reply dataclass on success (None for commands that
    answer nothing), and on failure None, except MAP_UPDATE_BATCH whose failure still
    says how many entries were applied. ``needed`` is set with ``payload_omitted``:
    the payload size the device needed (the driver retries with a larger area).
    """

    code: int = Errno.OK
    payload: Message | None = None
    text: str = ""
    text_truncated: bool = False
    payload_omitted: bool = False
    needed: int = 0

    @property
    def ok(self) -> bool:
        return self.code == Errno.OK

    @classmethod
    def error(cls, code: int, text: str = "", payload: Message | None = None) -> Reply:
        if code == Errno.OK:
            raise OffloadEncodeError("an error reply needs a non-zero code")
        return cls(code=code, payload=payload, text=text)


def _command(command: int, what: str) -> Command:
    try:
        return Command(command)
    except ValueError:
        raise OffloadProtocolError(command, what, f"unknown command {command:#04x}") from None


def encode_request(req: Message) -> CtrlRequest:
    """The ctrl frame of one BPF command: class BPF, the command, the request data."""
    if type(req) not in REQUESTS.values():
        raise OffloadEncodeError(f"{type(req).__name__} is not a BPF class request")
    w = Writer(req.COMMAND)
    req.write(w)
    body = w.bytes()
    if len(body) + HEADER_SIZE > MAX_REQUEST:
        raise OffloadEncodeError(f"{req.COMMAND.name} request of {len(body)} bytes is above {MAX_REQUEST}")
    return CtrlRequest(CTRL_CLASS_BPF, req.COMMAND, body)


def decode_request(ctrl: CtrlRequest) -> Message:
    """Parse one BPF ctrl request into its message.

    Raises `OffloadProtocolError` for anything malformed: wrong class, unknown command,
    a truncated field, a length over its cap, trailing bytes.
    """
    size = HEADER_SIZE + len(ctrl.data)
    if size > MAX_REQUEST:
        raise OffloadProtocolError(None, "request", f"{size} bytes is above {MAX_REQUEST}", Errno.E2BIG)
    if ctrl.cls != CTRL_CLASS_BPF:
        raise OffloadProtocolError(None, "class", f"{ctrl.cls:#x} is not the BPF class {CTRL_CLASS_BPF:#x}")
    cmd = _command(ctrl.command, "command")
    r = Reader(ctrl.data, cmd)
    req = REQUESTS[cmd].read(r)
    r.end()
    return req


def _errno(code: int) -> int:
    try:
        return Errno(code)
    except ValueError:
        return code


def _fit_text(raw: bytes, room: int) -> tuple[bytes, bool]:
    if len(raw) <= room:
        return raw, False
    cut = raw[: max(room, 0)]
    return cut.decode("utf-8", "ignore").encode("utf-8"), True  # never end mid-character


def encode_reply(command: int, reply: Reply, capacity: int | None = None) -> CtrlReply:
    """The ctrl reply for ``reply``: ack, header, payload, text, fitting a ``capacity``-byte writable
    area (the ack included).

    A payload that does not fit becomes ``ENOBUFS`` with PAYLOAD_OMITTED and the needed
    size; text is cut (at a character boundary) and flagged. Under 17 bytes of capacity
    only the ack fits, and it says VIRTIO_NET_ERR (`CtrlReply.encode` cuts the frame to the
    area, so a 0-byte area gets nothing).
    """
    try:
        cmd: Command | int = Command(command)
    except ValueError:  # an unknown command can only be refused
        cmd = command
        if reply.ok or reply.payload is not None:
            raise OffloadEncodeError(f"unknown command {command:#04x} can only get a payload-less error") from None
    payload = b""
    if reply.payload is not None:
        if reply.payload.COMMAND != cmd:
            raise OffloadEncodeError(f"{type(reply.payload).__name__} is not a {cmd.name} reply")
        w = Writer(cmd, "reply")
        reply.payload.write(w)
        payload = w.bytes()
        if not reply.ok and cmd != Command.MAP_UPDATE_BATCH:
            raise OffloadEncodeError(f"a failed {cmd.name} reply carries no payload")
    elif reply.ok and cmd in REPLIES:
        raise OffloadEncodeError(f"a successful {cmd.name} reply needs a {REPLIES[cmd].__name__}")
    code, flags = int(reply.code), 0
    if reply.payload_omitted:
        payload, flags, code = b"", ReplyFlag.PAYLOAD_OMITTED, Errno.ENOBUFS
    payload_len = reply.needed if reply.payload_omitted else len(payload)
    cap = MAX_REPLY if capacity is None else capacity
    if cap < 1 + REPLY_HEADER_SIZE:
        return CtrlReply(Ack.ERR)
    if 1 + REPLY_HEADER_SIZE + len(payload) > cap:
        payload_len, payload, flags, code = len(payload), b"", ReplyFlag.PAYLOAD_OMITTED, Errno.ENOBUFS
    room = min(cap - 1 - REPLY_HEADER_SIZE - len(payload), MAX_TEXT)
    text, cut = _fit_text(reply.text.encode("utf-8"), room)
    if cut or reply.text_truncated:
        flags |= ReplyFlag.TEXT_TRUNCATED
    hdr = Writer(None, "reply header")
    hdr.i32(code, "code")
    hdr.u32(flags, "flags")
    hdr.u32(payload_len, "payload_len")
    hdr.u32(len(text), "text_len")
    ack = Ack.OK if code == Errno.OK else Ack.ERR
    return CtrlReply(ack, hdr.bytes() + payload + text)


def error_reply(err: OffloadProtocolError, capacity: int | None = None) -> CtrlReply:
    """The device's answer to a request `decode_request` refused: its code, its message as text."""
    return encode_reply(err.command or 0, Reply.error(err.code, str(err)), capacity)


def decode_reply(command: int, ctrl: CtrlReply) -> Reply:
    """Parse the ctrl reply the device wrote (the used length's worth) for a BPF ``command``.

    Raises `OffloadProtocolError` if it is not a valid reply. A device that wrote
    only ``ack = VIRTIO_NET_ERR`` (offload not negotiated, or too small an area) gives
    ``Reply(code=EIO)``.
    """
    cmd = command  # an unknown command's refusal still decodes (it can carry no payload)
    size = 1 + len(ctrl.result)
    if size > MAX_REPLY:
        raise OffloadProtocolError(cmd, "reply", f"{size} bytes is above {MAX_REPLY}", Errno.E2BIG)
    if not ctrl.result:
        if ctrl.ok:
            raise OffloadProtocolError(cmd, "reply header", "ack is VIRTIO_NET_OK but no header follows")
        return Reply(code=Errno.EIO, text="device wrote VIRTIO_NET_ERR and no reply header")
    r = Reader(ctrl.result, cmd, "reply")
    code = r.i32("code")
    flags = r.u32("flags")
    payload_len = r.u32("payload_len")
    text_len = r.count("text_len", MAX_TEXT)
    if code < 0:
        raise r.error("code", f"{code} is negative; codes are positive errnos")
    if code == Errno.OK and cmd not in set(Command):
        raise r.error("code", f"success for unknown command {cmd:#04x}")
    if (code == Errno.OK) != ctrl.ok:
        raise r.error("code", f"code {code} contradicts ack {ctrl.ack.name}")
    if flags & ~REPLY_FLAGS_KNOWN:
        raise r.error("flags", f"unknown bits {flags & ~REPLY_FLAGS_KNOWN:#x}")
    omitted = bool(flags & ReplyFlag.PAYLOAD_OMITTED)
    payload = None
    if omitted:
        if code != Errno.ENOBUFS:
            raise r.error("flags", f"PAYLOAD_OMITTED with code {code}, not ENOBUFS")
    elif payload_len or (code == Errno.OK and cmd in REPLIES):
        raw = r.take(payload_len, "payload")
        cls = REPLIES.get(cmd)
        if cls is None or (code != Errno.OK and cmd != Command.MAP_UPDATE_BATCH):
            raise r.error("payload", f"{payload_len} bytes where {command_name(cmd)} answers none")
        pr = Reader(raw, cmd, "reply payload")
        payload = cls.read(pr)
        pr.end()
    raw_text = r.take(text_len, "text")
    try:  # UTF-8 (§3): a device that cut its text mid-character, or wrote other bytes, is refused
        text = raw_text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise r.error("text", f"is not UTF-8 (byte {e.start} of {text_len})") from None
    r.end()
    return Reply(_errno(code), payload, text, bool(flags & ReplyFlag.TEXT_TRUNCATED), omitted,
                 payload_len if omitted else 0)
