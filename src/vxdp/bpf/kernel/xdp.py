"""Attaching XDP programs to interfaces through rtnetlink (pyroute2), the way ``ip link set xdp`` does.

XDP attach is not a bpf(2) command but an ``IFLA_XDP`` nest in RTM_SETLINK:
``IFLA_XDP_FD`` (the program fd, -1 to detach) and ``IFLA_XDP_FLAGS`` (the
mode, and UPDATE_IF_NOEXIST to refuse replacing a program). The kernel answers
a query (RTM_GETLINK) with ``IFLA_XDP_PROG_ID`` and the attach mode.

Netns: with ``netns=NAME`` the netlink socket is opened inside
``/run/netns/NAME`` (pyroute2 ≥ 0.9 does it in our own process), so the program
fd we pass is valid there and interface names resolve in that namespace.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4


class XdpMode(IntEnum):
    """Where the program runs: the flag that selects it (AUTO lets the kernel pick native, else generic)."""

    AUTO = 0
    GENERIC = XDP_FLAGS_SKB_MODE
    NATIVE = XDP_FLAGS_DRV_MODE
    OFFLOAD = XDP_FLAGS_HW_MODE


class XdpAttached(IntEnum):
    """``IFLA_XDP_ATTACHED``: how the current program is attached."""

    NONE = 0
    NATIVE = 1
    GENERIC = 2
    OFFLOAD = 3
    MULTI = 4


_ATTACHED_NAMES = {None: XdpAttached.NONE, "xdp": XdpAttached.NATIVE, "xdpgeneric": XdpAttached.GENERIC,
                   "xdpoffload": XdpAttached.OFFLOAD, "xdpmulti": XdpAttached.MULTI}

_MODE_ID_ATTR = {XdpMode.GENERIC: "IFLA_XDP_SKB_PROG_ID", XdpMode.NATIVE: "IFLA_XDP_DRV_PROG_ID",
                 XdpMode.OFFLOAD: "IFLA_XDP_HW_PROG_ID", XdpMode.AUTO: "IFLA_XDP_PROG_ID"}


class XdpError(OSError):
    """An XDP attach/detach/query failed; the message names the interface, netns and mode."""


@contextmanager
def _rtnl(netns: str | None):
    try:
        ipr = IPRoute(netns=netns, flags=0, ext_ack=True) if netns else IPRoute(ext_ack=True)
    except OSError as e:
        raise XdpError(e.errno or errno.ENOENT, f"netns {netns!r}: {e.strerror or e}") from None
    try:
        yield ipr
    finally:
        ipr.close()


def _where(iface: str | int, netns: str | None) -> str:
    return f"interface {iface!r}" + (f" in netns {netns!r}" if netns else "")


def _index(ipr: IPRoute, iface: str | int, netns: str | None) -> int:
    if isinstance(iface, int):
        return iface
    found = ipr.link_lookup(ifname=iface)
    if not found:
        raise XdpError(errno.ENODEV, f"{_where(iface, netns)}: no such interface")
    return found[0]


def _set(iface: str | int, fd: int, flags: int, netns: str | None, action: str) -> None:
    with _rtnl(netns) as ipr:
        index = _index(ipr, iface, netns)
        try:
            ipr.link("set", index=index, xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]})
        except NetlinkError as e:
            raise XdpError(e.code, f"XDP {action} on {_where(iface, netns)} (flags {flags:#x}): "
                                   f"{e.args[1] if len(e.args) > 1 else e}") from None


def attach_xdp(iface: str | int, prog_fd: int, mode: XdpMode = XdpMode.NATIVE, *,
               netns: str | None = None, replace: bool = True) -> None:
    """Attach the program ``prog_fd`` to ``iface`` (name or ifindex) in ``mode``.

    ``replace=False`` sets UPDATE_IF_NOEXIST: the kernel then answers EBUSY if a
    program is already attached. The kernel holds its own reference to the
    program: it stays attached after we close our fd, until `detach_xdp`.
    """
    flags = int(mode) | (0 if replace else XDP_FLAGS_UPDATE_IF_NOEXIST)
    _set(iface, prog_fd, flags, netns, "attach")


def detach_xdp(iface: str | int, mode: XdpMode = XdpMode.NATIVE, *, netns: str | None = None) -> None:
    """Detach whatever program ``mode`` has on ``iface`` (no error if there is none)."""
    _set(iface, -1, int(mode), netns, "detach")


@contextmanager
def xdp_attached(iface: str | int, prog_fd: int, mode: XdpMode = XdpMode.NATIVE, *,
                 netns: str | None = None) -> Iterator[None]:
    """`attach_xdp` for the body of a ``with``, detached after it whatever happened."""
    attach_xdp(iface, prog_fd, mode, netns=netns)
    try:
        yield
    finally:
        detach_xdp(iface, mode, netns=netns)


def query_xdp_attrs(iface: str | int, *, netns: str | None = None) -> dict[str, int | str | None]:
    """The ``IFLA_XDP`` nest of ``iface`` as a dict (PROG_ID, DRV_PROG_ID, SKB_PROG_ID, ATTACHED)."""
    with _rtnl(netns) as ipr:
        index = _index(ipr, iface, netns)
        try:
            link = ipr.link("get", index=index)[0]
        except NetlinkError as e:
            raise XdpError(e.code, f"XDP query on {_where(iface, netns)}: {e}") from None
    nest = link.get_attr("IFLA_XDP")
    return dict(nest["attrs"]) if nest else {}


def query_xdp(iface: str | int, mode: XdpMode = XdpMode.AUTO, *, netns: str | None = None) -> int | None:
    """The id of the program attached to ``iface`` (in ``mode``, or in any with AUTO); ``None`` if none."""
    attrs = query_xdp_attrs(iface, netns=netns)
    if mode is XdpMode.AUTO:
        if _ATTACHED_NAMES.get(attrs.get("IFLA_XDP_ATTACHED"), XdpAttached.NONE) is XdpAttached.NONE:
            return None
        prog_id = attrs.get("IFLA_XDP_PROG_ID")
        if prog_id is None:  # MULTI: several modes at once; report the native one first
            prog_id = attrs.get("IFLA_XDP_DRV_PROG_ID") or attrs.get("IFLA_XDP_SKB_PROG_ID")
        return prog_id or None
    prog_id = attrs.get(_MODE_ID_ATTR[mode])
    if prog_id is None and attrs.get("IFLA_XDP_PROG_ID"):
        # one program attached: the kernel sends only PROG_ID with ATTACHED saying the mode
        attached = _ATTACHED_NAMES.get(attrs.get("IFLA_XDP_ATTACHED"), XdpAttached.NONE)
        if attached.name == mode.name:
            prog_id = attrs["IFLA_XDP_PROG_ID"]
    return prog_id or None
