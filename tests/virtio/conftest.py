"""Fixtures of the virtio tests: real memfd guest memory (one region, or QEMU's two) over which
the driver half serves as the "ring mock over real memory" of rust-vmm's mock.rs."""

from __future__ import annotations

import os

import pytest
from ring_helpers import MEM_SIZE

from vxdp.virtio.memory import GuestMemory


@pytest.fixture
def mem():
    m = GuestMemory.allocate(MEM_SIZE)
    yield m
    m.close()


@pytest.fixture
def mem2():
    """QEMU's layout: two regions of one memfd (gpa 0 size 0xa0000, and 0xc0000 onward)."""
    fd = os.memfd_create("vxdp-test", os.MFD_CLOEXEC)
    os.ftruncate(fd, MEM_SIZE)
    fd2 = os.dup(fd)
    m = GuestMemory.from_regions([(fd, 0, 0xA0000, 0x7F0000000000, 0),
                                  (fd2, 0xC0000, MEM_SIZE - 0xC0000, 0x7F00000C0000, 0xC0000)])
    yield m
    m.close()
