import os

import numpy as np
import pytest
from ring_helpers import MEM_SIZE

from vxdp.virtio.memory import GPA_LIMIT, REGION_SLOTS, GuestMemory, GuestMemoryError, MemoryRegion


def test_allocate_read_write_roundtrip(mem):
    mem.write(0x1234, b"hello")
    assert mem.read(0x1234, 5) == b"hello"
    mem.write_u64(0x2000, 0x1122334455667788)
    assert mem.read(0x2000, 8) == bytes.fromhex("8877665544332211")  # little-endian
    assert mem.read_u32(0x2000) == 0x55667788


def test_view_is_zero_copy(mem):
    v = mem.view(0x100, 4)
    v[:] = b"abcd"
    assert mem.read(0x100, 4) == b"abcd"
    mem.array(0x100, 2)[:] = 0
    assert bytes(v) == b"\0\0cd"


def test_two_mappings_of_one_memfd_share_bytes(mem):
    # the device maps the driver's fd from SET_MEM_TABLE data: both see the same bytes
    dev = GuestMemory.from_regions([(os.dup(mem.fd), 0, MEM_SIZE, 0, 0)])
    try:
        mem.write(0x5000, b"from the driver")
        assert dev.read(0x5000, 15) == b"from the driver"
        dev.write(0x6000, b"from the device")
        assert mem.read(0x6000, 15) == b"from the device"
    finally:
        dev.close()


@pytest.mark.parametrize("gpa,n", [
    (MEM_SIZE - 4, 5),  # runs off the end
    (MEM_SIZE, 1),
    (-1, 2),
    (0, -1),
    ((1 << 64) - 2, 4),  # gpa + n overflows 64 bits
    (1 << 64, 0),
])
def test_out_of_range_is_refused(mem, gpa, n):
    with pytest.raises(GuestMemoryError):
        mem.translate(gpa, n)
    with pytest.raises(GuestMemoryError):
        mem.read(gpa, n)
    if n > 0:
        with pytest.raises(GuestMemoryError):
            mem.write(gpa, b"x" * n)


def test_empty_range_at_end_is_allowed(mem):
    assert mem.translate(MEM_SIZE, 0) == (0, MEM_SIZE)


def test_range_crossing_regions_is_refused(mem2):
    # regions [0, 0xa0000) and [0xc0000, 1 MiB); the hole between is not memory, and even
    # adjacent regions would not be crossed
    assert mem2.translate(0x9FFF0, 0x10) == (0, 0x9FFF0)
    assert mem2.translate(0xC0000, 0x10) == (1, 0)
    for gpa, n in [(0x9FFF0, 0x11), (0xA0000, 1), (0xBFFFF, 2)]:
        with pytest.raises(GuestMemoryError, match="not inside one region"):
            mem2.translate(gpa, n)


def test_second_region_maps_at_its_mmap_offset(mem2):
    # region 1 starts at byte 0xc0000 of the fd; gpa 0xc0000 reads that byte of the file
    mem2.write(0xC0010, b"xyz")
    with open(f"/proc/self/fd/{mem2.regions[1].fd}", "rb") as f:
        f.seek(0xC0010)
        assert f.read(3) == b"xyz"


def test_uva_to_gpa(mem2):
    assert mem2.uva_to_gpa(0x7F00000C0100, 16) == 0xC0100
    assert mem2.uva_to_gpa(0x7F0000000000, 1) == 0
    with pytest.raises(GuestMemoryError):
        mem2.uva_to_gpa(0x7F00000A0000, 1)
    assert mem2.gpa_to_uva(0xC0100, 8) == 0x7F00000C0100


def test_overlapping_regions_refused():
    fd = os.memfd_create("t")
    os.ftruncate(fd, 0x3000)
    try:
        with pytest.raises(GuestMemoryError, match="overlap"):
            GuestMemory.from_regions([(os.dup(fd), 0, 0x2000, 0, 0), (os.dup(fd), 0x1000, 0x1000, 0, 0)])
    finally:
        os.close(fd)


def test_region_beyond_gpa_limit_refused():
    fd = os.memfd_create("t")
    os.ftruncate(fd, 0x1000)
    try:
        with pytest.raises(GuestMemoryError, match="limit"):
            GuestMemory([MemoryRegion(GPA_LIMIT - 0x800, 0x1000, 0, 0, fd)])
    finally:
        os.close(fd)


def test_empty_region_refused():
    fd = os.memfd_create("t")
    try:
        with pytest.raises(GuestMemoryError, match="empty"):
            GuestMemory([MemoryRegion(0, 0, 0, 0, fd)])
    finally:
        os.close(fd)


def test_regions_table_for_kernels(mem2):
    arrays, starts = mem2.regions_table()
    # padded to REGION_SLOTS with empty regions no address falls in: one kernel type for any table
    assert len(arrays) == len(starts) == REGION_SLOTS
    assert [a.size for a in arrays] == [0xA0000, MEM_SIZE - 0xC0000] + [0] * (REGION_SLOTS - 2)
    assert starts.dtype == np.int64 and list(starts[:2]) == [0, 0xC0000]
    assert all(s > 1 << 62 for s in starts[2:])
    mem2.write(0xC0001, b"\x7f")
    assert arrays[1][1] == 0x7F


def test_close_closes_owned_fds():
    m = GuestMemory.allocate(4096)
    fd = m.fd
    m.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    m.close()  # idempotent
