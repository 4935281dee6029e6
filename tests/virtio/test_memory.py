import fcntl
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from ring_helpers import MEM_SIZE

from vxdp.virtio.memory import (
    GPA_LIMIT,
    QEMU_SEALS,
    REGION_SLOTS,
    GuestMemory,
    GuestMemoryError,
    MemoryRegion,
)


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


def test_regions_table_for_compiled_loops(mem2):
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


# -- a peer's fds (from_regions): checked, sealed, guarded -------------------------------------
def _memfd(size: int, sealable: bool = False) -> int:
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING if sealable else 0)
    os.ftruncate(fd, size)
    return fd


@pytest.mark.parametrize("offset", [1 << 63, (1 << 64) - 0x1000])
def test_offset_overflowing_63_bits_refused_not_overflowerror(offset):
    fd = _memfd(0x1000)
    try:
        with pytest.raises(GuestMemoryError, match="63-bit"):
            GuestMemory.from_regions([(fd, 0, 0x1000, 0, offset)])
    finally:
        os.close(fd)


def test_fd_smaller_than_region_refused():
    fd = _memfd(0x1000)
    try:
        with pytest.raises(GuestMemoryError, match=r"holds 0x1000 bytes, the region needs 0x3000"):
            GuestMemory.from_regions([(fd, 0, 0x2000, 0, 0x1000)])
    finally:
        os.close(fd)


def test_fd_that_is_not_a_file_refused():
    fd = os.eventfd(0)
    try:
        with pytest.raises(GuestMemoryError, match="not a memfd or a file"):
            GuestMemory.from_regions([(fd, 0, 0x1000, 0, 0)])
    finally:
        os.close(fd)


def test_sealable_memfd_sealed_against_shrinking_unsealable_guarded():
    sealable, plain = _memfd(0x2000, sealable=True), _memfd(0x2000)
    mem = GuestMemory.from_regions([(sealable, 0, 0x2000, 0, 0), (plain, 0x10000, 0x2000, 0, 0)])
    try:
        assert fcntl.fcntl(sealable, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
        with pytest.raises(PermissionError):
            os.ftruncate(sealable, 0)
        assert mem.unsealed == 1 and all(r.guard is not None for r in mem.regions)
        assert mem.faults() == (0, 0)
    finally:
        mem.close()


def test_allocate_seals_like_qemu_by_default():
    m = GuestMemory.allocate(4096)
    try:
        assert fcntl.fcntl(m.fd, fcntl.F_GET_SEALS) == QEMU_SEALS
    finally:
        m.close()


def test_shrunk_fd_fault_is_absorbed_and_counted():
    """In a child process (a failure here is a SIGBUS, which must not take pytest down)."""
    code = (
        "import os\n"
        "from vxdp.virtio.memory import GuestMemory\n"
        "fd = os.memfd_create('t'); os.ftruncate(fd, 0x4000)\n"
        "mem = GuestMemory.from_regions([(fd, 0, 0x4000, 0, 0)])\n"
        "os.ftruncate(fd, 0)\n"
        "mem.write(0x1000, b'x' * 0x2000)\n"
        "assert mem.read(0x3000, 4) == bytes(4)  # an absorbed page reads as zeros\n"
        "n, addr = mem.faults()\n"
        "assert n >= 3 and mem.regions[0].array.ctypes.data <= addr, (n, addr)\n"
        "mem.close()\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_fault_outside_guarded_memory_still_kills():
    """Only a peer's guarded mappings are absorbed: any other SIGBUS is the bug it was."""
    code = (
        "import mmap, os\n"
        "from vxdp.virtio import sigbus\n"
        "sigbus.install()\n"
        "fd = os.memfd_create('t'); os.ftruncate(fd, 0x1000)\n"
        "m = mmap.mmap(fd, 0x1000); os.ftruncate(fd, 0)\n"
        "m[0]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGBUS
