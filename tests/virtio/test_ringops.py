"""The compiled loads and stores read and write a ring word in one access of its width.

Another process updates ``avail->idx`` and ``used->idx`` while we read them. A
word assembled from single bytes can be seen half old, half new: when the
index crosses a multiple of 256, the driver read ``0x01ff`` for ``0x00ff`` and
reaped used entries the device had not written (CI saw ``USED_ID`` against
DPDK's vhost backend). These tests look at what numba emits, which is the only
deterministic way to see the difference.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from numba import njit

from vxdp.virtio.ringops import rd16, rd32, wr16, wr32, wr64


@njit
def _load16(a, off):
    return rd16(a, off)


@njit
def _load32(a, off):
    return rd32(a, off)


@njit
def _store(a, off, v):
    wr16(a, off, v)
    wr32(a, off + 2, v)
    wr64(a, off + 8, v)


def _ir(fn) -> str:
    return fn.inspect_llvm(fn.signatures[0])


def test_values_round_trip_little_endian():
    a = np.zeros(32, np.uint8)
    _store(a, 4, 0x1122334455667788)
    assert a[4:6].tobytes() == (0x7788).to_bytes(2, "little")
    assert a[6:10].tobytes() == (0x55667788).to_bytes(4, "little")
    assert a[12:20].tobytes() == (0x1122334455667788).to_bytes(8, "little")
    assert _load16(a, 4) == 0x7788
    assert _load32(a, 6) == 0x55667788
    a[0:4] = 0xFF
    assert _load32(a, 0) == 0xFFFFFFFF  # zero-extended, not sign-extended
    assert _load16(a, 1) == 0xFFFF


@pytest.mark.parametrize("fn,width", [(_load16, 16), (_load32, 32)])
def test_a_load_is_one_access_of_its_width(fn, width):
    a = np.zeros(8, np.uint8)
    fn(a, 0)
    ir = _ir(fn)
    assert re.search(rf"load atomic i{width}, .* unordered", ir), "not a single-width load"
    assert not re.search(r"load i8, ", ir.split("define")[1]), "a byte-wise load is back"


def test_a_store_is_one_access_of_its_width():
    a = np.zeros(32, np.uint8)
    _store(a, 0, 1)
    ir = _ir(_store)
    for width in (16, 32, 64):
        assert re.search(rf"store atomic i{width} .* unordered", ir), f"no single {width}-bit store"
    assert not re.search(r"store i8 ", ir.split("define")[1])
