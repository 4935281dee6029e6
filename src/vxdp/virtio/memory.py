"""Guest memory: memfd-backed regions, guest-physical -> local translation, bounds-checked.

Both halves of a virtio device see the same bytes: the driver (our guest, or a
QEMU VM) allocates its RAM as a memfd and hands the fd to the device over
vhost-user (SET_MEM_TABLE), and each side mmaps it. Everything the device reads
is therefore written by a party it must not trust, so every access goes through
:meth:`GuestMemory.translate`, which refuses any range that is not wholly inside
one region. A range crossing from one region into the next is refused too,
even where the regions happen to be adjacent: keeping each access inside one
mapping is what lets the compiled loops (``vxdp.virtio.fastring``) copy with
plain slices of one numpy array.

Guest-physical addresses at or above ``GPA_LIMIT`` (2**62) are refused when
regions are built. The compiled loops rely on that: any 64-bit descriptor
address at or above the limit is out of memory, and every other one fits an
int64 with room for a 32-bit length on top, so the bounds arithmetic can never
wrap.

A peer's fd is checked before it is mapped (`MemoryRegion.map`, ``peer=True``): it must be a
regular file (memfd, tmpfs, hugetlbfs: fstat tells their size) holding at least
``mmap_offset + size`` bytes, offsets and sizes are checked to fit a 63-bit file offset (no
OverflowError can reach the caller), and a sealable memfd gets F_SEAL_SHRINK. A peer can still
shrink an fd it did not let us seal: `vxdp.virtio.sigbus` absorbs the SIGBUS that follows and
`GuestMemory.faults` tells the device to end the session (see that module for why).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import mmap
import os
import stat
from dataclasses import dataclass, field
from typing import Self

import numpy as np

from . import sigbus

GPA_LIMIT = 1 << 62
# regions a compiled loop takes (vhost-user's VHOST_MEMORY_BASELINE_NREGIONS); see `regions_table`
REGION_SLOTS = 8
_NO_REGION = np.zeros(0, np.uint8)  # an empty region: no address falls in it
_NO_GPA = np.iinfo(np.int64).max
U64_MAX = (1 << 64) - 1
OFF_MAX = (1 << 63) - 1  # off_t and Py_ssize_t: an mmap's offset + length must fit
# what our driver seals its memory with, as QEMU's memory-backend-memfd does (seal=on)
QEMU_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


class GuestMemoryError(Exception):
    """An access (or a region table) that does not fit guest memory."""


@dataclass
class MemoryRegion:
    """One region of guest memory and its local mapping.

    ``mapping`` maps ``size + mmap_offset`` bytes of ``fd`` (vhost-user's
    mmap_offset says where in the fd the region starts); ``array`` is the
    uint8 view of the region's own bytes ``[mmap_offset, mmap_offset + size)``.
    """

    guest_phys_addr: int
    size: int
    userspace_addr: int
    mmap_offset: int
    fd: int | None
    mapping: mmap.mmap | None = field(default=None, repr=False)
    array: np.ndarray | None = field(default=None, repr=False)
    guard: int | None = field(default=None, repr=False)  # `sigbus` slot of a peer's mapping
    sealed: bool = False  # the fd cannot shrink (F_SEAL_SHRINK, ours or the peer's)

    @property
    def end(self) -> int:
        return self.guest_phys_addr + self.size

    def _what(self) -> str:
        return f"region gpa {self.guest_phys_addr:#x} size {self.size:#x} offset {self.mmap_offset:#x}"

    def check_fd(self) -> None:
        """A peer's fd: a regular file at least ``mmap_offset + size`` long, sealed against
        shrinking when it can be (see the module docstring)."""
        need = self.mmap_offset + self.size
        if need > OFF_MAX:
            raise GuestMemoryError(f"{self._what()}: offset + size beyond a 63-bit file offset")
        try:
            st = os.fstat(self.fd)
        except OSError as e:
            raise GuestMemoryError(f"{self._what()}: fd {self.fd}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise GuestMemoryError(f"{self._what()}: fd {self.fd} is not a memfd or a file "
                                   f"(mode {stat.filemode(st.st_mode)}): its size cannot be checked")
        if st.st_size < need:
            raise GuestMemoryError(f"{self._what()}: the fd holds {st.st_size:#x} bytes, the region "
                                   f"needs {need:#x} (mapping it would fault on access)")
        try:
            seals = fcntl.fcntl(self.fd, fcntl.F_GET_SEALS)
            if not seals & fcntl.F_SEAL_SHRINK and not seals & fcntl.F_SEAL_SEAL:
                fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
                seals |= fcntl.F_SEAL_SHRINK
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):  # not a memfd / sealing not allowed
                raise GuestMemoryError(f"{self._what()}: sealing fd {self.fd}: {e.strerror}") from None
            seals = 0
        self.sealed = bool(seals & fcntl.F_SEAL_SHRINK)
        if os.fstat(self.fd).st_size < need:  # shrunk between the check and the seal
            raise GuestMemoryError(f"{self._what()}: the fd shrank while it was being checked")

    def map(self, peer: bool = False) -> None:
        """mmap the region's fd shared and read-write (the device writes rx buffers and used rings).
        ``peer``: the fd is another party's (`check_fd` first; the mapping is guarded against SIGBUS)."""
        if self.fd is None:
            raise GuestMemoryError(f"region at gpa {self.guest_phys_addr:#x} has no fd to map")
        if peer:
            self.check_fd()
        try:
            self.mapping = mmap.mmap(self.fd, self.size + self.mmap_offset, mmap.MAP_SHARED,
                                     mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError, OverflowError) as e:
            raise GuestMemoryError(f"cannot map {self._what()} of fd {self.fd}: {e}") from None
        self.array = np.frombuffer(self.mapping, np.uint8, count=self.size, offset=self.mmap_offset)
        if peer:
            start = self.array.__array_interface__["data"][0]
            try:
                self.guard = sigbus.register(start, start + self.size)
            except sigbus.GuardFull as e:
                self.unmap()
                raise GuestMemoryError(f"cannot guard {self._what()}: {e}") from None

    def unmap(self) -> None:
        self.array = None
        if self.guard is not None:
            sigbus.unregister(self.guard)
            self.guard = None
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:
                pass  # a view is still exported; the mapping goes when it does
            self.mapping = None


def _check_regions(regions: list[MemoryRegion]) -> None:
    if not regions:
        raise GuestMemoryError("guest memory needs at least one region")
    spans = []
    for i, r in enumerate(regions):
        if r.size <= 0 or r.guest_phys_addr < 0 or r.mmap_offset < 0 or r.userspace_addr < 0:
            raise GuestMemoryError(f"region {i}: negative or empty ({r})")
        if r.mmap_offset + r.size > OFF_MAX:
            raise GuestMemoryError(f"region {i}: mmap offset {r.mmap_offset:#x} + size {r.size:#x} "
                                   f"beyond a 63-bit file offset")
        if r.end > GPA_LIMIT:
            raise GuestMemoryError(f"region {i}: gpa end {r.end:#x} beyond the supported limit {GPA_LIMIT:#x}")
        if r.userspace_addr + r.size > U64_MAX + 1:
            raise GuestMemoryError(f"region {i}: userspace address range overflows 64 bits")
        spans.append((r.guest_phys_addr, r.end, i))
    spans.sort()
    for (_, end_a, ia), (start_b, _, ib) in itertools.pairwise(spans):
        if start_b < end_a:
            raise GuestMemoryError(f"regions {ia} and {ib} overlap in guest-physical space")


class GuestMemory:
    """The regions of one guest's memory; every access is bounds-checked against them."""

    def __init__(self, regions: list[MemoryRegion], peer: bool = False):
        _check_regions(regions)
        for r in regions:
            if r.array is None:
                r.map(peer)
        self.regions = regions
        self._owned_fds: list[int] = []
        self._closed = False

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def allocate(cls, size: int, gpa: int = 0, name: str = "vxdp-guest",
                 seals: int | None = QEMU_SEALS) -> GuestMemory:
        """Driver side: one fresh memfd of ``size`` bytes at guest-physical ``gpa``.

        The fd (``fd`` property) is what the frontend sends in SET_MEM_TABLE;
        ``userspace_addr`` is our own mapping's address, as QEMU reports its own.
        ``seals``: added to the memfd (QEMU's defaults); 0 leaves it sealable by the device,
        None makes an unsealable memfd (QEMU's ``seal=off``).
        """
        if size <= 0:
            raise GuestMemoryError(f"cannot allocate {size} bytes of guest memory")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | (0 if seals is None else os.MFD_ALLOW_SEALING))
        try:
            os.ftruncate(fd, size)
            if seals:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            region = MemoryRegion(gpa, size, 0, 0, fd)
            region.map()
            region.userspace_addr = region.array.__array_interface__["data"][0]
            mem = cls([region])
        except BaseException:
            os.close(fd)
            raise
        mem._owned_fds.append(fd)
        return mem

    @classmethod
    def from_regions(cls, specs: list[tuple[int, int, int, int, int]]) -> GuestMemory:
        """Device side, from SET_MEM_TABLE: ``specs`` are ``(fd, gpa, size, uva, mmap_offset)``.

        The memory takes ownership of the fds and closes them in :meth:`close`
        (the mappings would survive closing them, but keeping them lets a
        reconnecting peer be compared and makes ownership plain). The fds are the
        peer's: checked, sealed where possible and guarded (module docstring).
        """
        regions = [MemoryRegion(gpa, size, uva, off, fd) for fd, gpa, size, uva, off in specs]
        try:
            mem = cls(regions, peer=True)
        except BaseException:
            for r in regions:
                r.unmap()
            raise
        mem._owned_fds.extend(fd for fd, *_ in specs)
        return mem

    def faults(self) -> tuple[int, int]:
        """(SIGBUS faults absorbed in our mappings, the last faulting address): non-zero means the
        peer shrank a region's fd under us and the session must end (`vxdp.virtio.sigbus`)."""
        n, last = 0, 0
        for r in self.regions:
            if r.guard is not None:
                k, a = sigbus.slot_faults(r.guard)
                n, last = n + k, (a if k else last)
        return n, last

    @property
    def unsealed(self) -> int:
        """Regions whose fd the peer can still shrink (neither it nor we could seal it)."""
        return sum(1 for r in self.regions if r.guard is not None and not r.sealed)

    @property
    def fd(self) -> int:
        """The fd of the first region (the driver's single memfd)."""
        return self.regions[0].fd

    # -- translation --------------------------------------------------------------------------
    def translate(self, gpa: int, n: int) -> tuple[int, int]:
        """``(region index, offset into region.array)`` of ``[gpa, gpa+n)``, or GuestMemoryError.

        An empty range (n == 0) is accepted at any address from a region's start
        to its end inclusive (the same rule the compiled loops apply).
        """
        if n < 0 or gpa < 0 or gpa + n > U64_MAX + 1 or gpa > U64_MAX:
            raise GuestMemoryError(f"bad range gpa {gpa:#x} len {n}")
        for i, r in enumerate(self.regions):
            if r.guest_phys_addr <= gpa and gpa + n <= r.end and (n == 0 or gpa < r.end):
                return i, gpa - r.guest_phys_addr
        raise GuestMemoryError(f"range gpa {gpa:#x} len {n} is not inside one region of guest memory")

    def uva_to_gpa(self, uva: int, n: int) -> int:
        """Translate the frontend's virtual address (SET_VRING_ADDR) to a guest-physical one."""
        if n < 0 or uva < 0:
            raise GuestMemoryError(f"bad range uva {uva:#x} len {n}")
        for r in self.regions:
            if r.userspace_addr <= uva and uva + n <= r.userspace_addr + r.size:
                return r.guest_phys_addr + (uva - r.userspace_addr)
        raise GuestMemoryError(f"range uva {uva:#x} len {n} is not inside one region's userspace mapping")

    def gpa_to_uva(self, gpa: int, n: int) -> int:
        i, off = self.translate(gpa, n)
        return self.regions[i].userspace_addr + off

    # -- access -------------------------------------------------------------------------------
    def view(self, gpa: int, n: int) -> memoryview:
        """A zero-copy writable view of ``[gpa, gpa+n)``."""
        i, off = self.translate(gpa, n)
        return memoryview(self.regions[i].array[off:off + n])

    def array(self, gpa: int, n: int) -> np.ndarray:
        """A zero-copy uint8 numpy view of ``[gpa, gpa+n)``."""
        i, off = self.translate(gpa, n)
        return self.regions[i].array[off:off + n]

    def read(self, gpa: int, n: int) -> bytes:
        i, off = self.translate(gpa, n)
        return self.regions[i].array[off:off + n].tobytes()

    def write(self, gpa: int, data: bytes) -> None:
        i, off = self.translate(gpa, len(data))
        self.regions[i].array[off:off + len(data)] = np.frombuffer(bytes(data), np.uint8)

    # Fixed-width words go through a typed numpy view, so each is one load or
    # store of its width (numpy's aligned scalar path), as ``ringops.rd16`` is
    # in compiled code: a ring index the other process is updating is never
    # read or written half at a time, as a byte-wise copy could.
    def _word(self, gpa: int, dtype: str) -> np.ndarray:
        n = np.dtype(dtype).itemsize
        i, off = self.translate(gpa, n)
        return self.regions[i].array[off:off + n].view(dtype)

    def read_u16(self, gpa: int) -> int:
        return int(self._word(gpa, "<u2")[0])

    def read_u32(self, gpa: int) -> int:
        return int(self._word(gpa, "<u4")[0])

    def read_u64(self, gpa: int) -> int:
        return int(self._word(gpa, "<u8")[0])

    def write_u16(self, gpa: int, v: int) -> None:
        self._word(gpa, "<u2")[0] = v & 0xFFFF

    def write_u32(self, gpa: int, v: int) -> None:
        self._word(gpa, "<u4")[0] = v & 0xFFFFFFFF

    def write_u64(self, gpa: int, v: int) -> None:
        self._word(gpa, "<u8")[0] = v & U64_MAX

    # -- for compiled loops -----------------------------------------------------------------
    def regions_table(self) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """``(arrays, starts)``: a tuple of each region's uint8 array and an int64 array of their gpas,
        padded to `REGION_SLOTS` entries with empty regions that hold no address.

        numba takes a homogeneous tuple of arrays as it is; a compiled loop finds the
        region whose ``[starts[i], starts[i] + arrays[i].size)`` holds a range.
        Why the padding: the tuple's length is part of a compiled loop's type, so one
        region (our driver) and two (QEMU) would be two compiles; at one fixed
        length the loops are compiled once, before a daemon serves
        (`vxdp.jitcache`), whatever the frontend's memory table looks like.
        """
        if len(self.regions) > REGION_SLOTS:
            raise GuestMemoryError(f"{len(self.regions)} memory regions (at most {REGION_SLOTS})")
        pad = REGION_SLOTS - len(self.regions)
        arrays = tuple(r.array for r in self.regions) + (_NO_REGION,) * pad
        starts = np.array([r.guest_phys_addr for r in self.regions] + [_NO_GPA] * pad, dtype=np.int64)
        return arrays, starts

    def close(self) -> None:
        """Unmap every region and close the fds we own. Views still alive keep their mapping."""
        if self._closed:
            return
        self._closed = True
        for r in self.regions:
            r.unmap()
        for fd in self._owned_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._owned_fds = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
