"""A device's program on its host port: attached through a bpf_link this process holds, and what the
port ran before we came.

Why a link (`XdpLink`, native mode) and never netlink: a program attached with
``IFLA_XDP_FD`` belongs to the interface and outlives every process, so a daemon
killed with SIGKILL would leave its program on the port, dropping traffic while the
restarted daemon says nothing is offloaded. A link belongs to its fd: the daemon's
death closes it and the kernel takes the program off. Replacing the attached
program is ``BPF_LINK_UPDATE``, checked against the program we attached: the port
runs the old program, then the new one, never nothing.

At start (`clear_port`) the port is looked at once: a program left attached the old
(netlink) way by an earlier vxdp of this device (its kernel name starts with the
device's `kernel_prefix`) is detached, and the log says so; anything else (somebody
else's program) is left alone with a warning naming it, and our attach then fails
with EBUSY naming it too. Keeping state across a crash on purpose (pinning) is a
later feature; nothing is kept unseen.
"""

from __future__ import annotations

import errno
import logging

from ...bpf.kernel.objects import prog_get_fd_by_id
from ...bpf.kernel.prog import KernelProgram
from ...bpf.kernel.xdp import XdpError, XdpMode, detach_xdp, query_xdp
from ...bpf.kernel.xdp_link import XdpLink
from .errors import OffloadError
from .objects import Device

log = logging.getLogger(__name__)


def attach(dev: Device, link: XdpLink | None, prog_fd: int, old_prog_fd: int | None) -> XdpLink:
    """Run ``prog_fd`` on the device's port: a new link, or an atomic update of ``link`` (which runs
    ``old_prog_fd``). Returns the link; `OffloadError` (EBUSY naming a foreign program) if refused."""
    try:
        if link is None:
            return XdpLink.create(dev.ifindex, prog_fd, XdpMode.NATIVE, netns=dev.netns, label=dev.ifname)
        link.update(prog_fd, old_prog_fd=old_prog_fd)
        return link
    except XdpError as e:
        found = port_program(dev, XdpMode.AUTO) if e.errno == errno.EBUSY and link is None else None
        what = (f"port {dev.ifname} already runs XDP program {found[1]!r} (id {found[0]}), not attached by "
                "this device; detach it first" if found else f"{e.strerror or e}")
        raise OffloadError(e.errno or errno.EINVAL, f"device {dev.name}: attach to {dev.ifname}: {what}") from None


def detach(dev: Device, link: XdpLink) -> None:
    """Take the program off the port and close the link (a port that is gone is no error)."""
    try:
        link.detach()
    except XdpError as e:
        raise OffloadError(e.errno or errno.EIO, f"device {dev.name}: detach: {e.strerror or e}") from None
    finally:
        link.close()


def clear_port(dev: Device, prefix: str) -> None:
    """What the port runs at start: a program of ``prefix`` (an earlier vxdp of this device, attached
    by netlink, so it outlived its daemon) is detached; a foreign one is left, with a warning naming it.
    Either way the log says how this daemon attaches (the choice the issue asks to be said)."""
    log.info("device %s: offloaded programs attach to port %s through a bpf_link this daemon holds: they leave "
             "the port when it exits, even killed", dev.name, dev.ifname)
    for mode in (XdpMode.NATIVE, XdpMode.GENERIC):
        found = port_program(dev, mode)
        if found is None:
            continue
        prog_id, name = found
        if not name.startswith(prefix):
            log.warning("device %s: port %s runs XDP program %r (id %d), not this daemon's; left alone: "
                        "offloads to it are refused (EBUSY) until it is detached", dev.name, dev.ifname,
                        name, prog_id)
            continue
        try:
            detach_xdp(dev.ifindex, mode, netns=dev.netns)
        except XdpError as e:  # EBUSY: a live link holds it (a daemon of this device still runs)
            log.warning("device %s: port %s runs %r (id %d) of an earlier vxdp of this device and it cannot "
                        "be detached (%s); left alone", dev.name, dev.ifname, name, prog_id, e)
            continue
        log.warning("device %s: detached XDP program %r (id %d) that an earlier vxdp left attached to port "
                    "%s (%s mode, netlink attach); nothing is offloaded now", dev.name, name, prog_id,
                    dev.ifname, mode.name.lower())


def port_program(dev: Device, mode: XdpMode) -> tuple[int, str] | None:
    """(id, kernel name) of the XDP program the device's port runs in ``mode`` (AUTO: any), or ``None``."""
    try:
        prog_id = query_xdp(dev.ifindex, mode, netns=dev.netns)
    except XdpError as e:
        log.warning("device %s: cannot query port %s: %s", dev.name, dev.ifname, e)
        return None
    if prog_id is None:
        return None
    try:
        with KernelProgram.from_fd(prog_get_fd_by_id(prog_id)) as p:
            return prog_id, p.name
    except OSError:  # gone meanwhile
        return prog_id, "?"


__all__ = ["attach", "clear_port", "detach", "port_program"]
