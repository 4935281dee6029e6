"""The guest driver: a vhost-user frontend (like DPDK's virtio-user) and its datapath.

One ``GuestDriver`` owns one virtio-net device on the other end of a vhost-user socket.
It connects (client mode, retrying) or listens (``server=True``, the backend connects),
negotiates features (``WANTED`` ∩ offered, dependencies closed by
``virtio.features.negotiate``), reads the MAC from the config space when the backend
offers the CONFIG protocol feature (else keeps ours), lays out fresh memory and rings
(``rings.GuestRings``) and hands them over with ``vhost_user.frontend`` (every request
asks for a REPLY_ACK, so a refused step fails here and not silently later).

The datapath is a bridge between the device and a port (a ``netdev.Tap``), one compiled
call per batch and never a Python loop per frame:

- port readable → ``read_batch`` (at most as many frames as the tx ring has free
  buffers: backpressure instead of drops) → ``DriverRing.post_tx`` → kick the tx vring
  only when the ring says the device wants one (EVENT_IDX / NO_NOTIFY);
- rx call eventfd readable → drain it → ``reap_rx`` → ``rx_program`` (the hook where a
  guest-native XDP program will run) → ``write_batch`` → ``refill`` → kick if needed;
- tx call eventfd → ``reap_tx`` (and resume reading the port if it was paused).

Notification races: after the last reap we have asked for the next interrupt, but a
device can publish between our read of the used index and our store of used_event.
Rather than a full fence dance in Python, ``tick()`` (every ~100 ms from the loop)
polls both rings, so a lost notification costs at most one tick.

Reconnect: the backend closing the socket, or breaking a ring (``VirtqueueError``), drops
the whole session (socket, memory, rings, eventfds) and the driver connects again with
a bounded backoff (0.1 s doubling to ``retry_max``), or waits for the next connection in
server mode; restarting the backend therefore needs no restart of the guest.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from vxdp.eventloop import Loop
from vxdp.frames import FrameBatch
from vxdp.sockpath import PathBusy, SocketClaim
from vxdp.vhost_user import transport
from vxdp.vhost_user.connection import Connection, Role
from vxdp.vhost_user.errors import LocalProtocolError, RemoteProtocolError
from vxdp.vhost_user.frontend import FrontendSession, run
from vxdp.vhost_user.messages import ProtocolFeature as PF
from vxdp.virtio import features as vf
from vxdp.virtio.ctrl_framing import Ack, CtrlClass, CtrlRequest, RxCmd
from vxdp.virtio.features import Experimental, Feature
from vxdp.virtio.net import NetConfig, NetError, mac_str
from vxdp.virtio.virtqueue import VirtqueueError, check_queue_size

from .ctrl_client import TIMEOUT_S as CTRL_TIMEOUT_S
from .ctrl_client import CtrlClient, CtrlClientError
from .rings import CTRL, RX, TX, GuestRings, GuestSetupError, buffer_size

log = logging.getLogger(__name__)

WANTED = Feature.mask(Feature.VERSION_1, Feature.NET_MAC, Feature.NET_MTU, Feature.NET_STATUS,
                      Feature.NET_CTRL_VQ, Feature.NET_CTRL_RX, Feature.NET_MRG_RXBUF,
                      Feature.RING_EVENT_IDX, Feature.PROTOCOL_FEATURES) | Experimental.NET_BPF_OFFLOAD.bit
WANTED_PROTOCOL = PF.MQ | PF.REPLY_ACK | PF.CONFIG
MAX_ROUNDS = 8  # batches per event before yielding to the other fds
BATCH = 256
TICK_S = 0.1  # ring poll / reconnect period
WAITING_LOG_S = 30.0  # while no backend answers, a warning this often


class GuestDriverError(Exception):
    """The driver could not be set up, or was used while not connected."""


@dataclass
class Counters:
    rx_frames: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0  # bad frames from the device, or the port refusing them
    tx_frames: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0  # frames too big for a tx buffer
    tx_kicks: int = 0
    rx_kicks: int = 0
    connects: int = 0
    disconnects: int = 0


def default_mac(seed: str) -> bytes:
    """A locally administered unicast MAC derived from ``seed`` (stable across restarts)."""
    import hashlib

    h = hashlib.sha256(seed.encode()).digest()
    return bytes([0x02, 0x56, 0x58]) + h[:3]  # 02:56:58 = locally administered, "VX"


QUEUE_SIZE = 1024  # rx/tx ring size; why not 256: see GuestDriver


class GuestDriver:
    """A virtio-net driver over vhost-user: connect, negotiate, bridge frames to a port.

    Rings of 1024 by default, not 256 (QEMU's and DPDK's default): an event-driven
    backend with a 256-entry rx ring filled it in one batch, then both sides took turns
    waking each other (rx_kicks = frames / 256, both daemons ~80 % idle) and port → guest
    ran at 0.63 Mpps with 64-byte frames; with 1024 the backend fills one part while the
    driver reaps another: 1.0-1.3 Mpps here (docs/benchmarks.md).
    """

    def __init__(self, socket_path: str, *, mem_mb: int = 64, queue_size: int = QUEUE_SIZE, mac: bytes | None = None,
                 server: bool = False, mtu: int = 1500, handshake_timeout: float = 10.0,
                 retry_max: float = 1.0) -> None:
        if mem_mb < 4 or mem_mb > 4096:
            raise GuestDriverError(f"guest memory of {mem_mb} MiB is outside 4..4096")
        try:
            check_queue_size(queue_size)
        except VirtqueueError as e:
            raise GuestDriverError(str(e)) from None
        self.socket_path = socket_path
        self.mem_bytes = mem_mb << 20
        self.queue_size = queue_size
        self.own_mac = mac
        self.mac: bytes = mac or default_mac(socket_path)
        self.server = server
        self.mtu = mtu
        self.buf_size = buffer_size(mtu)
        self.handshake_timeout = handshake_timeout
        self.retry_max = retry_max
        self.counters = Counters()
        self.rx_program: Callable[[FrameBatch], None] | None = None  # guest-native XDP goes here (later)
        self.on_connect: Callable[[GuestDriver], None] | None = None
        self.on_disconnect: Callable[[GuestDriver], None] | None = None  # the device forgot its state
        self.rings: GuestRings | None = None
        self.channel: transport.Channel | None = None
        self.ctrl: CtrlClient | None = None
        self.session: FrontendSession | None = None
        self.features = 0
        self.config: NetConfig | None = None
        self.last_error: str | None = None
        self.loop: Loop | None = None
        self.port = None  # a Tap (read_batch/write_batch/fileno), or None: frames are counted and dropped
        self.rx_discard = False  # benchmark hook: count received frames, never hand them to the port
        self._rxb = FrameBatch.allocate(BATCH, self.buf_size)
        self._txb = FrameBatch.allocate(BATCH, self.buf_size)
        self._port_paused = False
        self._listener: socket.socket | None = None
        self._claim: SocketClaim | None = None
        self._next_waiting_log = 0.0
        if server:  # claimed now, bound when the loop runs: a second driver on the path is refused at once
            try:
                self._claim = SocketClaim.take(socket_path)
            except OSError as e:
                why = e.strerror if isinstance(e, PathBusy) else f"{socket_path}: {e.strerror or e}"
                raise GuestDriverError(f"vhost-user socket {why}") from None
        self._retry = 0.1
        self._next_attempt = 0.0
        self._last_tick = 0.0

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        return self.rings is not None

    def attach(self, loop: Loop, port=None) -> None:
        """Serve from ``loop``: frames between the device and ``port`` (a Tap), reconnects on ``tick``."""
        self.loop, self.port = loop, port
        if self.server and self._listener is None:
            self.listen()
        if self.connected:
            self._register()

    # ------------------------------------------------------------------ connecting
    def listen(self) -> None:
        """Server mode: listen on the socket path; the backend connects to us."""
        self._listener, self._claim = transport.listen(self._claim or self.socket_path)
        self._listener.setblocking(False)
        if self.loop is not None and not self.connected:
            self.loop.add_reader(self._listener.fileno(), self._on_accept)

    def connect(self, timeout: float = 10.0) -> None:
        """Client mode, blocking: connect (retrying while the backend is not up) and set the device up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._connect_once()
                return
            except (ConnectionError, OSError) as e:
                if time.monotonic() > deadline:
                    raise GuestDriverError(f"vhost-user {self.socket_path}: {e}") from None
                time.sleep(0.1)

    def accept(self, timeout: float = 10.0) -> None:
        """Server mode, blocking: wait for the backend's connection and set the device up."""
        if self._listener is None:
            self.listen()
        self._listener.settimeout(timeout)
        try:
            sock, _ = self._listener.accept()
        except TimeoutError:
            raise GuestDriverError(f"no backend connected to {self.socket_path} within {timeout:g} s") from None
        finally:
            self._listener.setblocking(False)
        self._handshake(sock)

    def _connect_once(self) -> None:
        sock = transport.connect(self.socket_path)
        self._handshake(sock)

    def _handshake(self, sock: socket.socket) -> None:
        sock.settimeout(self.handshake_timeout)
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
            mrg = vf.has(acked, Feature.NET_MRG_RXBUF)
            rings = GuestRings(mem_bytes=self.mem_bytes, queue_size=self.queue_size, buf_size=self.buf_size,
                               event_idx=vf.has(acked, Feature.RING_EVENT_IDX), mrg=mrg,
                               ctrl=vf.has(acked, Feature.NET_CTRL_VQ))
            run(fe.start([rings.region()], rings.vring_specs()), ch.exchange)
        except (ConnectionError, OSError, RemoteProtocolError, LocalProtocolError, vf.FeatureError,
                NetError, GuestSetupError, VirtqueueError) as e:
            if rings is not None:
                rings.close()
            ch.close()
            raise ConnectionError(f"vhost-user setup with {self.socket_path} failed: {e}") from e
        self.session, self.channel, self.rings, self.features, self.config = fe, ch, rings, fe.features, config
        if config is not None:
            self.mac = config.mac
        self.ctrl = CtrlClient(rings) if CTRL in rings.queues else None
        self.counters.connects += 1
        self._port_paused = False
        self._retry = 0.1
        for index in (RX, TX):  # a device that waits for notifications learns of the full rx ring
            rings.kick(index)
        # said as loudly as the "no backend yet" warnings were, so that whoever read those reads this too
        log.log(logging.WARNING if self._next_waiting_log else logging.INFO, "connected to %s: features %s, mac %s",
                self.socket_path, vf.names(self.features), mac_str(self.mac))
        if self._listener is not None and self.loop is not None:
            self.loop.remove_reader(self._listener.fileno())
        if self.loop is not None:
            self._register()
        if self.on_connect is not None:
            self.on_connect(self)

    def _register(self) -> None:
        loop, rings = self.loop, self.rings
        loop.add_reader(rings.fds[RX].call, self._on_rx_call)
        loop.add_reader(rings.fds[TX].call, self._on_tx_call)
        loop.add_reader(self.channel.sock.fileno(), self._on_socket)
        if self.port is not None:
            loop.add_reader(self.port.fileno(), self._on_port)

    def disconnect(self, reason: str) -> None:
        """Drop the session (memory, rings, socket); the next ``tick`` or connection sets up a new one."""
        if not self.connected:
            return
        log.warning("vhost-user %s: %s; resetting the device", self.socket_path, reason)
        self.last_error = reason
        rings, ch = self.rings, self.channel
        if self.loop is not None:
            for fd in (rings.fds[RX].call, rings.fds[TX].call, ch.sock.fileno()):
                self.loop.remove_reader(fd)
            if self.port is not None:
                self.loop.remove_reader(self.port.fileno())
            if self._listener is not None:
                self.loop.add_reader(self._listener.fileno(), self._on_accept)
        self.rings = self.channel = self.ctrl = self.session = None
        ch.close()
        rings.close()
        self.counters.disconnects += 1
        self._next_attempt = time.monotonic() + self._retry
        if self.on_disconnect is not None:
            self.on_disconnect(self)

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

    # ------------------------------------------------------------------ event handlers
    def _on_accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            self._handshake(sock)
        except ConnectionError as e:
            self.last_error = str(e)
            log.warning("%s", e)

    def _on_socket(self) -> None:
        """The backend sends nothing unasked on this socket: readable means it went away."""
        try:
            data = self.channel.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as e:
            self.disconnect(f"socket error: {e.strerror or e}")
            return
        if not data:
            self.disconnect("backend closed the connection")
            return
        try:
            msg = self.channel.recv()
            log.warning("ignoring unsolicited vhost-user message %s", msg.request)
        except (ConnectionError, RemoteProtocolError, OSError) as e:
            self.disconnect(f"backend sent garbage: {e}")

    def _on_rx_call(self) -> None:
        self.rings.drain_call(RX)
        self._guarded(self.poll_rx)

    def _on_tx_call(self) -> None:
        self.rings.drain_call(TX)
        self._guarded(self._reap_tx)

    def _on_port(self) -> None:
        self._guarded(self._port_to_device)

    def _guarded(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except VirtqueueError as e:
            self.disconnect(f"device broke a ring: {e}")

    def tick(self) -> None:
        """Periodic: poll the rings (lost notifications) or reconnect with backoff.

        The loop may call this after every round of events; it acts at most every ``TICK_S``.
        """
        now = time.monotonic()
        if now - self._last_tick < TICK_S:
            return
        self._last_tick = now
        if self.connected:
            self._guarded(self.poll_rx)
            if self.connected:
                self._guarded(self._reap_tx)
            return
        if self.server or time.monotonic() < self._next_attempt:
            return
        try:
            self._connect_once()
        except (ConnectionError, OSError) as e:
            self.last_error = str(e)
            self._retry = min(self._retry * 2, self.retry_max)
            self._next_attempt = time.monotonic() + self._retry
            if now >= self._next_waiting_log:  # said at once, then every WAITING_LOG_S: never silent
                log.warning("no backend on %s yet (%s); retrying every %g s", self.socket_path, e, self.retry_max)
                self._next_waiting_log = now + WAITING_LOG_S
        else:
            self._next_waiting_log = 0.0

    # ------------------------------------------------------------------ datapath
    def poll_rx(self) -> int:
        """Reap received frames (bounded rounds), run ``rx_program``, hand them to the port, refill."""
        rings, b, c = self.rings, self._rxb, self.counters
        total = 0
        for _ in range(MAX_ROUNDS):
            n, bad = rings.rx.reap_rx(b.data, b.lens)
            c.rx_dropped += bad
            b.count = n
            if n:
                c.rx_frames += n
                c.rx_bytes += int(b.lens[:n].sum())
                total += n
                if self.rx_program is not None:
                    self.rx_program(b)
                if self.port is not None and b.count and not self.rx_discard:
                    c.rx_dropped += b.count - self.port.write_batch(b)
            posted, kick = rings.rx.refill()
            if kick:
                rings.kick(RX)
                c.rx_kicks += 1
            if n < b.capacity and not (posted and self._rx_pending()):
                return total
        os.eventfd_write(rings.fds[RX].call, 1)  # more may be waiting: come back after the other fds
        return total

    def _rx_pending(self) -> bool:
        """Did the device publish more while we reaped? (re-check after asking for the next interrupt)

        ``reap_rx`` stores used_event = the index it stopped at; a device that published past it
        before that store was visible saw the old used_event and sent no interrupt, and never will
        for these entries. A device that fills the ring in microseconds (testpmd) hits that window
        nearly every time, leaving us to the 100 ms tick (~6 kpps measured). ``refill`` publishing
        buffers runs a full fence after that store, so this read of the used index is ordered
        after it (the virtio spec's "enable notifications, then re-check").
        """
        dq = self.rings.queues[RX]
        return int.from_bytes(self.rings.mem.read(dq.used_gpa + 2, 2), "little") != dq.last_used_idx

    def _reap_tx(self) -> None:
        rings = self.rings
        rings.tx.reap_tx()
        if self._port_paused and rings.queues[TX].nfree > 0 and self.loop is not None:
            self._port_paused = False
            self.loop.add_reader(self.port.fileno(), self._on_port)

    def send(self, batch: FrameBatch) -> int:
        """Post ``batch``'s frames on the tx vring (kicking if needed); returns how many were taken."""
        if not self.connected:
            raise GuestDriverError("not connected to a backend")
        self.rings.tx.reap_tx()
        return self._post(batch.data, batch.lens, batch.count)

    def _post(self, data, lens, n: int) -> int:
        rings, c = self.rings, self.counters
        consumed, posted, kick = rings.tx.post_tx(data, lens, n)
        if kick:
            rings.kick(TX)
            c.tx_kicks += 1
        c.tx_frames += posted
        sent = lens[:consumed]
        c.tx_bytes += int(sent.sum()) if posted == consumed else int(sent[sent <= self.buf_size - 12].sum())
        c.tx_dropped += consumed - posted
        return consumed

    def _port_to_device(self) -> None:
        rings, b = self.rings, self._txb
        for _ in range(MAX_ROUNDS):
            rings.tx.reap_tx()
            free = rings.queues[TX].nfree
            if free == 0:
                if self.loop is not None:  # wait for tx completions instead of spinning on the port
                    self._port_paused = True
                    self.loop.remove_reader(self.port.fileno())
                return
            k = min(free, b.capacity)
            sub = FrameBatch(b.data[:k], b.lens[:k])
            n = self.port.read_batch(sub)
            if n == 0:
                return
            self._post(sub.data, sub.lens, n)
            if n < k:
                return

    # ------------------------------------------------------------------ benchmark hook
    def bench_tx(self, frame: bytes, count: int, seconds: float) -> dict:
        """Benchmark hook (``vxdp bench datapath``), not a datapath path: post ``count`` copies of
        ``frame`` on the tx vring as fast as the device frees buffers, for at most ``seconds``.

        Why a hook: a generator writing into the tap would measure the tap, not the driver. The
        event loop is blocked meanwhile (the caller asked for a timed burst); completions are
        reaped here, waiting at most 1 ms on the tx call eventfd when the ring is full.
        """
        import select

        if not self.connected:
            raise GuestDriverError("not connected to a backend")
        if not 14 <= len(frame) <= self.buf_size - 12 or count <= 0 or not 0 < seconds <= 60:
            raise GuestDriverError(f"bench_tx: frame of {len(frame)} bytes, count {count}, {seconds} s: "
                                   f"want 14..{self.buf_size - 12} bytes, count > 0, 0 < seconds <= 60")
        b = FrameBatch.allocate(BATCH, max(64, len(frame)))
        b.fill([frame] * BATCH)
        rings = self.rings
        call = rings.fds[TX].call
        sent = 0
        start = time.perf_counter()
        deadline = start + seconds
        while sent < count and time.perf_counter() < deadline:
            rings.tx.reap_tx()
            k = min(rings.queues[TX].nfree, BATCH, count - sent)
            if k:
                sent += self._post(b.data, b.lens, k)
            elif select.select([call], [], [], 0.001)[0]:
                rings.drain_call(TX)
        elapsed = time.perf_counter() - start
        return {"frames": sent, "seconds": elapsed}

    # ------------------------------------------------------------------ control queue
    def ctrl_command(self, cls: int, cmd: int, data: bytes = b"", reply_capacity: int = 0,
                     timeout: float = CTRL_TIMEOUT_S) -> tuple[Ack, bytes]:
        if not self.connected:
            raise GuestDriverError("not connected to a backend")
        if self.ctrl is None:
            raise CtrlClientError("the backend did not offer a control virtqueue (CTRL_VQ)")
        try:
            reply = self.ctrl.command(CtrlRequest(cls, cmd, bytes(data)), 1 + reply_capacity, timeout)
            return reply.ack, reply.result
        except VirtqueueError as e:
            self.disconnect(f"device broke the ctrl ring: {e}")
            raise CtrlClientError(f"device broke the ctrl ring: {e}") from None

    def set_promisc(self, on: bool, timeout: float = CTRL_TIMEOUT_S) -> Ack:
        """VIRTIO_NET_CTRL_RX_PROMISC (needs CTRL_RX): the smoke test of the ctrl queue."""
        if not vf.has(self.features, Feature.NET_CTRL_RX):
            raise CtrlClientError("the backend did not offer CTRL_RX")
        return self.ctrl_command(CtrlClass.RX, RxCmd.PROMISC, bytes([int(on)]), 0, timeout)[0]

    # ------------------------------------------------------------------ introspection
    def show(self) -> dict:
        doc = {
            "socket": self.socket_path,
            "mode": "server" if self.server else "client",
            "connected": self.connected,
            "mac": mac_str(self.mac),
            "mtu": self.mtu,
            "features": vf.names(self.features) if self.connected else [],
            "backend_features": vf.names(self.session.backend_features or 0) if self.session else [],
            "protocol_features": int(self.session.protocol) if self.session else 0,
            "ctrl_vq": self.ctrl is not None,
            "offload": self.connected and vf.has(self.features, Experimental.NET_BPF_OFFLOAD),
            "rings": self.rings.describe() if self.rings else [],
            "counters": asdict(self.counters),
            "last_error": self.last_error,
        }
        if self.port is not None and hasattr(self.port, "name"):
            doc["port"] = self.port.name
        return doc
