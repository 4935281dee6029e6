"""``vxdp guest run``: the guest daemon — a tap in a netns, the driver, the event loop, a control socket.

The "guest" is a network namespace: real programs (ping, iperf3) run in it with
``ip netns exec`` and talk through a tap whose other side is our virtio-net driver.

Namespace policy: if ``netns`` does not exist we create it and remove it on exit; one
that existed before is left as it was (the tap goes away with us either way, since it
is not persistent). The tap takes the device's MAC (from the config space when the
backend reports one, else ``--mac`` or a stable one derived from the socket path), so
frames the device delivers are addressed to it.

Exit: SIGTERM or SIGINT ends the loop (``Loop.run``), and ``close`` removes what we
made: the tap, the control socket, the vhost-user socket in server mode, the netns if
ours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from vxdp import jitcache, rpc
from vxdp.engine import xdp_hook
from vxdp.engine.jit import map_warmup, staging
from vxdp.eventloop import Loop
from vxdp.netdev import warmup as netdev_warmup
from vxdp.netdev.tap import Tap
from vxdp.sockpath import PathBusy, SocketClaim
from vxdp.virtio import warmup as virtio_warmup
from vxdp.virtio.ctrl_framing import Ack

from .ctrl_client import TIMEOUT_S as CTRL_TIMEOUT_S
from .driver import QUEUE_SIZE, TICK_S, GuestDriver
from .programs import GuestPrograms

log = logging.getLogger(__name__)


class GuestDaemonError(Exception):
    """The daemon could not start (netns, tap, control socket)."""


class GuestDaemon:
    def __init__(self, socket_path: str, *, netns: str, tap: str, addr: str | None = None,
                 name: str | None = None, mtu: int = 1500, mac: bytes | None = None, server: bool = False,
                 mem_mb: int = 64, queue_size: int = QUEUE_SIZE, gro: bool = True,
                 extra_methods: Callable[[GuestDriver], Mapping[str, rpc.Handler]] | None = None) -> None:
        """``extra_methods(driver)``: more control-socket methods, made once the driver exists (the CLI
        adds `vxdp.bench`'s hooks this way: this layer does not know the benchmarks)."""
        self.name = name or tap
        self.netns = netns
        self.created_netns = False
        path = rpc.guest_socket(self.name)
        try:  # claimed before anything is set up, bound last (`vxdp.sockpath`)
            claim = SocketClaim.take(path)
        except PathBusy as e:
            raise GuestDaemonError(e.of(f"guest {self.name}")) from None
        except OSError as e:
            raise GuestDaemonError(f"guest {self.name}: control socket {path}: {e.strerror or e}") from None
        self._claim = claim
        try:
            jitcache.prepare(log, f"guest {self.name}", [virtio_warmup.driver, netdev_warmup.tap, xdp_hook.warmup,
                                                           staging.warmup, map_warmup.maps], first_run_s=10)
            self.driver = GuestDriver(socket_path, mem_mb=mem_mb, queue_size=queue_size, mac=mac, server=server,
                                      mtu=mtu)
        except BaseException:
            claim.release()
            raise
        self.loop = Loop()
        self.tap: Tap | None = None
        self.control: rpc.Server | None = None
        self.programs = GuestPrograms(self.driver)
        try:
            if netns not in pr_netns.listnetns():
                pr_netns.create(netns)
                self.created_netns = True
                with IPRoute(netns=netns, flags=0) as ip:
                    ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
            self.tap = Tap(tap, netns=netns, mtu=mtu, addr=addr, up=False, gro=gro)
            self._set_tap_mac(self.driver.mac, up=True)
            self.control = rpc.Server(claim, {
                "guest.show": self.show,
                "guest.ctrl": self.ctrl,
                "guest.promisc": self.promisc,
                **self.programs.handlers(),
                **(extra_methods(self.driver) if extra_methods else {}),
            })
        except Exception as e:
            self.close()
            if isinstance(e, GuestDaemonError):
                raise
            raise GuestDaemonError(f"guest {self.name}: {e}") from e
        self.control.attach(self.loop)
        self.driver.on_connect = lambda d: self._set_tap_mac(d.mac)
        self.driver.on_disconnect = lambda d: self.programs.on_disconnect()
        self.driver.attach(self.loop, self.tap)

    def _set_tap_mac(self, mac: bytes, up: bool = False) -> None:
        text = ":".join(f"{b:02x}" for b in mac)
        with IPRoute(netns=self.netns, flags=0) as ip:
            if self.tap.mac != text:
                ip.link("set", index=self.tap.ifindex, address=text)
                self.tap.mac = text
            if up:
                ip.link("set", index=self.tap.ifindex, state="up")

    # -- control methods ------------------------------------------------------------------
    def show(self) -> dict:
        doc = self.driver.show()
        doc.update(name=self.name, netns=self.netns, tap=self.tap.name if self.tap else None,
                   tap_stats=vars(self.tap.stats()) if self.tap else None)
        return doc

    def ctrl(self, cls: int, cmd: int, data: str = "", reply_capacity: int = 0,
             wait: float = CTRL_TIMEOUT_S) -> dict:
        """One ctrl-vq command (``data`` and the result in hex). Blocks the loop for at most ``wait`` s:
        commands are rare and a datapath stall of that bound is acceptable for them."""
        ack, result = self.driver.ctrl_command(cls, cmd, bytes.fromhex(data), reply_capacity, wait)
        return {"ack": Ack(ack).name, "result": result.hex()}

    def promisc(self, on: bool = True, wait: float = CTRL_TIMEOUT_S) -> dict:
        return {"ack": Ack(self.driver.set_promisc(on, wait)).name}

    # -- life cycle -----------------------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGTERM/SIGINT; then clean up."""
        try:  # the loop ticks after its first round: the first connection attempt is made at once
            self.loop.run(tick=TICK_S, on_tick=self.driver.tick)
        finally:
            self.close()

    def close(self) -> None:
        self.programs.close()
        self.driver.close()
        if self.control is not None:
            self.control.close()
            self.control = None
        self._claim.release()  # idempotent: the control socket's close released it already
        if self.tap is not None:
            self.tap.close()
            self.tap = None
        if self.created_netns:
            try:
                pr_netns.remove(self.netns)
            except OSError as e:
                log.warning("cannot remove netns %s: %s", self.netns, e)
            self.created_netns = False
        self.loop.close()
