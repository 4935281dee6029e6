"""The guest driver: a vhost-user frontend (like DPDK's virtio-user) bridged to a port.

One `GuestDriver` owns one virtio-net device on the other end of a vhost-user socket. It
is a `Connector` (the connection and each session it sets up) and a `GuestDatapath` (the
frames) put together, plus what belongs to the device as a whole: its MAC (the config
space's when the backend reports one, else ours, kept across sessions), the control
queue (a `CtrlClient` per session, ``ctrl``), the periodic tick, and what ``vxdp guest
show`` reports.

A ring the device breaks, in the datapath or on the ctrl queue, ends the session like a
backend going away: everything of it is dropped and a new one is set up.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict

from vxdp.eventloop import Loop
from vxdp.frames import FrameBatch
from vxdp.sockpath import PathBusy
from vxdp.vhost_user import transport
from vxdp.vhost_user.frontend import FrontendSession
from vxdp.virtio import features as vf
from vxdp.virtio.ctrl_framing import Ack, CtrlClass, CtrlRequest, RxCmd
from vxdp.virtio.features import Experimental, Feature
from vxdp.virtio.net import NetConfig, mac_str
from vxdp.virtio.virtqueue import VirtqueueError, check_queue_size

from .ctrl_client import TIMEOUT_S as CTRL_TIMEOUT_S
from .ctrl_client import CtrlClient, CtrlClientError
from .datapath import GuestDatapath
from .rings import CTRL, GuestRings, buffer_size
from .session import Connector, Session, SessionSpec

log = logging.getLogger(__name__)

TICK_S = 0.1  # ring poll / reconnect period
QUEUE_SIZE = 1024  # rx/tx ring size; why not 256: see GuestDriver


class GuestDriverError(Exception):
    """The driver could not be set up, or was used while not connected."""


def default_mac(seed: str) -> bytes:
    """A locally administered unicast MAC derived from ``seed`` (stable across restarts)."""
    h = hashlib.sha256(seed.encode()).digest()
    return bytes([0x02, 0x56, 0x58]) + h[:3]  # 02:56:58 = locally administered, "VX"


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
        self.queue_size = queue_size
        self.mac: bytes = mac or default_mac(socket_path)
        self.mtu = mtu
        self.buf_size = buffer_size(mtu)
        self.ctrl: CtrlClient | None = None
        self.on_connect: Callable[[GuestDriver], None] | None = None
        self.on_disconnect: Callable[[GuestDriver], None] | None = None  # the device forgot its state
        self.port = None
        self.datapath = GuestDatapath(self.buf_size, on_broken=self.disconnect)
        spec = SessionSpec(mem_bytes=mem_mb << 20, queue_size=queue_size, buf_size=self.buf_size,
                           handshake_timeout=handshake_timeout)
        try:
            self.link = Connector(socket_path, spec, server=server, retry_max=retry_max,
                                  on_up=self._on_up, on_down=self._on_down)
        except OSError as e:  # server mode: the path is another driver's, or cannot be claimed
            why = e.strerror if isinstance(e, PathBusy) else f"{socket_path}: {e.strerror or e}"
            raise GuestDriverError(f"vhost-user socket {why}") from None

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        return self.link.current is not None

    @property
    def server(self) -> bool:
        return self.link.server

    @property
    def rings(self) -> GuestRings | None:
        return self.link.current.rings if self.link.current else None

    @property
    def channel(self) -> transport.Channel | None:
        return self.link.current.channel if self.link.current else None

    @property
    def session(self) -> FrontendSession | None:
        """The vhost-user protocol state of the current connection."""
        return self.link.current.frontend if self.link.current else None

    @property
    def features(self) -> int:
        return self.link.current.features if self.link.current else 0

    @property
    def config(self) -> NetConfig | None:
        return self.link.current.config if self.link.current else None

    @property
    def last_error(self) -> str | None:
        return self.link.last_error

    @property
    def rx_program(self) -> Callable[[FrameBatch], None] | None:
        """The hook every received batch goes through before the port (guest-native XDP: `XdpHook`)."""
        return self.datapath.rx_program

    @rx_program.setter
    def rx_program(self, hook: Callable[[FrameBatch], None] | None) -> None:
        self.datapath.rx_program = hook

    def attach(self, loop: Loop, port=None) -> None:
        """Serve from ``loop``: frames between the device and ``port`` (a Tap), reconnects on ``tick``."""
        self.port = port
        self.link.attach(loop)
        self.datapath.attach(loop, port)

    # ------------------------------------------------------------------ sessions
    def listen(self) -> None:
        """Server mode: listen on the socket path; the backend connects to us."""
        self.link.listen()

    def connect(self, timeout: float = 10.0) -> None:
        """Client mode, blocking: connect (retrying while the backend is not up) and set the device up."""
        try:
            self.link.connect(timeout)
        except ConnectionError as e:
            raise GuestDriverError(str(e)) from None

    def accept(self, timeout: float = 10.0) -> None:
        """Server mode, blocking: wait for the backend's connection and set the device up."""
        try:
            self.link.accept(timeout)
        except TimeoutError as e:
            raise GuestDriverError(str(e)) from None

    def _on_up(self, session: Session) -> None:
        if session.config is not None:
            self.mac = session.config.mac
        self.ctrl = CtrlClient(session.rings) if CTRL in session.rings.queues else None
        self.datapath.start(session.rings)
        # said as loudly as the "no backend yet" warnings were, so that whoever read those reads this too
        log.log(logging.WARNING if self.link.waited else logging.INFO, "connected to %s: features %s, mac %s",
                self.socket_path, vf.names(session.features), mac_str(self.mac))
        if self.on_connect is not None:
            self.on_connect(self)

    def _on_down(self, session: Session) -> None:
        self.datapath.stop()
        self.ctrl = None
        if self.on_disconnect is not None:
            self.on_disconnect(self)

    def disconnect(self, reason: str) -> None:
        """Drop the session (memory, rings, socket); the next ``tick`` or connection sets up a new one."""
        self.link.disconnect(reason)

    def close(self) -> None:
        self.link.close()

    def tick(self) -> None:
        """Periodic (the daemon's loop calls it once every ``TICK_S``): poll the rings for a lost
        notification, or reconnect with backoff."""
        if self.connected:
            self.datapath.poll()
        else:
            self.link.retry()

    # ------------------------------------------------------------------ datapath
    def send(self, batch: FrameBatch) -> int:
        """Post ``batch``'s frames on the tx vring (kicking if needed); returns how many were taken."""
        if not self.connected:
            raise GuestDriverError("not connected to a backend")
        return self.datapath.send(batch)

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
        session = self.session
        doc = {
            "socket": self.socket_path,
            "mode": "server" if self.server else "client",
            "connected": self.connected,
            "mac": mac_str(self.mac),
            "mtu": self.mtu,
            "features": vf.names(self.features) if self.connected else [],
            "backend_features": vf.names(session.backend_features or 0) if session else [],
            "protocol_features": int(session.protocol) if session else 0,
            "ctrl_vq": self.ctrl is not None,
            "offload": self.connected and vf.has(self.features, Experimental.NET_BPF_OFFLOAD),
            "rings": self.rings.describe() if self.rings else [],
            "counters": {**asdict(self.datapath.counters), "connects": self.link.connects,
                         "disconnects": self.link.disconnects},
            "last_error": self.last_error,
        }
        if self.port is not None and hasattr(self.port, "name"):
            doc["port"] = self.port.name
        return doc
