"""The vhost-user frontend (driver side) session: the requests QEMU 7.2 sends, in its order.

Sans-IO: each step is a generator that yields a request ``Message`` and is sent back the
reply ``Message`` (or ``None`` when the request wants no answer: see
``messages.expects_reply``). ``run(step, exchange)`` drives one with any callable doing the
I/O (``transport.Channel`` does it over a socket). Replies are checked here: wrong request
code, a missing reply flag, a non-zero ack (``RequestFailed``) raise ``RemoteProtocolError``.

Order, QEMU 7.2's: ``negotiate`` = GET_FEATURES, GET_PROTOCOL_FEATURES,
SET_PROTOCOL_FEATURES, [GET_QUEUE_NUM with MQ], SET_OWNER; ``start`` = SET_FEATURES,
SET_MEM_TABLE (need_reply), then per vring SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR,
SET_VRING_KICK, SET_VRING_CALL [, SET_VRING_ERR], then SET_VRING_ENABLE 1 for each (QEMU
also sends SET_VRING_CALL, SET_VRING_ERR and SET_VRING_ENABLE once before SET_FEATURES;
this frontend does not); ``stop`` = GET_VRING_BASE per vring. With ``ack_all`` every request asks
for a REPLY_ACK (when negotiated), so each step ends only once the backend has applied it;
QEMU asks only for SET_MEM_TABLE (and SET_FEATURES). The frontend keeps ownership of the fds it sends (the kernel
duplicates them into the peer).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

from . import messages as m
from .errors import LocalProtocolError, RemoteProtocolError, RequestFailed
from .messages import FrontendReq as R
from .messages import ProtocolFeature as PF

Step = Generator[m.Message, m.Message | None, object]

DEFAULT_PROTOCOL_WANTED = PF.MQ | PF.REPLY_ACK


@dataclass(frozen=True)
class RegionSpec:
    """One shared memory region as the frontend describes it (fd stays the caller's)."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int
    fd: int

    def wire(self) -> m.MemRegion:
        return m.MemRegion(self.guest_phys_addr, self.memory_size, self.userspace_addr, self.mmap_offset)


@dataclass(frozen=True)
class VringSpec:
    """One vring: size, base, the frontend's virtual addresses of its parts, and eventfds
    (``kick_fd`` None = the backend polls; ``call_fd`` None = we poll)."""

    index: int
    num: int
    desc_uva: int
    avail_uva: int
    used_uva: int
    kick_fd: int | None
    call_fd: int | None
    err_fd: int | None = None
    base: int = 0


class FrontendSession:
    """State of our side: what was offered, what we acked, which replies are expected."""

    def __init__(self, want_features: int, want_protocol: int = DEFAULT_PROTOCOL_WANTED,
                 queue_pairs: int = 1, ack_all: bool = False) -> None:
        self.want_features = want_features
        self.ack_all = ack_all  # need_reply on every request (once REPLY_ACK is negotiated)
        self.want_protocol = want_protocol
        self.queue_pairs = queue_pairs
        self.backend_features: int | None = None
        self.backend_protocol = 0
        self.protocol = 0  # negotiated protocol features
        self.features: int | None = None  # acked with SET_FEATURES
        self.queue_num: int | None = None
        self.owned = False

    # ------------------------------------------------------------------ helpers
    def _req(self, req: R, payload: m.Payload = m.EMPTY, fds: tuple[int, ...] = (),
             ack: bool = False) -> m.Message:
        flags = m.VERSION
        if (ack or self.ack_all) and self.protocol & PF.REPLY_ACK and req not in m.ALWAYS_REPLIED:
            flags |= m.FLAG_NEED_REPLY
        return m.Message(req, payload, flags, fds)

    @staticmethod
    def check_reply(request: m.Message, reply: m.Message | None) -> m.Payload | None:
        """Validate the answer to ``request``; return its payload (None if none was due)."""
        if not m.expects_reply(request):
            if reply is not None:
                raise LocalProtocolError(f"{request.request.name}: no reply was due")
            return None
        if reply is None:
            raise RemoteProtocolError(f"{request.request.name}: no reply", request=request.request)
        if reply.request != request.request:
            raise RemoteProtocolError(f"reply to {request.request.name} is for {m.req_name(reply.request)}",
                                      request=reply.request, fatal=True)
        if request.request not in m.ALWAYS_REPLIED:
            v = reply.payload.value  # type: ignore[union-attr]
            if v:
                raise RequestFailed(f"{request.request.name}: backend refused (ack {v})",
                                    request=request.request, errno=v if v < 1 << 31 else 0)
        if request.request == R.GET_CONFIG and reply.payload.error:  # type: ignore[union-attr]
            raise RequestFailed("GET_CONFIG: backend answered with an error (size 0)",
                                request=request.request)
        return reply.payload

    def _ask(self, msg: m.Message) -> Generator[m.Message, m.Message | None, m.Payload | None]:
        reply = yield msg
        return self.check_reply(msg, reply)

    # ------------------------------------------------------------------ steps
    def negotiate(self) -> Step:
        """GET_FEATURES, [GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM], SET_OWNER."""
        feats = yield from self._ask(self._req(R.GET_FEATURES))
        self.backend_features = feats.value  # type: ignore[union-attr]
        if self.backend_features & m.F_PROTOCOL_FEATURES and self.want_features & m.F_PROTOCOL_FEATURES:
            pf = yield from self._ask(self._req(R.GET_PROTOCOL_FEATURES))
            self.backend_protocol = pf.value  # type: ignore[union-attr]
            self.protocol = self.backend_protocol & self.want_protocol
            yield from self._ask(self._req(R.SET_PROTOCOL_FEATURES, m.U64(self.protocol)))
            if self.protocol & PF.MQ:
                qn = yield from self._ask(self._req(R.GET_QUEUE_NUM))
                self.queue_num = qn.value  # type: ignore[union-attr]
                if self.queue_num < self.queue_pairs:
                    raise RemoteProtocolError(
                        f"GET_QUEUE_NUM: backend supports {self.queue_num} queue pairs, we need {self.queue_pairs}",
                        request=R.GET_QUEUE_NUM)
        yield from self._ask(self._req(R.SET_OWNER))
        self.owned = True
        return self.backend_features

    def set_features(self) -> Step:
        if self.backend_features is None:
            raise LocalProtocolError("set_features before negotiate")
        acked = self.want_features & self.backend_features
        yield from self._ask(self._req(R.SET_FEATURES, m.U64(acked), ack=True))
        self.features = acked
        return acked

    def set_mem_table(self, regions: list[RegionSpec]) -> Step:
        if not self.owned:
            raise LocalProtocolError("set_mem_table before negotiate")
        table = m.MemoryTable(tuple(r.wire() for r in regions))
        yield from self._ask(self._req(R.SET_MEM_TABLE, table, tuple(r.fd for r in regions), ack=True))
        return None

    def _vring_fd(self, req: R, index: int, fd: int | None) -> Generator:
        fds = () if fd is None else (fd,)
        yield from self._ask(self._req(req, m.VringFd(index, fd is None), fds))

    def start_vring(self, v: VringSpec) -> Step:
        """NUM, BASE, ADDR, KICK, CALL [, ERR] for one vring (QEMU's order)."""
        yield from self._ask(self._req(R.SET_VRING_NUM, m.VringState(v.index, v.num)))
        yield from self._ask(self._req(R.SET_VRING_BASE, m.VringState(v.index, v.base)))
        yield from self._ask(self._req(R.SET_VRING_ADDR,
                                       m.VringAddr(v.index, 0, v.desc_uva, v.used_uva, v.avail_uva, 0)))
        yield from self._vring_fd(R.SET_VRING_KICK, v.index, v.kick_fd)
        yield from self._vring_fd(R.SET_VRING_CALL, v.index, v.call_fd)
        if v.err_fd is not None:
            yield from self._vring_fd(R.SET_VRING_ERR, v.index, v.err_fd)
        return None

    def enable_vring(self, index: int, enabled: bool = True) -> Step:
        if not (self.features or 0) & m.F_PROTOCOL_FEATURES:
            return None  # without PROTOCOL_FEATURES rings start enabled
        yield from self._ask(self._req(R.SET_VRING_ENABLE, m.VringState(index, int(enabled))))
        return None

    def start(self, regions: list[RegionSpec], vrings: list[VringSpec]) -> Step:
        """DRIVER_OK time: features, memory table, every vring, then enable them."""
        yield from self.set_features()
        yield from self.set_mem_table(regions)
        for v in vrings:
            yield from self.start_vring(v)
        for v in vrings:
            yield from self.enable_vring(v.index)
        return None

    def stop_vring(self, index: int) -> Step:
        """GET_VRING_BASE: stops the ring at the backend; returns its next avail index."""
        st = yield from self._ask(self._req(R.GET_VRING_BASE, m.VringState(index, 0)))
        if st.index != index:  # type: ignore[union-attr]
            raise RemoteProtocolError(f"GET_VRING_BASE: reply for vring {st.index}, asked {index}",  # type: ignore[union-attr]
                                      request=R.GET_VRING_BASE)
        return st.num  # type: ignore[union-attr]

    def get_config(self, offset: int, size: int) -> Step:
        c = yield from self._ask(self._req(R.GET_CONFIG, m.Config(offset, size, 0, bytes(size))))
        if c.size != size or c.offset != offset:  # type: ignore[union-attr]
            raise RemoteProtocolError("GET_CONFIG: reply does not match the request", request=R.GET_CONFIG)
        return c.payload  # type: ignore[union-attr]


def run(step: Step, exchange: Callable[[m.Message], m.Message | None]) -> object:
    """Drive a step: ``exchange(msg)`` sends a request and returns its reply (or None when
    ``messages.expects_reply(msg)`` is false). Returns the step's result."""
    try:
        msg = next(step)
        while True:
            msg = step.send(exchange(msg))
    except StopIteration as stop:
        return stop.value
