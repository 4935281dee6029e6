"""Fixtures for the kernel tests: veth pairs in fresh namespaces (programs are in kernel_asm.py).

Test modules import the fixtures by name. This is not a ``conftest.py`` on purpose: a second
conftest module on sys.path would shadow ``tests/conftest.py`` for the ``from conftest import``
other tests do.

Every namespace and veth is made here and removed in ``finally``, whatever the
test did; names carry our pid so parallel runs never collide.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute, netns

_seq = itertools.count()


@dataclass
class VethPair:
    """veth ``a`` in netns ``ns_a`` and its peer ``b`` in ``ns_b`` (the same netns if ``ns_b == ns_a``)."""

    ns_a: str
    a: str
    a_index: int
    ns_b: str
    b: str
    b_index: int


def _make_pair(two_netns: bool):
    tag = f"{os.getpid()}-{next(_seq)}"
    ns_a, ns_b = f"vxk-a-{tag}", (f"vxk-b-{tag}" if two_netns else f"vxk-a-{tag}")
    made: list[str] = []
    try:
        for ns in dict.fromkeys((ns_a, ns_b)):
            netns.create(ns)
            made.append(ns)
        with IPRoute(netns=ns_a, flags=0) as ip:
            ip.link("add", ifname="vxa", kind="veth", peer={"ifname": "vxb"})
            if two_netns:
                ip.link("set", index=ip.link_lookup(ifname="vxb")[0], net_ns_fd=ns_b)
            a_index = ip.link_lookup(ifname="vxa")[0]
            ip.addr("add", index=a_index, address="198.18.0.1", prefixlen=30)
            ip.link("set", index=a_index, state="up")
        with IPRoute(netns=ns_b, flags=0) as ip:
            b_index = ip.link_lookup(ifname="vxb")[0]
            ip.addr("add", index=b_index, address="198.18.0.2", prefixlen=30)
            ip.link("set", index=b_index, state="up")
        yield VethPair(ns_a, "vxa", a_index, ns_b, "vxb", b_index)
    finally:
        for ns in made:
            try:
                netns.remove(ns)  # deleting the netns deletes its veth end, and so the pair
            except OSError:
                pass


@pytest.fixture
def veth_pair():
    """A veth pair with both ends in one fresh netns."""
    yield from _make_pair(two_netns=False)


@pytest.fixture
def veth_pair_two_ns():
    """A veth pair whose ends sit in two fresh namespaces."""
    yield from _make_pair(two_netns=True)
