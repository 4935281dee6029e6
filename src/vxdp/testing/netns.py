"""Network namespaces and veth pairs for tests, benchmarks and demos, always torn down.

One helper for the whole project (the kernel tests' fixtures are built on it too): a
:class:`NetLab` owns every namespace and link it creates and removes them in :meth:`NetLab.close`
whatever happened before. Deleting a namespace deletes the veth ends inside it, and deleting
one veth end deletes its peer, so teardown is "remove our namespaces, then our links left in
the caller's namespace".

Addresses must lie in 198.18.0.0/15 (RFC 2544 benchmarking space): a test can then never
collide with, or leak traffic onto, a real network. Names carry the pid and a counter so
parallel runs never collide; interface names stay within IFNAMSIZ (15 characters).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from vxdp.bpf.kernel.netns import run_in_netns

T = TypeVar("T")

TEST_NET = ipaddress.ip_network("198.18.0.0/15")
IFNAMSIZ = 16

_seq = itertools.count()


class NetnsError(Exception):
    """A namespace or link could not be made, or an argument is outside what tests may use."""


@dataclass(frozen=True)
class VethPair:
    """veth ``a`` in netns ``ns_a`` and its peer ``b`` in ``ns_b`` (None = the caller's netns)."""

    ns_a: str | None
    a: str
    a_index: int
    ns_b: str | None
    b: str
    b_index: int


def check_test_cidr(cidr: str) -> ipaddress.IPv4Interface:
    """Parse ``cidr`` (e.g. ``198.18.0.1/30``) and insist it lies in 198.18.0.0/15."""
    try:
        iface = ipaddress.IPv4Interface(cidr)
    except ValueError as e:
        raise NetnsError(f"bad address {cidr!r}: {e}") from e
    if "/" not in cidr:
        raise NetnsError(f"address {cidr!r} needs a prefix length")
    if iface.ip not in TEST_NET:
        raise NetnsError(f"address {cidr!r} is outside {TEST_NET}, the only range tests may use")
    return iface


def _ipr(ns: str | None) -> IPRoute:
    return IPRoute(netns=ns, flags=0) if ns else IPRoute()


def _index(ip: IPRoute, ifname: str, ns: str | None) -> int:
    found = ip.link_lookup(ifname=ifname)
    if not found:
        raise NetnsError(f"no interface {ifname!r} in netns {ns or '(current)'}")
    return found[0]


class NetLab:
    """Creates namespaces and veth pairs; :meth:`close` (or leaving the ``with``) removes them all."""

    def __init__(self, prefix: str = "vx"):
        if not prefix.isalnum() or len(prefix) > 6:
            raise NetnsError(f"prefix {prefix!r}: use up to 6 letters or digits")
        self.prefix = prefix
        self._tag = f"{os.getpid()}-{next(_seq)}"
        self._count = itertools.count()
        self.namespaces: list[str] = []
        self._links_here: list[str] = []  # veth ends we left in the caller's namespace

    def netns(self, name: str | None = None, *, ipv6: bool = True) -> str:
        """Create a namespace (a unique name unless given) with ``lo`` up; return its name.

        ``ipv6=False`` turns IPv6 off for every interface in it, present and future
        (``conf.all`` and ``conf.default``), so the kernel sends nothing of its own
        (router solicitations, MLD, DAD) on the links a test counts frames on.
        """
        name = name or f"{self.prefix}-{self._tag}-{next(self._count)}"
        try:
            pr_netns.create(name)
        except OSError as e:
            raise NetnsError(f"cannot create netns {name!r}: {e}") from e
        self.namespaces.append(name)
        with _ipr(name) as ip:
            ip.link("set", index=_index(ip, "lo", name), state="up")
        if not ipv6:
            for key in ("all", "default"):
                subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"],
                               check=True, capture_output=True)
        return name

    def veth(self, ns_a: str | None, ns_b: str | None, a: str = "vxa", b: str = "vxb", *,
             addr_a: str | None = None, addr_b: str | None = None, mtu: int | None = None,
             up: bool = True) -> VethPair:
        """A veth pair: ``a`` in ``ns_a``, ``b`` in ``ns_b`` (None = the caller's namespace), each
        with an optional address from 198.18.0.0/15, brought up."""
        for n in (a, b):
            if not n or len(n) >= IFNAMSIZ:
                raise NetnsError(f"interface name {n!r} must have 1..{IFNAMSIZ - 1} characters")
        cidrs = {end: check_test_cidr(c) for end, c in (("a", addr_a), ("b", addr_b)) if c}
        try:
            with _ipr(ns_a) as ip:
                ip.link("add", ifname=a, kind="veth", peer={"ifname": b})
                if ns_a is None:
                    self._links_here.append(a)
                if ns_b != ns_a:
                    b_idx = _index(ip, b, ns_a)
                    if ns_b is None:
                        ip.link("set", index=b_idx, net_ns_pid=os.getpid())
                    else:
                        ip.link("set", index=b_idx, net_ns_fd=ns_b)
            indexes = {}
            for end, ns, name in (("a", ns_a, a), ("b", ns_b, b)):
                with _ipr(ns) as ip:
                    idx = _index(ip, name, ns)
                    indexes[end] = idx
                    if mtu:
                        ip.link("set", index=idx, mtu=mtu)
                    if end in cidrs:
                        c = cidrs[end]
                        ip.addr("add", index=idx, address=str(c.ip), prefixlen=c.network.prefixlen)
                    if up:
                        ip.link("set", index=idx, state="up")
        except NetnsError:
            raise
        except Exception as e:  # pyroute2's NetlinkError and OSError: say what we were making
            raise NetnsError(f"cannot make veth {a}@{ns_a or '(current)'} <-> {b}@{ns_b or '(current)'}: "
                             f"{e}") from e
        return VethPair(ns_a, a, indexes["a"], ns_b, b, indexes["b"])

    def bridge(self, ns: str, name: str, ports: Sequence[str]) -> int:
        """A Linux bridge ``name`` in ``ns`` (STP off: ports forward at once) with ``ports`` (links already
        in ``ns``) enslaved, all up; it goes with its namespace. Returns its ifindex."""
        if not name or len(name) >= IFNAMSIZ:
            raise NetnsError(f"interface name {name!r} must have 1..{IFNAMSIZ - 1} characters")
        try:
            with _ipr(ns) as ip:
                ip.link("add", ifname=name, kind="bridge", br_stp_state=0)
                index = _index(ip, name, ns)
                for port in ports:
                    ip.link("set", index=_index(ip, port, ns), master=index)
                ip.link("set", index=index, state="up")
        except NetnsError:
            raise
        except Exception as e:  # pyroute2's NetlinkError and OSError: say what we were making
            raise NetnsError(f"cannot make bridge {name}@{ns} with {', '.join(ports)}: {e}") from e
        return index

    def run(self, ns: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """Call ``fn`` inside ``ns`` (on a thread of its own; see vxdp.bpf.kernel.netns)."""
        return run_in_netns(ns, fn, *args, **kwargs)

    def close(self) -> None:
        """Remove every namespace and link made here; never raises (teardown runs after failures)."""
        for name in reversed(self.namespaces):
            try:
                pr_netns.remove(name)
            except OSError:
                pass
        self.namespaces.clear()
        for ifname in self._links_here:
            try:
                with IPRoute() as ip:
                    found = ip.link_lookup(ifname=ifname)
                    if found:
                        ip.link("del", index=found[0])
            except Exception:  # noqa: BLE001, S110 - best effort: the link may already be gone
                pass
        self._links_here.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
