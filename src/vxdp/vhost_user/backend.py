"""The vhost-user backend (device side) session: rules, replies, and effects on a device model.

The session does no I/O: ``handle(msg)`` returns the reply messages and drives a
``DeviceModel`` (the host daemon's device) through a small interface. ``process(conn)``
runs every complete message of a ``Connection`` through it.

Session rules (checked in this order for each request):

1. ``REQUEST_RULES``: a request may need the session to be owned (SET_OWNER seen) and may
   need a protocol feature to have been negotiated (SET_PROTOCOL_FEATURES). GET_FEATURES,
   GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, SET_FEATURES and GET_QUEUE_NUM are legal
   before SET_OWNER because QEMU sends the first three before it and DPDK sends SET_OWNER
   first: both orders are allowed. SET_OWNER twice is an error.
2. ``VRING_TRANSITIONS``: each vring is STOPPED or STARTED. Every vring starts STOPPED. A
   stopped vring takes any vring request; it becomes STARTED once its size, addresses, kick
   (fd or polling) and the memory table are all known, whichever arrives last (QEMU sends
   SET_VRING_ENABLE before the memory table; testpmd may send SET_VRING_NUM before it).
   A started vring refuses SET_VRING_NUM and SET_VRING_BASE (they cannot change under a
   running ring); GET_VRING_BASE stops it and answers its next avail index; after that a
   new SET_VRING_KICK is needed to start it again. Enabled/disabled is a separate flag
   (spec "Ring states"): rings start disabled once PROTOCOL_FEATURES is offered.
3. Semantic checks in the handler: vring index < ``num_vrings``, ring size a power of two
   in 1..32768, base <= 0xffff, enable 0/1, features a subset of what we offered, memory
   regions not overlapping (neither guest-physical nor user addresses), ring areas inside
   the memory table (checked when the ring starts).

Errors: a refused request gets an error ack (u64 errno) when the frontend asked for one
(need_reply with REPLY_ACK negotiated; a GET_CONFIG gets the spec's size-0 answer). When the
frontend waits for no answer (or for a value we cannot give, such as a bad GET_VRING_BASE),
the error is raised and ``process`` reports the session closed: the spec lets a backend
close the connection on errors, and carrying on with half-applied state would be worse. In
both cases one line is logged and the process keeps serving other sessions.

Fds: every fd handed to the device model belongs to it from then on (even if it raises);
fds of a refused message are closed here.

Protocol features offered by default: MQ (the spec says backends should), REPLY_ACK, CONFIG
(answered from the device model; DPDK's virtio_user reads the MAC with it, a size-0 answer
makes it fall back). STATUS is implemented but opt-in: QEMU 7.2.0 then brackets every start
and stop with GET_STATUS/SET_STATUS (status 0 on stop; upstream later reverted that), a
sequence no QEMU run here exercises. Not offered: LOG_SHMFD (no migration logging, so
SET_LOG_BASE/SET_LOG_FD are refused), BACKEND_REQ, INFLIGHT_SHMFD, CONFIGURE_MEM_SLOTS,
INBAND_NOTIFICATIONS.
"""

from __future__ import annotations

import abc
import enum
import errno
import itertools
import logging
from dataclasses import dataclass, field

from vxdp.virtio.virtqueue import MAX_QUEUE_SIZE, ring_sizes

from . import messages as m
from .connection import CLOSED, NEED_DATA, Connection, close_fds
from .errors import RemoteProtocolError
from .messages import FrontendReq as R
from .messages import ProtocolFeature as PF

log = logging.getLogger("vxdp.vhost_user")

DEFAULT_PROTOCOL_FEATURES = PF.MQ | PF.REPLY_ACK | PF.CONFIG


class DeviceError(Exception):
    """Raised by a device model to refuse an operation; ``errno`` goes into the ack."""

    def __init__(self, msg: str, code: int = errno.EIO) -> None:
        super().__init__(msg)
        self.errno = code


class SessionError(RemoteProtocolError):
    """A well-formed request the session refuses (wrong state, semantic check)."""


class DeviceModel(abc.ABC):
    """What the backend session drives. Implemented by the host daemon's device (and by
    tests' recording device). Each method may raise ``DeviceError``.

    A vring's protocol state (size, addresses, base, enabled) is the session's `Vring`; the
    device is handed it when the ring starts, as rust-vmm's backend library hands its
    ``VringState`` to the device. Its fds (kick, call, err) go to the device as they arrive:
    the device owns, checks and uses them."""

    @abc.abstractmethod
    def set_features(self, features: int) -> None: ...

    @abc.abstractmethod
    def set_mem_table(self, regions: list[m.MemRegion], fds: list[int]) -> None:
        """A new memory table (replacing any previous one); one fd per region."""

    @abc.abstractmethod
    def set_vring_kick(self, index: int, fd: int | None) -> None:
        """``None``: no fd, the device must poll the ring."""

    @abc.abstractmethod
    def set_vring_call(self, index: int, fd: int | None) -> None: ...

    @abc.abstractmethod
    def set_vring_err(self, index: int, fd: int | None) -> None: ...

    @abc.abstractmethod
    def start_vring(self, index: int, vring: Vring) -> None:
        """Size, addresses, base, kick and memory are all known: start processing from ``vring``.

        The device may keep ``vring`` while the ring runs: the session updates it in place
        (``enabled`` may change under a running ring), so the device reads it, never a copy."""

    @abc.abstractmethod
    def stop_vring(self, index: int) -> int:
        """Stop processing; return the next avail index to resume from (the vring base)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the session: stop everything, close every fd and mapping held."""

    def get_config(self, offset: int, size: int) -> bytes:
        raise DeviceError("device has no config space", errno.EOPNOTSUPP)

    def set_config(self, offset: int, data: bytes, flags: int) -> None:
        raise DeviceError("config space is read-only", errno.EPERM)

    def set_status(self, status: int) -> None:
        """Virtio device status written by the frontend (STATUS protocol feature)."""


# ----------------------------------------------------------------------------- rule tables


@dataclass(frozen=True)
class Rule:
    needs_owner: bool = True
    needs_protocol: PF | None = None


REQUEST_RULES: dict[R, Rule] = {
    R.GET_FEATURES: Rule(needs_owner=False),
    R.SET_FEATURES: Rule(needs_owner=False),
    R.GET_PROTOCOL_FEATURES: Rule(needs_owner=False),
    R.SET_PROTOCOL_FEATURES: Rule(needs_owner=False),
    R.SET_OWNER: Rule(needs_owner=False),
    R.GET_QUEUE_NUM: Rule(needs_owner=False, needs_protocol=PF.MQ),
    R.RESET_OWNER: Rule(),
    R.SET_MEM_TABLE: Rule(),
    R.SET_VRING_NUM: Rule(),
    R.SET_VRING_ADDR: Rule(),
    R.SET_VRING_BASE: Rule(),
    R.GET_VRING_BASE: Rule(),
    R.SET_VRING_KICK: Rule(),
    R.SET_VRING_CALL: Rule(),
    R.SET_VRING_ERR: Rule(),
    R.SET_VRING_ENABLE: Rule(),
    R.SET_BACKEND_REQ_FD: Rule(),
    R.GET_CONFIG: Rule(needs_owner=False, needs_protocol=PF.CONFIG),
    R.SET_CONFIG: Rule(needs_owner=False, needs_protocol=PF.CONFIG),
    R.SET_STATUS: Rule(needs_owner=False, needs_protocol=PF.STATUS),
    R.GET_STATUS: Rule(needs_owner=False, needs_protocol=PF.STATUS),
    R.GET_MAX_MEM_SLOTS: Rule(needs_protocol=PF.CONFIGURE_MEM_SLOTS),
    R.ADD_MEM_REG: Rule(needs_protocol=PF.CONFIGURE_MEM_SLOTS),
    R.REM_MEM_REG: Rule(needs_protocol=PF.CONFIGURE_MEM_SLOTS),
}


class VringStatus(enum.Enum):
    STOPPED = "stopped"
    STARTED = "started"


_VRING_REQS = {R.SET_VRING_NUM, R.SET_VRING_BASE, R.SET_VRING_ADDR, R.SET_VRING_KICK,
               R.SET_VRING_CALL, R.SET_VRING_ERR, R.SET_VRING_ENABLE}
VRING_TRANSITIONS: dict[VringStatus, dict[R, VringStatus]] = {
    VringStatus.STOPPED: {**{r: VringStatus.STOPPED for r in _VRING_REQS},
                          R.GET_VRING_BASE: VringStatus.STOPPED},
    VringStatus.STARTED: {R.SET_VRING_ADDR: VringStatus.STARTED, R.SET_VRING_KICK: VringStatus.STARTED,
                          R.SET_VRING_CALL: VringStatus.STARTED, R.SET_VRING_ERR: VringStatus.STARTED,
                          R.SET_VRING_ENABLE: VringStatus.STARTED, R.GET_VRING_BASE: VringStatus.STOPPED},
}


@dataclass
class Vring:
    """One vring's vhost-user protocol state: the session's record, the one copy of it. The
    ring areas' sizes follow from ``num`` (`vxdp.virtio.virtqueue.ring_sizes`)."""

    status: VringStatus = VringStatus.STOPPED
    num: int | None = None
    base: int = 0
    addr: m.VringAddr | None = None
    kick_known: bool = False
    enabled: bool = False


@dataclass
class BackendSession:
    """One frontend's session with our device. See the module docstring for the rules."""

    device: DeviceModel
    features: int
    protocol_features: int = DEFAULT_PROTOCOL_FEATURES
    num_vrings: int = 2
    queue_num: int = 1  # GET_QUEUE_NUM's answer (queue pairs for virtio-net, as DPDK reads it)
    name: str = "vhost-user"
    owned: bool = False
    acked_features: int | None = None
    acked_protocol: int = 0
    status: int = 0
    regions: list[m.MemRegion] | None = None
    vrings: list[Vring] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.num_vrings <= m.VRING_INDEX_MASK + 1:
            raise ValueError(f"num_vrings {self.num_vrings} outside 1..256")
        self.vrings = [self._fresh_vring() for _ in range(self.num_vrings)]

    def _fresh_vring(self) -> Vring:
        # Without PROTOCOL_FEATURES a ring starts enabled (spec "Ring states").
        return Vring(enabled=not self.features & m.F_PROTOCOL_FEATURES)

    # ------------------------------------------------------------------ entry points
    def handle(self, msg: m.Message) -> list[m.Message]:
        """Apply one request; return the replies. Raises ``RemoteProtocolError`` when the
        request is refused and the frontend waits for no answer (close the session)."""
        self._handed = False
        try:
            replies = self._dispatch(msg)
        except (SessionError, DeviceError) as exc:
            if not self._handed:
                close_fds(msg.fds)
            if isinstance(exc, DeviceError):
                err = SessionError(f"{m.req_name(msg.request)}: device refused: {exc}",
                                   request=msg.request, flags=msg.flags, errno=exc.errno)
            else:
                err = exc
            return self.on_error(err)
        if msg.need_reply and self.acked_protocol & PF.REPLY_ACK and msg.request not in m.ALWAYS_REPLIED:
            replies.append(m.ack(msg.request, 0))
        return replies

    def on_error(self, err: RemoteProtocolError) -> list[m.Message]:
        """Answer a refused request if the frontend waits for an answer we can give;
        otherwise re-raise (the caller closes the session). Logs one line either way."""
        if err.fatal:
            log.warning("%s: closing: %s", self.name, err)
            raise err
        try:
            req = R(err.request)  # type: ignore[arg-type]
        except ValueError:
            req = None
        if req == R.GET_CONFIG:
            log.warning("%s: refused: %s", self.name, err)
            return [m.reply(req, m.Config(0, 0, 0, error=True))]
        if (req is not None and req not in m.ALWAYS_REPLIED and err.flags & m.FLAG_NEED_REPLY
                and self.acked_protocol & PF.REPLY_ACK):
            log.warning("%s: refused (error ack %d): %s", self.name, err.errno, err)
            return [m.ack(req, err.errno or errno.EINVAL)]
        log.warning("%s: closing: %s", self.name, err)
        raise err

    def process(self, conn: Connection) -> tuple[list[bytes], bool]:
        """Run every complete message buffered in ``conn``; return the encoded replies and
        whether the session must be closed now (error, or the peer went away)."""
        out: list[bytes] = []
        while True:
            try:
                try:
                    ev = conn.next_event()
                except RemoteProtocolError as exc:
                    replies = self.on_error(exc)  # an ack, or raises (logged there)
                else:
                    if ev is NEED_DATA:
                        return out, False
                    if ev is CLOSED:
                        return out, True
                    replies = self.handle(ev)  # type: ignore[arg-type]
            except RemoteProtocolError:
                conn.close()
                return out, True
            out.extend(conn.send(r)[0] for r in replies)

    def disconnect(self) -> None:
        """The frontend went away: stop started rings and reset the device for the next one."""
        for i, vr in enumerate(self.vrings):
            if vr.status is VringStatus.STARTED:
                try:
                    self.device.stop_vring(i)
                except DeviceError as exc:
                    log.warning("%s: stopping vring %d: %s", self.name, i, exc)
        self.device.reset()
        self.vrings = [self._fresh_vring() for _ in range(self.num_vrings)]
        self.regions = None
        self.owned = False

    # ------------------------------------------------------------------ dispatch
    def _refuse(self, msg: m.Message, what: str, code: int = errno.EINVAL) -> SessionError:
        return SessionError(f"{m.req_name(msg.request)}: {what}", request=msg.request,
                            flags=msg.flags, errno=code)

    def _dispatch(self, msg: m.Message) -> list[m.Message]:
        rule = REQUEST_RULES.get(msg.request)
        if rule is None:
            raise self._refuse(msg, "not supported", errno.EOPNOTSUPP)
        if rule.needs_owner and not self.owned:
            raise self._refuse(msg, "before SET_OWNER", errno.EPROTO)
        if rule.needs_protocol is not None and not self.acked_protocol & rule.needs_protocol:
            raise self._refuse(msg, f"protocol feature {rule.needs_protocol.name} not negotiated",
                               errno.EOPNOTSUPP)
        handler = getattr(self, "_on_" + msg.request.name.lower())
        return handler(msg)

    def _vring(self, msg: m.Message, index: int) -> Vring:
        if not 0 <= index < self.num_vrings:
            raise self._refuse(msg, f"vring index {index} out of range (device has {self.num_vrings})")
        vr = self.vrings[index]
        nxt = VRING_TRANSITIONS[vr.status].get(msg.request)
        if nxt is None:
            raise self._refuse(msg, f"not allowed on a {vr.status.value} vring {index}", errno.EBUSY)
        return vr

    def _hand(self) -> None:
        self._handed = True

    # ---- features, owner
    def _on_get_features(self, msg: m.Message) -> list[m.Message]:
        return [m.reply(msg.request, m.U64(self.features))]

    def _on_set_features(self, msg: m.Message) -> list[m.Message]:
        v = msg.payload.value  # type: ignore[union-attr]
        extra = v & ~self.features
        if extra:
            raise self._refuse(msg, f"features 0x{extra:x} were not offered")
        self.device.set_features(v)
        self.acked_features = v
        return []

    def _on_get_protocol_features(self, msg: m.Message) -> list[m.Message]:
        if not self.features & m.F_PROTOCOL_FEATURES:
            raise self._refuse(msg, "PROTOCOL_FEATURES not offered", errno.EOPNOTSUPP)
        return [m.reply(msg.request, m.U64(self.protocol_features))]

    def _on_set_protocol_features(self, msg: m.Message) -> list[m.Message]:
        if not self.features & m.F_PROTOCOL_FEATURES:
            raise self._refuse(msg, "PROTOCOL_FEATURES not offered", errno.EOPNOTSUPP)
        v = msg.payload.value  # type: ignore[union-attr]
        extra = v & ~self.protocol_features
        if extra:
            raise self._refuse(msg, f"protocol features 0x{extra:x} were not offered")
        self.acked_protocol = v
        return []

    def _on_set_owner(self, msg: m.Message) -> list[m.Message]:
        if self.owned:
            raise self._refuse(msg, "session already owned", errno.EBUSY)
        self.owned = True
        return []

    def _on_reset_owner(self, msg: m.Message) -> list[m.Message]:
        # Deprecated; the spec recommends ignoring it or disabling all rings: we stop them.
        for i, vr in enumerate(self.vrings):
            if vr.status is VringStatus.STARTED:
                vr.base = self.device.stop_vring(i)
                vr.status, vr.kick_known = VringStatus.STOPPED, False
        return []

    def _on_get_queue_num(self, msg: m.Message) -> list[m.Message]:
        return [m.reply(msg.request, m.U64(self.queue_num))]

    def _on_set_backend_req_fd(self, msg: m.Message) -> list[m.Message]:
        close_fds(msg.fds)  # we send no backend requests: accept and drop the channel
        self._hand()
        return []

    # ---- memory
    def _on_set_mem_table(self, msg: m.Message) -> list[m.Message]:
        regions = list(msg.payload.regions)  # type: ignore[union-attr]
        for key in ("guest_phys_addr", "userspace_addr"):
            spans = sorted((getattr(r, key), getattr(r, key) + r.memory_size) for r in regions)
            for (a0, a1), (b0, _b1) in itertools.pairwise(spans):
                if b0 < a1:
                    raise self._refuse(msg, f"regions overlap in {key}: 0x{a0:x}..0x{a1:x} and 0x{b0:x}")
        self._hand()
        self.device.set_mem_table(regions, list(msg.fds))
        self.regions = regions
        self._start_ready(msg)
        return []

    # ---- vrings
    def _on_set_vring_num(self, msg: m.Message) -> list[m.Message]:
        st: m.VringState = msg.payload  # type: ignore[assignment]
        vr = self._vring(msg, st.index)
        if not (1 <= st.num <= MAX_QUEUE_SIZE and st.num & (st.num - 1) == 0):
            raise self._refuse(msg, f"ring size {st.num} is not a power of two in 1..{MAX_QUEUE_SIZE}")
        vr.num = st.num
        self._start_ready(msg)
        return []

    def _on_set_vring_base(self, msg: m.Message) -> list[m.Message]:
        st: m.VringState = msg.payload  # type: ignore[assignment]
        vr = self._vring(msg, st.index)
        if st.num > 0xFFFF:
            raise self._refuse(msg, f"base {st.num} does not fit a 16-bit ring index")
        vr.base = st.num
        return []

    def _on_set_vring_addr(self, msg: m.Message) -> list[m.Message]:
        a: m.VringAddr = msg.payload  # type: ignore[assignment]
        vr = self._vring(msg, a.index)
        if a.descriptor % 16 or a.available % 2 or a.used % 4:
            raise self._refuse(msg, "ring addresses misaligned (desc 16, avail 2, used 4)")
        vr.addr = a
        self._start_ready(msg)
        return []

    def _on_get_vring_base(self, msg: m.Message) -> list[m.Message]:
        st: m.VringState = msg.payload  # type: ignore[assignment]
        vr = self._vring(msg, st.index)
        if vr.status is VringStatus.STARTED:
            vr.base = self.device.stop_vring(st.index) & 0xFFFF
            vr.status = VringStatus.STOPPED
        vr.kick_known = False  # a stopped ring restarts on a new SET_VRING_KICK
        return [m.reply(msg.request, m.VringState(st.index, vr.base))]

    def _vring_fd(self, msg: m.Message) -> tuple[Vring, int, int | None]:
        p: m.VringFd = msg.payload  # type: ignore[assignment]
        vr = self._vring(msg, p.index)
        self._hand()
        return vr, p.index, (None if p.no_fd else msg.fds[0])

    def _on_set_vring_kick(self, msg: m.Message) -> list[m.Message]:
        vr, i, fd = self._vring_fd(msg)
        self.device.set_vring_kick(i, fd)
        vr.kick_known = True
        self._start_ready(msg)
        return []

    def _on_set_vring_call(self, msg: m.Message) -> list[m.Message]:
        _vr, i, fd = self._vring_fd(msg)
        self.device.set_vring_call(i, fd)
        return []

    def _on_set_vring_err(self, msg: m.Message) -> list[m.Message]:
        _vr, i, fd = self._vring_fd(msg)
        self.device.set_vring_err(i, fd)
        return []

    def _on_set_vring_enable(self, msg: m.Message) -> list[m.Message]:
        st: m.VringState = msg.payload  # type: ignore[assignment]
        vr = self._vring(msg, st.index)
        if st.num not in (0, 1):
            raise self._refuse(msg, f"enable value {st.num} (0 or 1)")
        if not self.features & m.F_PROTOCOL_FEATURES:
            raise self._refuse(msg, "PROTOCOL_FEATURES not offered", errno.EOPNOTSUPP)
        vr.enabled = bool(st.num)
        return []

    def _start_ready(self, msg: m.Message) -> None:
        """Start every stopped vring that now has size, addresses, kick and memory."""
        if self.regions is None:
            return
        for i, vr in enumerate(self.vrings):
            if vr.status is VringStatus.STARTED or not vr.kick_known or vr.num is None or vr.addr is None:
                continue
            sizes = ring_sizes(vr.num)
            for what, uva, size in zip(("descriptor table", "avail ring", "used ring"),
                                       (vr.addr.descriptor, vr.addr.available, vr.addr.used), sizes, strict=True):
                if not any(r.userspace_addr <= uva and uva + size <= r.userspace_addr + r.memory_size
                           for r in self.regions):
                    raise self._refuse(msg, f"vring {i} {what} at uva 0x{uva:x} (+{size}) outside the memory table",
                                       errno.EFAULT)
            self.device.start_vring(i, vr)
            vr.status = VringStatus.STARTED

    # ---- config, status, mem slots
    def _on_get_config(self, msg: m.Message) -> list[m.Message]:
        c: m.Config = msg.payload  # type: ignore[assignment]
        data = self.device.get_config(c.offset, c.size)
        if len(data) != c.size:
            raise self._refuse(msg, f"device gave {len(data)} config bytes for {c.size}", errno.EIO)
        return [m.reply(msg.request, m.Config(c.offset, c.size, c.flags, bytes(data)))]

    def _on_set_config(self, msg: m.Message) -> list[m.Message]:
        c: m.Config = msg.payload  # type: ignore[assignment]
        self.device.set_config(c.offset, c.payload, c.flags)
        return []

    def _on_set_status(self, msg: m.Message) -> list[m.Message]:
        v = msg.payload.value  # type: ignore[union-attr]
        if v > 0xFF:
            raise self._refuse(msg, f"status 0x{v:x} does not fit a byte")
        self.device.set_status(v)
        self.status = v
        return []

    def _on_get_status(self, msg: m.Message) -> list[m.Message]:
        return [m.reply(msg.request, m.U64(self.status))]

    def _on_get_max_mem_slots(self, msg: m.Message) -> list[m.Message]:
        return [m.reply(msg.request, m.U64(m.MAX_REGIONS))]

    def _on_add_mem_reg(self, msg: m.Message) -> list[m.Message]:
        raise self._refuse(msg, "memory slots not supported", errno.EOPNOTSUPP)

    _on_rem_mem_reg = _on_add_mem_reg
