"""XDP attached through a bpf_link: the attachment lives exactly as long as the fd that holds it.

Why a link and not netlink (`vxdp.bpf.kernel.xdp`): a program attached with
``IFLA_XDP_FD`` is held by the interface itself and stays there after every
process that knew about it is gone, so a daemon killed with SIGKILL leaves its
program running on the port, unseen by the daemon that restarts. A link made by
``BPF_LINK_CREATE`` (attach type ``BPF_XDP``, ``target_ifindex``, mode flags) is
held by its fd: when the last fd closes (``close``, or the kernel closing the
files of a dead process) the kernel detaches the program. Kernel facts this
module relies on (6.x):

- the link's ``target_ifindex`` is resolved in the network namespace of the
  *calling thread*, so for a port in another netns the create call is issued from
  a thread that entered it (`run_in_netns`); the fd works anywhere afterwards;
- the fd is ``O_CLOEXEC``: a program the daemon execs does not inherit the link;
- ``BPF_LINK_UPDATE`` swaps the link's program in one step (no moment with
  nothing attached); with ``BPF_F_REPLACE`` and ``old_prog_fd`` the kernel
  refuses (EPERM) if the link no longer runs that program;
- ``BPF_LINK_DETACH`` detaches now even if another fd to the link exists
  (a forked child); the link object stays, defunct, until its fds close;
- a link and a netlink attachment exclude each other on a device: either call
  answers EBUSY while the other kind is attached.
"""

from __future__ import annotations

import ctypes
import errno

from .netns import run_in_netns
from .objects import obj_get_info
from .syscall import BpfError, Cmd, FdOwner, call
from .xdp import XDP_FLAGS_DRV_MODE, XdpError, XdpMode

BPF_XDP = 37  # enum bpf_attach_type
BPF_F_REPLACE = 1 << 2
BPF_LINK_TYPE_XDP = 6  # enum bpf_link_type


class _LinkCreateAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_LINK_CREATE: prog_fd @0, target_ifindex @4, attach_type @8, flags @12."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class _LinkUpdateAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_LINK_UPDATE: link_fd @0, new_prog_fd @4, flags @8, old_prog_fd @12."""

    _fields_ = [("link_fd", ctypes.c_uint32), ("new_prog_fd", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("old_prog_fd", ctypes.c_uint32)]


class _LinkDetachAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_LINK_DETACH: link_fd @0."""

    _fields_ = [("link_fd", ctypes.c_uint32)]


class BpfLinkInfo(ctypes.Structure):
    """``struct bpf_link_info`` up to the XDP member: type @0, id @4, prog_id @8, xdp.ifindex @16."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("prog_id", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32), ("ifindex", ctypes.c_uint32), ("_rest", ctypes.c_uint32 * 5)]


def _where(ifindex: int, netns: str | None, label: str | None) -> str:
    name = label or f"ifindex {ifindex}"
    return f"interface {name!r}" + (f" in netns {netns!r}" if netns else "")


class XdpLink(FdOwner):
    """One XDP attachment held by a bpf_link fd: `create`, `update` (atomic replace), `detach`, `close`."""

    def __init__(self, fd: int, ifindex: int, netns: str | None, label: str | None) -> None:
        self._fd = fd
        self.ifindex = ifindex
        self.netns = netns
        self.label = label

    @classmethod
    def create(cls, ifindex: int, prog_fd: int, mode: XdpMode = XdpMode.NATIVE, *,
               netns: str | None = None, label: str | None = None) -> XdpLink:
        """Attach ``prog_fd`` to ``ifindex`` (of ``netns``, else ours) in ``mode`` through a new link.

        EBUSY (as `XdpError`) if the interface already runs a program, whoever attached it;
        ``label`` (the interface's name) goes into error messages.
        """
        flags = int(mode) if mode is not XdpMode.AUTO else XDP_FLAGS_DRV_MODE
        attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=BPF_XDP, flags=flags)
        where = _where(ifindex, netns, label)
        try:
            fd = run_in_netns(netns, call, Cmd.LINK_CREATE, attr) if netns else call(Cmd.LINK_CREATE, attr)
        except BpfError as e:
            why = {errno.EBUSY: "another program is already attached (not through our link)",
                   errno.ENODEV: "no such interface"}.get(e.errno or 0, e.strerror or str(e))
            raise XdpError(e.errno or errno.EIO, f"XDP link on {where} (flags {flags:#x}): {why}") from None
        except OSError as e:  # entering the netns failed
            raise XdpError(e.errno or errno.ENOENT, f"XDP link on {where}: {e.strerror or e}") from None
        return cls(fd, ifindex, netns, label)

    def update(self, prog_fd: int, *, old_prog_fd: int | None = None) -> None:
        """Run ``prog_fd`` on the link instead of its program, atomically; with ``old_prog_fd`` only if
        the link still runs that one (EPERM otherwise)."""
        attr = _LinkUpdateAttr(link_fd=self.fd, new_prog_fd=prog_fd,
                               flags=BPF_F_REPLACE if old_prog_fd is not None else 0,
                               old_prog_fd=old_prog_fd or 0)
        try:
            call(Cmd.LINK_UPDATE, attr)
        except BpfError as e:
            raise XdpError(e.errno or errno.EIO, f"XDP link update on {_where(self.ifindex, self.netns, self.label)}: "
                                                 f"{e.strerror or e}") from None

    def detach(self) -> None:
        """Detach the program now (ENOLINK/ENODEV, the link is already defunct or the port is gone, is fine)."""
        try:
            call(Cmd.LINK_DETACH, _LinkDetachAttr(link_fd=self.fd))
        except BpfError as e:
            if e.errno not in (errno.ENOLINK, errno.ENODEV, errno.ENOENT):
                raise XdpError(e.errno or errno.EIO, f"XDP link detach on "
                                                     f"{_where(self.ifindex, self.netns, self.label)}: "
                                                     f"{e.strerror or e}") from None

    def info(self) -> BpfLinkInfo:
        """The kernel's record of the link: its id, the program id it runs, the ifindex (0 once detached)."""
        info = BpfLinkInfo()
        obj_get_info(self.fd, info, "xdp link")
        return info


__all__ = ["BPF_F_REPLACE", "BPF_XDP", "XdpLink"]
