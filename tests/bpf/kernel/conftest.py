"""Fixtures for the kernel tests: veth pairs in fresh namespaces (programs are in kernel_asm.py).

Tests request them as parameters, as tests/virtio and tests/engine/interp do with theirs; nothing
may ``from conftest import`` (each directory's conftest.py is a module named ``conftest``), so
shared helpers live in modules named for what they hold, like kernel_asm.py.

Built on :class:`vxdp.testing.netns.NetLab`, which removes every namespace and veth it made
whatever the test did; names carry our pid so parallel runs never collide.
"""

from __future__ import annotations

import pytest

from vxdp.testing.netns import NetLab


def _make_pair(two_netns: bool):
    with NetLab(prefix="vxk") as lab:
        ns_a = lab.netns()
        ns_b = lab.netns() if two_netns else ns_a
        yield lab.veth(ns_a, ns_b, "vxa", "vxb", addr_a="198.18.0.1/30", addr_b="198.18.0.2/30")


@pytest.fixture
def veth_pair():
    """A veth pair with both ends in one fresh netns."""
    yield from _make_pair(two_netns=False)


@pytest.fixture
def veth_pair_two_ns():
    """A veth pair whose ends sit in two fresh namespaces."""
    yield from _make_pair(two_netns=True)
