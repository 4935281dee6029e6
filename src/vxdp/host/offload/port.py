"""A device's host port as the offload service sees it: where its attached program runs on RX.

The service never talks to the network stack itself: each device has a `Port` (made by the
service's port factory from the interface name and netns), which knows its ifindex and puts a
program of the device's engine on RX or takes it off. Two kinds:

- `KernelPort`, for programs the host kernel runs (`vxdp.engine.kernel`): a native-mode
  bpf_link this process holds (`XdpLink`), never netlink. A program attached with
  ``IFLA_XDP_FD`` belongs to the interface and outlives every process, so a daemon killed with
  SIGKILL would leave its program on the port, dropping traffic while the restarted daemon says
  nothing is offloaded; a link belongs to its fd: the daemon's death closes it and the kernel
  takes the program off. Replacing is ``BPF_LINK_UPDATE``, checked against the program we
  attached: the port runs the old program, then the new one, never nothing. At `open` the port
  is looked at once: a program left attached the old (netlink) way by an earlier vxdp of this
  device (its kernel name starts with the device's prefix) is detached, and the log says so;
  anything else (somebody else's program) is left alone with a warning naming it, and our attach
  then fails with EBUSY naming it too. Keeping state across a crash on purpose (pinning) is a
  later feature; nothing is kept unseen.
- `RecordedPort`, for engines that do not run in the host kernel (the JIT, the interpreter):
  it records which program runs on RX (`rx`), which the backend runs on each batch of the port's
  frames (`OffloadService.run_rx`); it attaches nothing in the kernel and needs no privilege.
"""

from __future__ import annotations

import errno
import logging
from typing import Protocol

from pyroute2 import IPRoute

from ...bpf.kernel.objects import prog_get_fd_by_id
from ...bpf.kernel.prog import KernelProgram
from ...bpf.kernel.xdp import XdpError, XdpMode, detach_xdp, query_xdp
from ...bpf.kernel.xdp_link import XdpLink
from .errors import OffloadError

log = logging.getLogger(__name__)


class Port(Protocol):
    """Where one device's attached program runs. Methods raise `OffloadError` when refused."""

    ifname: str
    ifindex: int
    netns: str | None
    mode: str  # how a program runs there, as ``host show`` says it: native, interp

    def open(self, device: str, prefix: str) -> None:
        """The port is ``device``'s from now on; ``prefix`` starts the kernel names of its objects."""

    def attach(self, prog: int, replaces: int | None) -> None:
        """Run program ``prog`` (the engine's handle) on RX; ``replaces``: the one running now, if any."""

    def detach(self) -> None:
        """Take the program off RX (nothing attached is no error)."""


class KernelPort:
    """A host interface whose XDP hook runs kernel programs through one bpf_link this process holds."""

    mode = "native"

    def __init__(self, ifname: str, netns: str | None = None):
        self.ifname, self.netns = ifname, netns
        self.ifindex = _ifindex(ifname, netns)
        self.device = ""
        self.link: XdpLink | None = None  # the link the attached program runs on

    def open(self, device: str, prefix: str) -> None:
        """What the port runs at start: a program of ``prefix`` (an earlier vxdp of this device, attached
        by netlink, so it outlived its daemon) is detached; a foreign one is left, with a warning naming it.
        Either way the log says how this daemon attaches."""
        self.device = device
        log.info("device %s: offloaded programs attach to port %s through a bpf_link this daemon holds: they "
                 "leave the port when it exits, even killed", device, self.ifname)
        for mode in (XdpMode.NATIVE, XdpMode.GENERIC):
            found = self.running(mode)
            if found is None:
                continue
            prog_id, name = found
            if not name.startswith(prefix):
                log.warning("device %s: port %s runs XDP program %r (id %d), not this daemon's; left alone: "
                            "offloads to it are refused (EBUSY) until it is detached", device, self.ifname,
                            name, prog_id)
                continue
            try:
                detach_xdp(self.ifindex, mode, netns=self.netns)
            except XdpError as e:  # EBUSY: a live link holds it (a daemon of this device still runs)
                log.warning("device %s: port %s runs %r (id %d) of an earlier vxdp of this device and it cannot "
                            "be detached (%s); left alone", device, self.ifname, name, prog_id, e)
                continue
            log.warning("device %s: detached XDP program %r (id %d) that an earlier vxdp left attached to port "
                        "%s (%s mode, netlink attach); nothing is offloaded now", device, name, prog_id,
                        self.ifname, mode.name.lower())

    def attach(self, prog: int, replaces: int | None) -> None:
        """A new link, or an atomic update of ours (which runs ``replaces``). EBUSY names a foreign program."""
        try:
            if self.link is None:
                self.link = XdpLink.create(self.ifindex, prog, XdpMode.NATIVE, netns=self.netns, label=self.ifname)
            else:
                self.link.update(prog, old_prog_fd=replaces)
        except XdpError as e:
            found = self.running(XdpMode.AUTO) if e.errno == errno.EBUSY and self.link is None else None
            what = (f"port {self.ifname} already runs XDP program {found[1]!r} (id {found[0]}), not attached by "
                    "this device; detach it first" if found else f"{e.strerror or e}")
            raise OffloadError(e.errno or errno.EINVAL, f"device {self.device}: attach to {self.ifname}: "
                               f"{what}") from None

    def detach(self) -> None:
        """Take the program off the port and close the link (a port that is gone is no error)."""
        link, self.link = self.link, None
        if link is None:
            return
        try:
            link.detach()
        except XdpError as e:
            raise OffloadError(e.errno or errno.EIO, f"device {self.device}: detach: {e.strerror or e}") from None
        finally:
            link.close()

    def running(self, mode: XdpMode) -> tuple[int, str] | None:
        """(id, kernel name) of the XDP program the port runs in ``mode`` (AUTO: any), or ``None``."""
        try:
            prog_id = query_xdp(self.ifindex, mode, netns=self.netns)
        except XdpError as e:
            log.warning("device %s: cannot query port %s: %s", self.device, self.ifname, e)
            return None
        if prog_id is None:
            return None
        try:
            with KernelProgram.from_fd(prog_get_fd_by_id(prog_id)) as p:
                return prog_id, p.name
        except OSError:  # gone meanwhile
            return prog_id, "?"


class RecordedPort:
    """A port whose frames an engine outside the kernel runs: records the program on RX, no syscall."""

    def __init__(self, ifname: str, netns: str | None = None, ifindex: int = 0, mode: str = "interp"):
        self.ifname, self.netns, self.ifindex = ifname, netns, ifindex
        self.mode = mode  # the engine's name: what ``host show`` says runs the program
        self.rx: int | None = None  # the engine's handle of the program that runs on RX

    def open(self, device: str, prefix: str) -> None:
        pass

    def attach(self, prog: int, replaces: int | None) -> None:
        self.rx = prog

    def detach(self) -> None:
        self.rx = None


def _ifindex(ifname: str, netns: str | None) -> int:
    try:
        with (IPRoute(netns=netns, flags=0) if netns else IPRoute()) as ipr:
            found = ipr.link_lookup(ifname=ifname)
    except OSError as e:
        raise OffloadError(e.errno or errno.ENODEV, f"port {ifname!r}: netns {netns!r}: {e.strerror or e}") from None
    if not found:
        where = f" in netns {netns!r}" if netns else ""
        raise OffloadError(errno.ENODEV, f"port {ifname!r}{where}: no such interface")
    return found[0]


__all__ = ["KernelPort", "Port", "RecordedPort"]
