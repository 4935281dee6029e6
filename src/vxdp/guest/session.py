"""The guest's vhost-user connection: connect or accept, the handshake, and reconnecting.

`handshake` turns one connected socket into a `Session`: it negotiates features
(``WANTED`` ∩ offered, dependencies closed by ``virtio.features.negotiate``), reads the
config space when the backend offers the CONFIG protocol feature and the device has a
MAC, lays out fresh memory and rings (`GuestRings`) and hands them over with
``vhost_user.frontend``. Every request asks for a REPLY_ACK, so a refused step fails
here and not silently later.

A `Session` lives exactly as long as its connection: when the backend closes the
socket or sends garbage, or the session's user ends it (`Connector.disconnect`, e.g. for
a ring the device broke), the whole session goes (socket, memory, rings, eventfds), so
nothing of a dead session can leak into the next one.

`Connector` keeps one session up. Client mode connects, blocking (`connect`) or one
attempt per `retry` with a bounded backoff (0.1 s doubling to ``retry_max``, a warning
at once and then every ``WAITING_LOG_S`` while no backend answers); server mode listens
and accepts. Restarting the backend therefore needs no restart of the guest. The
backend sends nothing unasked on the socket, so the socket turning readable means it
went away (or, rarely, an unsolicited message, logged and ignored).

Errors are the standard ones (``ConnectionError``, ``TimeoutError``, ``OSError``): the
caller phrases them for its own users.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from vxdp.eventloop import Loop
from vxdp.sockpath import SocketClaim
from vxdp.vhost_user import transport
from vxdp.vhost_user.connection import Connection, Role
from vxdp.vhost_user.errors import LocalProtocolError, RemoteProtocolError
from vxdp.vhost_user.frontend import FrontendSession, run
from vxdp.vhost_user.messages import ProtocolFeature as PF
from vxdp.virtio import features as vf
from vxdp.virtio.features import Experimental, Feature
from vxdp.virtio.net import NetConfig, NetError
from vxdp.virtio.virtqueue import VirtqueueError

from .rings import GuestRings, GuestSetupError

log = logging.getLogger(__name__)

WANTED = Feature.mask(Feature.VERSION_1, Feature.NET_MAC, Feature.NET_MTU, Feature.NET_STATUS,
                      Feature.NET_CTRL_VQ, Feature.NET_CTRL_RX, Feature.NET_MRG_RXBUF,
                      Feature.RING_EVENT_IDX, Feature.PROTOCOL_FEATURES) | Experimental.NET_BPF_OFFLOAD.bit
WANTED_PROTOCOL = PF.MQ | PF.REPLY_ACK | PF.CONFIG
WAITING_LOG_S = 30.0  # while no backend answers, a warning this often
RETRY_MIN_S = 0.1


@dataclass(frozen=True)
class SessionSpec:
    """What every session of one driver is set up with."""

    mem_bytes: int
    queue_size: int
    buf_size: int
    handshake_timeout: float = 10.0


@dataclass
class Session:
    """What one connection set up: the protocol state, the socket, the rings, the config space read."""

    frontend: FrontendSession
    channel: transport.Channel
    rings: GuestRings
    config: NetConfig | None

    @property
    def features(self) -> int:
        return self.frontend.features

    def close(self) -> None:
        self.channel.close()
        self.rings.close()


def handshake(sock: socket.socket, spec: SessionSpec, what: str) -> Session:
    """Set the device up over ``sock`` (ours from now on: closed on failure); ``ConnectionError`` if
    any step fails, naming ``what`` (the socket path)."""
    sock.settimeout(spec.handshake_timeout)
    ch = transport.Channel(sock, Connection(Role.FRONTEND))
    rings = None
    try:
        fe = FrontendSession(WANTED, want_protocol=WANTED_PROTOCOL, ack_all=True)
        offered = run(fe.negotiate(), ch.exchange)
        acked = vf.negotiate(offered, WANTED, required=Feature.VERSION_1.bit)
        fe.want_features = acked
        config = None
        if fe.protocol & PF.CONFIG and vf.has(acked, Feature.NET_MAC):
            config = NetConfig.decode(run(fe.get_config(0, 12), ch.exchange))
        rings = GuestRings(mem_bytes=spec.mem_bytes, queue_size=spec.queue_size, buf_size=spec.buf_size,
                           event_idx=vf.has(acked, Feature.RING_EVENT_IDX), mrg=vf.has(acked, Feature.NET_MRG_RXBUF),
                           ctrl=vf.has(acked, Feature.NET_CTRL_VQ))
        run(fe.start([rings.region()], rings.vring_specs()), ch.exchange)
    except (ConnectionError, OSError, RemoteProtocolError, LocalProtocolError, vf.FeatureError,
            NetError, GuestSetupError, VirtqueueError) as e:
        if rings is not None:
            rings.close()
        ch.close()
        raise ConnectionError(f"vhost-user setup with {what} failed: {e}") from e
    return Session(fe, ch, rings, config)


class Connector:
    """One session at a time on ``socket_path``: connect (client) or accept (``server=True``), and again
    after each end. ``on_up(session)`` runs once a session is set up, ``on_down(session)`` before a
    session's fds are closed."""

    def __init__(self, socket_path: str, spec: SessionSpec, *, server: bool, retry_max: float,
                 on_up: Callable[[Session], None], on_down: Callable[[Session], None]) -> None:
        self.socket_path = socket_path
        self.spec = spec
        self.server = server
        self.retry_max = retry_max
        self.on_up, self.on_down = on_up, on_down
        self.current: Session | None = None
        self.connects = self.disconnects = 0
        self.last_error: str | None = None
        self.loop: Loop | None = None
        self._listener: socket.socket | None = None
        # server mode: claimed now, bound when served, so a second driver on the path is refused at once
        self._claim: SocketClaim | None = SocketClaim.take(socket_path) if server else None
        self._retry = RETRY_MIN_S
        self._next_attempt = 0.0
        self._next_waiting_log = 0.0

    @property
    def waited(self) -> bool:
        """Were "no backend yet" warnings said since the last session? (then its start is said as loudly)"""
        return self._next_waiting_log != 0.0

    def attach(self, loop: Loop) -> None:
        self.loop = loop
        if self.server and self._listener is None:
            self.listen()
        if self.current is not None:
            loop.add_reader(self.current.channel.sock.fileno(), self._on_socket)

    # -- client mode ------------------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> None:
        """Blocking: connect (retrying while the backend is not up) and set the device up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._open(transport.connect(self.socket_path))
                return
            except (ConnectionError, OSError) as e:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"vhost-user {self.socket_path}: {e}") from None
                time.sleep(0.1)

    def retry(self) -> None:
        """Not connected: one attempt if the backoff allows (client mode; server mode waits to accept)."""
        now = time.monotonic()
        if self.server or self.current is not None or now < self._next_attempt:
            return
        try:
            self._open(transport.connect(self.socket_path))
        except (ConnectionError, OSError) as e:
            self.last_error = str(e)
            self._retry = min(self._retry * 2, self.retry_max)
            self._next_attempt = time.monotonic() + self._retry
            if now >= self._next_waiting_log:  # said at once, then every WAITING_LOG_S: never silent
                log.warning("no backend on %s yet (%s); retrying every %g s", self.socket_path, e, self.retry_max)
                self._next_waiting_log = now + WAITING_LOG_S
        else:
            self._next_waiting_log = 0.0

    # -- server mode ------------------------------------------------------------------------
    def listen(self) -> None:
        """Listen on the socket path; the backend connects to us."""
        self._listener, self._claim = transport.listen(self._claim or self.socket_path)
        self._listener.setblocking(False)
        if self.loop is not None and self.current is None:
            self.loop.add_reader(self._listener.fileno(), self._on_accept)

    def accept(self, timeout: float = 10.0) -> None:
        """Blocking: wait for the backend's connection and set the device up."""
        if self._listener is None:
            self.listen()
        self._listener.settimeout(timeout)
        try:
            sock, _ = self._listener.accept()
        except TimeoutError:
            raise TimeoutError(f"no backend connected to {self.socket_path} within {timeout:g} s") from None
        finally:
            self._listener.setblocking(False)
        self._open(sock)

    def _on_accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            self._open(sock)
        except ConnectionError as e:
            self.last_error = str(e)
            log.warning("%s", e)

    # -- a session's life ---------------------------------------------------------------------
    def _open(self, sock: socket.socket) -> None:
        session = handshake(sock, self.spec, self.socket_path)
        self.current = session
        self.connects += 1
        self._retry = RETRY_MIN_S
        if self.loop is not None:
            if self._listener is not None:
                self.loop.remove_reader(self._listener.fileno())
            self.loop.add_reader(session.channel.sock.fileno(), self._on_socket)
        self.on_up(session)

    def _on_socket(self) -> None:
        ch = self.current.channel
        try:
            data = ch.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as e:
            self.disconnect(f"socket error: {e.strerror or e}")
            return
        if not data:
            self.disconnect("backend closed the connection")
            return
        try:
            msg = ch.recv()
            log.warning("ignoring unsolicited vhost-user message %s", msg.request)
        except (ConnectionError, RemoteProtocolError, OSError) as e:
            self.disconnect(f"backend sent garbage: {e}")

    def disconnect(self, reason: str) -> None:
        """End the session; the next `retry` or connection sets up a new one."""
        session = self.current
        if session is None:
            return
        log.warning("vhost-user %s: %s; resetting the device", self.socket_path, reason)
        self.last_error = reason
        if self.loop is not None:
            self.loop.remove_reader(session.channel.sock.fileno())
            if self._listener is not None:
                self.loop.add_reader(self._listener.fileno(), self._on_accept)
        self.current = None
        try:
            self.on_down(session)
        finally:
            session.close()
            self.disconnects += 1
            self._next_attempt = time.monotonic() + self._retry

    def close(self) -> None:
        self.disconnect("closing")
        if self._listener is not None:
            if self.loop is not None:
                self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if self._claim is not None:
            self._claim.release()
            self._claim = None
