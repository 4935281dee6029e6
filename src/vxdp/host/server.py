"""The backend daemon: one device, its port, its vhost-user socket and its control socket.

``vxdp host serve`` runs a `HostDaemon` until SIGTERM/SIGINT. Everything runs on one
`vxdp.eventloop.Loop` thread: the vhost-user socket (a listening socket in server
mode; in client mode a connection we open and re-open), the frontend's messages, the
port, the vrings' kick eventfds and the control socket.

Lifetimes, and why:

- One frontend at a time: a device has one driver. A second connection while one is
  active is accepted and closed at once, with a log line (the frontend sees EOF).
- The frontend going away (EOF, a socket error, a message that forces the session
  closed) ends its session: the session stops the rings, the device is reset (guest
  memory unmapped, every fd closed) and the daemon waits for the next frontend. In
  client mode it reconnects every ``reconnect_s`` (QEMU with ``server=on`` restarted,
  or started after us). The daemon itself is never restarted for that.
- A frontend that stalls in the middle of a message must not block the loop: its socket is
  non-blocking and read incrementally (`transport.MessageReader`: what is there, fed to the
  sans-IO `Connection`), with one deadline per message: a message not complete within
  ``io_timeout_s`` of its first byte ends the session (checked on every tick). Replies are
  written non-blocking too: a frontend that does not read them until its socket buffer is
  full (hundreds of KiB of replies) has its session ended as a send failure.
- A frontend that shrinks its memory under our mapping (SIGBUS, absorbed: `vxdp.virtio.sigbus`)
  has its session ended on the next tick (`NetDevice.fault`).
- SIGTERM: the loop stops, the session is closed, the sockets we created are unlinked.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from vxdp import jitcache, rpc
from vxdp.engine import make_engine, xdp_hook
from vxdp.engine.base import Engine
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.jit import map_warmup, staging
from vxdp.eventloop import Loop
from vxdp.frames import FrameBatch
from vxdp.netdev import warmup as netdev_warmup
from vxdp.netdev.port import Port
from vxdp.sockpath import PathBusy, SocketClaim
from vxdp.vhost_user import transport
from vxdp.vhost_user.backend import BackendSession
from vxdp.vhost_user.connection import Connection, Role
from vxdp.vhost_user.errors import LocalProtocolError, RemoteProtocolError
from vxdp.virtio import warmup as virtio_warmup
from vxdp.virtio.features import Experimental, has

from .ctrl_queue import CtrlTable
from .datapath import Datapath
from .net_device import NUM_VRINGS, QUEUE_PAIRS, NetDevice
from .offload.device_offload import DeviceOffload
from .offload.policy import Policy, load_policy
from .offload.port import RecordedPort
from .offload.service import OffloadService

log = logging.getLogger("vxdp.host")


@dataclass(frozen=True)
class ServeConfig:
    socket_path: str
    port: str
    name: str = "vxdp0"
    netns: str | None = None  # where the port lives (None: ours)
    client: bool = False  # connect to the frontend instead of listening
    mac: bytes = b"\x52\x54\x00\x12\x34\x56"
    mtu: int = 1500
    tick_s: float = 0.1
    reconnect_s: float = 0.5
    io_timeout_s: float = 2.0
    control_socket: str | None = None  # default: rpc.host_socket(name)
    extra_features: int = 0  # offered on top of NetDevice's
    offload: bool = True  # offer XDP offload (feature bit 58, the BPF ctrl class, the operator path)
    policy: str | None = None  # offload policy file (TOML); None: the safe defaults
    group: str | None = None  # operator group: both sockets 0660 and its members may use the control socket
    engine: str | None = None  # what runs offloaded programs (kernel, jit, interp); None: the policy's, else kernel


class ServeError(Exception):
    """The daemon cannot start as asked (its device or socket is served already, a missing netns)."""


def _group_id(name: str | None) -> int | None:
    if name is None:
        return None
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ServeError(f"--group {name}: no such group") from None


def _engine(cfg: ServeConfig, policy: Policy) -> str:
    """The device's engine: ``--engine``, else the policy file's, else the kernel; the two disagreeing
    is an error (which one did the operator mean?)."""
    if cfg.engine and policy.engine and cfg.engine != policy.engine:
        raise ServeError(f"--engine {cfg.engine} but the policy {cfg.policy} says engine.name = "
                         f"{policy.engine!r}: say one")
    return cfg.engine or policy.engine or "kernel"


def _service(engine: str, policy: Policy, ifindex: int) -> OffloadService:
    """The offload service on ``engine``: the kernel's objects on a kernel port, or an engine of this
    process whose port records the attached program for the datapath to run (`OffloadService.run_rx`)."""
    if engine == "kernel":
        return OffloadService(policy=policy)
    if engine == "interp":  # the reference runs what it is given: here, only what our verifier accepts
        def factory(_prefix: str) -> Engine:
            return InterpEngine(verify=True)
    else:
        def factory(_prefix: str) -> Engine:
            return make_engine(engine)
    return OffloadService(factory, policy,
                          port_factory=lambda ifname, netns: RecordedPort(ifname, netns, ifindex, mode=engine))


class HostDaemon:
    """A running backend (see the module docstring). Construct, then `run()`; `close()` always."""

    def __init__(self, cfg: ServeConfig, ctrl: CtrlTable | None = None) -> None:
        self.cfg = cfg
        self.loop = Loop()
        self.port: Port | None = None
        self.listen_sock: socket.socket | None = None
        self.rpc: rpc.Server | None = None
        self.datapath: Datapath | None = None
        self.sock: socket.socket | None = None
        self.conn: Connection | None = None
        self.reader: transport.MessageReader | None = None
        self.session: BackendSession | None = None
        self.connections = 0
        self.refused = 0
        self._next_connect = 0.0
        self._waiting_logged = False
        self.offload: DeviceOffload | None = None
        self.engine = "kernel"  # what runs offloaded programs (`_engine`)
        self._acked_ever = 0  # every feature bit the current session acked at some point
        ctrl = ctrl or CtrlTable()
        self.control_path = Path(cfg.control_socket) if cfg.control_socket else rpc.host_socket(cfg.name)
        self._claims: list[SocketClaim] = []
        try:
            # the policy and the engine first: a file or a flag that cannot be used is refused before anything
            policy = load_policy(cfg.policy) if cfg.policy else Policy()
            self.engine = _engine(cfg, policy)
            # claimed first (a second daemon for this device or socket is refused at once), bound last
            gid = _group_id(cfg.group)
            control = self._claim(self.control_path, cfg.name)
            vhost = None if cfg.client else self._claim(Path(cfg.socket_path), None)
            if cfg.netns is not None and not Path("/run/netns", cfg.netns).exists():
                raise ServeError(f"--netns {cfg.netns}: no such network namespace (`ip netns list` shows them)")
            warmups = [virtio_warmup.device, netdev_warmup.port]
            if self.engine == "jit":  # its maps' table functions and the batch staging loops
                warmups += [xdp_hook.warmup, staging.warmup, map_warmup.maps]
            elif self.engine != "kernel":
                warmups += [xdp_hook.warmup]
            jitcache.prepare(log, cfg.name, warmups, first_run_s=20)
            self.port = Port(cfg.port, netns=cfg.netns)
            extra = cfg.extra_features | (Experimental.NET_BPF_OFFLOAD.bit if cfg.offload else 0)
            self.device = NetDevice(name=cfg.name, mac=cfg.mac, mtu=cfg.mtu, extra_features=extra)
            rx_program = None
            if cfg.offload:
                self.offload = DeviceOffload(_service(self.engine, policy, self.port.ifindex), cfg.name, cfg.port,
                                             cfg.netns, lambda: self.device.features, ctrl)
                if self.engine != "kernel":
                    rx_program = self._run_offloaded
            self.datapath = Datapath(self.device, self.port, self.loop, ctrl, rx_program=rx_program)
            if rx_program is not None:
                log.info("%s: offloaded programs run in this daemon on the %s engine, on each batch of port %s's "
                         "frames: nothing of the guest's enters the host kernel", cfg.name, self.engine, cfg.port)
            if vhost is not None:
                self.listen_sock, _ = transport.listen(vhost, group=gid)
                self.listen_sock.setblocking(False)
                self.loop.add_reader(self.listen_sock.fileno(), self._on_accept)
            handlers = {"device.show": self.show, **(self.offload.handlers() if self.offload else {})}
            self.rpc = rpc.Server(control, handlers, unknown=self._unknown_method, group=gid)
            self.rpc.attach(self.loop)
        except BaseException:
            self.close()
            raise
        log.info("%s: serving %s on %s (%s mode), port %s%s", cfg.name, "virtio-net", cfg.socket_path,
                 "client" if cfg.client else "server", cfg.port, f" in netns {cfg.netns}" if cfg.netns else "")

    def _run_offloaded(self, batch: FrameBatch) -> None:
        """The offloaded program on a batch from the port (an engine outside the kernel); TX goes back out."""
        self.offload.service.run_rx(self.cfg.name, batch, self.port.send_batch)

    def _claim(self, path: Path, device: str | None) -> SocketClaim:
        """`SocketClaim.take`; refused as ``device DEV is already served by pid N`` for the control
        socket (``device`` given), as ``PATH is already served by pid N`` for the vhost-user one."""
        try:
            claim = SocketClaim.take(path)
        except PathBusy as e:
            if device is None:
                raise ServeError(e.strerror) from None
            raise ServeError(e.of(f"device {device}")) from None
        except OSError as e:
            raise ServeError(f"{path}: {e.strerror or e}") from None
        self._claims.append(claim)
        return claim

    def _unknown_method(self, method: str) -> rpc.RpcError:
        if self.offload is None and method.split(".")[0] in ("prog", "map", "offload"):
            return rpc.RpcError("EOPNOTSUPP", f"device {self.cfg.name} does not offer XDP offload (it was started "
                                              f"with --no-offload): nothing can be loaded on it")
        return rpc.RpcError("EOPNOTSUPP", f"unknown method {method!r}")

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        self.loop.run(tick=self.cfg.tick_s, on_tick=self._on_tick)

    def stop(self) -> None:
        self.loop.stop()

    def _on_tick(self) -> None:
        """Every ``tick_s`` (the loop keeps the period): reconnect, the datapath's safety net, deadlines."""
        now = time.monotonic()
        if self.cfg.client and self.session is None and now >= self._next_connect:
            self._next_connect = now + self.cfg.reconnect_s
            self._try_connect()
        if self.datapath is not None:
            self.datapath.tick()
        if self.session is not None and self.device.fault:
            self._detach(self.device.fault)
        elif self.session is not None and self.reader.overdue(self.cfg.io_timeout_s, now):
            self._detach(f"a message was not complete within {self.cfg.io_timeout_s:g} s of its first byte")

    # ------------------------------------------------------------------ frontends
    def _on_accept(self) -> None:
        try:
            sock, _ = self.listen_sock.accept()
        except BlockingIOError:
            return
        if self.session is not None:
            self.refused += 1
            log.warning("%s: refusing a second frontend (one is connected)", self.cfg.name)
            sock.close()
            return
        self._attach(sock)

    def _try_connect(self) -> None:
        try:
            sock = transport.connect(self.cfg.socket_path)
        except ConnectionError as e:
            if not self._waiting_logged:
                log.info("%s: waiting for a frontend: %s", self.cfg.name, e)
                self._waiting_logged = True
            return
        self._waiting_logged = False
        self._attach(sock)

    def _attach(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = transport.MessageReader()
        self.conn = Connection(Role.BACKEND)
        self.session = BackendSession(self.device, features=self.device.offered, num_vrings=NUM_VRINGS,
                                      queue_num=QUEUE_PAIRS, name=self.cfg.name)
        self.connections += 1
        self._acked_ever = 0
        self.loop.add_reader(sock.fileno(), self._on_frontend)
        log.info("%s: frontend connected (session %d)", self.cfg.name, self.connections)

    _READS = 64  # reads per wake-up at most: a chatty frontend yields to the other fds

    def _on_frontend(self) -> None:
        data = b"?"
        for _ in range(self._READS):
            try:
                got = self.reader.read(self.sock)
            except (RemoteProtocolError, OSError) as e:
                self._detach(f"receive failed: {e}")
                return
            if got is None:
                break
            data, fds = got
            try:
                self.conn.receive_data(data, fds)
            except LocalProtocolError as e:
                self._detach(str(e))
                return
            if not data or self.reader.since is None:
                break  # end of stream, or a message is complete: handle it before reading on
        try:
            out, close = self.session.process(self.conn)
        except Exception as e:  # a message we failed to handle ends its session, not more
            log.exception("%s: handling a frontend message failed", self.cfg.name)
            self._detach(f"internal error handling a message: {type(e).__name__}: {e}")
            return
        self._acked_ever |= self.device.features
        try:
            for b in out:
                transport.send_message(self.sock, b)
        except OSError as e:
            self._detach(f"send failed: {e}")
            return
        if close:
            self._detach("frontend went away" if not data else "session closed on an error")

    def _detach(self, why: str) -> None:
        if self.session is None:
            return
        log.info("%s: frontend session %d ended: %s; device reset", self.cfg.name, self.connections, why)
        self.loop.remove_reader(self.sock.fileno())
        # what the session ever acked, not its last feature word: a guest that negotiated offload, made
        # objects, then cleared the bit before leaving must not leave them to the next guest
        negotiated = self.offload is not None and has(self._acked_ever, Experimental.NET_BPF_OFFLOAD)
        try:
            self.session.disconnect()
            if self.offload is not None:
                self.offload.session_ended(negotiated)
        finally:
            self.conn.close()
            self.sock.close()
            self.session = self.conn = self.sock = self.reader = None
            self._next_connect = time.monotonic() + self.cfg.reconnect_s

    # ------------------------------------------------------------------ control socket
    def show(self) -> dict:
        """``device.show``: what ``vxdp host show`` prints."""
        s = self.session
        pst = self.port.stats()
        return {
            "name": self.cfg.name,
            "pid": os.getpid(),
            "socket": self.cfg.socket_path,
            "mode": "client" if self.cfg.client else "server",
            "connected": s is not None,
            "sessions": self.connections,
            "refused": self.refused,
            "protocol_features": int(s.acked_protocol) if s else 0,
            "port": {"ifname": self.cfg.port, "netns": self.cfg.netns, "packets": pst.packets, "drops": pst.drops,
                     "oversize": pst.oversize, "tx_rejected": pst.tx_rejected, "csum_completed": pst.csum_completed,
                     "gso_frames": pst.gso_frames, "gso_segments": pst.gso_segments, "gso_refused": pst.gso_refused,
                     "tx_gro_frames": pst.tx_gro_frames, "tx_gro_segments": pst.tx_gro_segments},
            **self.device.describe(s.vrings if s else None),
            "counters": self.datapath.stats(),
            "offload": self.offload.show() if self.offload else None,
        }

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Close the session, the sockets (unlinked), the port. Idempotent."""
        if self.session is not None:
            self._detach("daemon stopping")
        if self.offload is not None:
            self.offload.close()
            self.offload = None
        if self.datapath is not None:
            self.datapath.close()
            self.datapath = None
        if self.listen_sock is not None:
            self.loop.remove_reader(self.listen_sock.fileno())
            self.listen_sock.close()
            self.listen_sock = None
        if self.rpc is not None:
            self.rpc.close()
            self.rpc = None
        for claim in self._claims:  # only the paths we bound, and only if they are still ours
            claim.release()
        self._claims = []
        if self.port is not None:
            self.port.close()
            self.port = None
        self.loop.close()
