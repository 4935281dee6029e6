"""The control virtqueue: pop chains, decode ``{class, command, data}``, answer through a table.

A chain's readable bytes become one `CtrlRequest` here and the handler's `CtrlReply` becomes
the bytes written back here, once each: a class handler (the BPF class's included) works on
the frames and never sees the bytes.

Only our own guest driver hands the ctrl vq to the backend (QEMU keeps it), and it is
rare and small, so this runs on the Python reference walker (`QueueState.pop_chain`),
never on the compiled kernels. Every chain gets an answer: the ack byte (and the
class's result) goes into the chain's writable part and the chain is returned to the
driver, whatever the request held.

Dispatch is a table keyed by class (`CtrlTable`): RX (promisc/allmulti/...) and MAC
(TABLE_SET/ADDR_SET) are accepted and acked OK (the port is a veth we do not filter);
ANNOUNCE ACK is acked; the BPF class has an entry that answers ERR until the offload
service plugs its handler in with `CtrlTable.register`; every other class, and any
malformed request (under two bytes, no writable byte for the ack, a handler that
raised, more than `MAX_REQUEST` readable bytes, which CAPS advertises), is answered
VIRTIO_NET_ERR and counted. A handler may answer `Deferred` (PROG_LOAD's verifier pass on a
worker thread): that chain and the ones after it wait, so chains still complete in order. A
hostile chain (outside memory, a loop) breaks the ring like any other: the caller turns the
`VirtqueueError` into NEEDS_RESET.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from vxdp.offload.wire import DEVICE_MAX_REQUEST
from vxdp.virtio.ctrl_framing import (
    Ack,
    CtrlClass,
    CtrlError,
    CtrlReply,
    CtrlRequest,
    MacCmd,
    RxCmd,
    class_name,
)
from vxdp.virtio.memory import GuestMemory, GuestMemoryError
from vxdp.virtio.virtqueue import QueueState, VirtqueueError

log = logging.getLogger("vxdp.host")


@dataclass
class Deferred:
    """A reply still being made off the loop (a PROG_LOAD's verifier pass): ``future`` gives the
    `CtrlReply`. The ring holds that chain and every later one until it is done: chains complete
    in order, and a later command may use what this one makes (a program's handle)."""

    future: Future


CtrlHandler = Callable[[CtrlRequest, int], "CtrlReply | Deferred"]
"""``(request, capacity) -> reply``: capacity is the chain's writable bytes, the ack included, so a
class with results (BPF) can size its reply to the room the driver gave it."""
MAX_REQUEST = DEVICE_MAX_REQUEST  # bytes of one request we gather (what CAPS.max_request says)

OK = CtrlReply(Ack.OK)
ERR = CtrlReply(Ack.ERR)


def _rx_class(req: CtrlRequest, capacity: int) -> CtrlReply:
    # PROMISC/ALLMULTI/... carry one u8 on/off; we accept any of them (no filtering on a veth port).
    if req.command in tuple(RxCmd) and len(req.data) == 1:
        return OK
    return ERR


def _mac_class(req: CtrlRequest, capacity: int) -> CtrlReply:
    if req.command == MacCmd.ADDR_SET:
        return OK if len(req.data) == 6 else ERR
    if req.command == MacCmd.TABLE_SET:
        return OK if len(req.data) >= 8 else ERR  # two u32-counted tables, possibly empty
    return ERR


def _announce_class(req: CtrlRequest, capacity: int) -> CtrlReply:
    return OK if req.command == 0 and not req.data else ERR


def _not_plugged(req: CtrlRequest, capacity: int) -> CtrlReply:
    return ERR  # the BPF offload service has not registered its handler


@dataclass
class CtrlStats:
    requests: int = 0
    ok: int = 0
    err: int = 0
    malformed: int = 0


@dataclass
class CtrlTable:
    """Class number -> handler. ``register(CtrlClass.BPF, handler)`` plugs in the offload service."""

    handlers: dict[int, CtrlHandler] = field(default_factory=lambda: {
        CtrlClass.RX: _rx_class,
        CtrlClass.MAC: _mac_class,
        CtrlClass.ANNOUNCE: _announce_class,
        CtrlClass.BPF: _not_plugged,
    })
    stats: CtrlStats = field(default_factory=CtrlStats)
    # the chain whose reply is `Deferred` (the ring waits for it), and how its end wakes the loop
    # (called on the worker thread: the datapath's eventfd write)
    pending: tuple[object, Deferred] | None = None
    wake: Callable[[], None] = field(default=lambda: None)

    def register(self, cls: int, handler: CtrlHandler) -> None:
        self.handlers[int(cls)] = handler

    def answer(self, raw: bytes, capacity: int) -> CtrlReply | Deferred:
        """One request's readable bytes (and the writable room) -> its reply; never raises."""
        self.stats.requests += 1
        try:
            req = CtrlRequest.decode(raw)
        except CtrlError as e:
            self.stats.malformed += 1
            log.warning("ctrl: malformed request: %s", e)
            return self._count(ERR)
        handler = self.handlers.get(req.cls)
        if handler is None:
            log.info("ctrl: %s command %d not supported", class_name(req.cls), req.command)
            return self._count(ERR)
        try:
            reply = handler(req, capacity)
            return reply if isinstance(reply, Deferred) else self._count(reply)
        except Exception as e:  # noqa: BLE001 - a handler's bug must not take the device down
            self.stats.malformed += 1
            log.warning("ctrl: %s command %d: handler failed: %s", class_name(req.cls), req.command, e)
            return self._count(ERR)

    def _count(self, reply: CtrlReply) -> CtrlReply:
        if reply.ok:
            self.stats.ok += 1
        else:
            self.stats.err += 1
        return reply


def serve_ctrl(state: QueueState, mem: GuestMemory, table: CtrlTable, max_chains: int | None = None) -> tuple[int, bool]:
    """Answer every pending ctrl chain (at most ``max_chains``, default the ring size).

    Returns ``(answered, notify)``. Raises `VirtqueueError` on a hostile ring (the
    caller marks the queue NEEDS_RESET).
    """
    limit = state.num if max_chains is None else max_chains
    answered = 0
    if table.pending is not None:
        chain, deferred = table.pending
        if not deferred.future.done():
            return 0, False  # the ring waits for it; its end wakes the loop
        table.pending = None
        try:
            reply = table._count(deferred.future.result())
        except Exception as e:  # noqa: BLE001 - the handler's worker never raises; belt and braces
            log.warning("ctrl: deferred command failed: %s", e)
            table.stats.malformed += 1
            reply = table._count(ERR)
        _complete(state, mem, chain, reply)
        answered += 1
    for _ in range(limit):
        chain = state.pop_chain(mem)
        if chain is None:
            # ask for the next kick (with EVENT_IDX: publish avail_event, or the driver
            # never kicks again and each command waits for the daemon's tick); a chain
            # that slipped in meanwhile is served now rather than after that kick
            if state.enable_notification(mem):
                continue
            break
        if chain.readable_len > MAX_REQUEST:
            reply = ERR
            table.stats.requests += 1
            table.stats.malformed += 1
            table._count(ERR)
        else:
            try:
                raw = chain.read_all(mem)
            except GuestMemoryError as e:  # the walker checked every segment; belt and braces
                raise VirtqueueError(f"ctrl chain: {e}") from None
            reply = table.answer(raw, chain.writable_len)
            if isinstance(reply, Deferred):
                table.pending = (chain, reply)
                reply.future.add_done_callback(lambda _f: table.wake())
                break
        _complete(state, mem, chain, reply)
        answered += 1
    notify = state.needs_notification(mem) if answered else False
    return answered, notify


def _complete(state: QueueState, mem: GuestMemory, chain, reply: CtrlReply) -> None:
    """Write ``reply`` into the chain's writable part and return the chain to the driver."""
    out = reply.encode(chain.writable_len)
    written = chain.write_all(mem, out) if out else 0
    if chain.writable_len == 0:
        log.warning("ctrl: chain %d has no writable byte for the ack", chain.head)
    state.push_used(mem, chain.head, written)
