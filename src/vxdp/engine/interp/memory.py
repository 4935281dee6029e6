"""The interpreter's address space: every pointer a program holds is checked on every access.

A pointer is a plain 64-bit value, ``region_id << 32 | offset``. Region 0 is
never mapped, so NULL and small integers fault. The fixed regions are the XDP
context, the packet frame, a pseudo-region whose "offsets" are map handles
(what ``lddw MAP_FD`` gives), one 512-byte stack per call frame, and a pseudo-region
of function addresses (``lddw FUNC``, for callbacks); map values
get a region the first time a program receives a pointer to them, for the rest
of that run. Because the kernel verifier proves every access safe before a
program runs and we have no verifier, these checks are what keeps a buggy or
hostile program from touching anything but its own memory: a bad access raises
`Fault`, which the machine turns into XDP_ABORTED.

Each region has a live window ``[lo, hi)`` inside its buffer. For the packet it
is ``[data_meta, data_end)`` and moves when the program calls
``bpf_xdp_adjust_head/meta/tail``, so bytes in the headroom or tailroom are
unreachable exactly as the verifier's packet-range checks make them.
"""

from __future__ import annotations

import struct

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF

NULL_RID = 0
CTX_RID = 1
PKT_RID = 2
MAPS_RID = 3  # offsets are map handles: pointers to map objects, never dereferenced
STACK_RID = 4  # frames 0..MAX_CALL_FRAMES-1 follow
MAX_CALL_FRAMES = 8  # the kernel's MAX_CALL_FRAMES: the main program plus 7 nested calls
STACK_SIZE = 512
FUNC_RID = STACK_RID + MAX_CALL_FRAMES  # offsets are instruction indexes: what ``lddw FUNC`` gives
FIRST_VALUE_RID = FUNC_RID + 1

CTX_SIZE = 24  # sizeof(struct xdp_md)

# Unsigned little-endian codecs by access width; the sign-extending loads reuse the signed ones.
UNPACK = {1: struct.Struct("<B").unpack_from, 2: struct.Struct("<H").unpack_from,
          4: struct.Struct("<I").unpack_from, 8: struct.Struct("<Q").unpack_from}
UNPACK_SIGNED = {1: struct.Struct("<b").unpack_from, 2: struct.Struct("<h").unpack_from,
                 4: struct.Struct("<i").unpack_from, 8: struct.Struct("<q").unpack_from}
PACK = {1: struct.Struct("<B").pack_into, 2: struct.Struct("<H").pack_into,
        4: struct.Struct("<I").pack_into, 8: struct.Struct("<Q").pack_into}
MASK = {1: 0xFF, 2: 0xFFFF, 4: M32, 8: M64}


class Fault(Exception):
    """A program did something the kernel's verifier would have refused; the run ends ABORTED."""


class Region:
    """A buffer a program may address, with its live window and whether stores are allowed."""

    __slots__ = ("buf", "hi", "lo", "name", "writable")

    def __init__(self, name: str, buf: bytearray, lo: int, hi: int, writable: bool):
        self.name = name
        self.buf = buf
        self.lo = lo
        self.hi = hi
        self.writable = writable


def ptr(rid: int, off: int) -> int:
    """The pointer value for ``off`` bytes into region ``rid``."""
    return (rid << 32) | off


class Memory:
    """The regions of one engine, and bounds-checked loads and stores over them."""

    def __init__(self) -> None:
        self.regions: list[Region] = [
            Region("null", bytearray(), 0, 0, False),
            Region("ctx", bytearray(CTX_SIZE), 0, CTX_SIZE, False),
            Region("packet", bytearray(), 0, 0, True),
            Region("map object", bytearray(), 0, 0, False),
        ]
        for i in range(MAX_CALL_FRAMES):
            self.regions.append(Region(f"stack frame {i}", bytearray(STACK_SIZE), 0, STACK_SIZE, True))
        self.regions.append(Region("function", bytearray(), 0, 0, False))
        self._value_rids: dict[int, int] = {}  # id(value bytearray) -> region id, for this run
        self.ctx_fields: list[int] = [0] * (CTX_SIZE // 4)  # what a 4-byte ctx load at 4*i gives

    def reset_values(self) -> None:
        """Forget the map-value regions of the previous run (no pointer survives a run)."""
        del self.regions[FIRST_VALUE_RID:]
        self._value_rids.clear()

    def value_ptr(self, buf: bytearray, writable: bool = True, name: str = "map value") -> int:
        """A pointer to the start of a map value, aliasing the stored bytes."""
        rid = self._value_rids.get(id(buf))
        if rid is None or self.regions[rid].buf is not buf:
            rid = len(self.regions)
            self.regions.append(Region(name, buf, 0, len(buf), writable))
            self._value_rids[id(buf)] = rid
        return rid << 32

    def _region(self, addr: int, size: int, what: str) -> tuple[Region, int]:
        rid = addr >> 32
        off = addr & M32
        regions = self.regions
        if rid >= len(regions) or rid == NULL_RID:
            raise Fault(f"{what} of {size} bytes at {addr:#x}: not in any region")
        region = regions[rid]
        if off < region.lo or off + size > region.hi:
            raise Fault(f"{what} of {size} bytes at {region.name}+{off}: outside [{region.lo}, {region.hi})")
        return region, off

    def load(self, addr: int, size: int) -> int:
        """The unsigned value of ``size`` bytes at ``addr``."""
        if addr >> 32 == CTX_RID:
            return self.ctx_load(addr & M32, size)
        region, off = self._region(addr, size, "load")
        return UNPACK[size](region.buf, off)[0]

    def load_signed(self, addr: int, size: int) -> int:
        """The sign-extended value (as unsigned 64-bit) of ``size`` bytes at ``addr`` (LDX MEMSX)."""
        if addr >> 32 == CTX_RID:
            raise Fault(f"sign-extending load from ctx+{addr & M32}")
        region, off = self._region(addr, size, "load")
        return UNPACK_SIGNED[size](region.buf, off)[0] & M64

    def store(self, addr: int, size: int, value: int) -> None:
        """Store the low ``size`` bytes of ``value`` at ``addr``."""
        region, off = self._region(addr, size, "store")
        if not region.writable:
            raise Fault(f"store of {size} bytes to read-only {region.name}+{off}")
        PACK[size](region.buf, off, value & MASK[size])

    def ctx_load(self, off: int, size: int) -> int:
        """A load from ``struct xdp_md``: the verifier's rewrite makes data/data_end/data_meta pointers."""
        if size != 4 or off % 4 or not 0 <= off < CTX_SIZE:
            raise Fault(f"ctx access of {size} bytes at offset {off}: only aligned u32 fields")
        if off == 20:  # the kernel refuses it unless expected_attach_type is BPF_XDP_DEVMAP
            raise Fault("ctx access to egress_ifindex: only devmap programs may read it")
        return self.ctx_fields[off // 4]

    def read(self, addr: int, size: int, what: str = "read") -> bytes:
        """``size`` bytes at ``addr`` for a helper argument."""
        if size == 0:
            return b""
        if addr >> 32 == CTX_RID:
            raise Fault(f"{what}: helper memory argument points into ctx")
        region, off = self._region(addr, size, what)
        return bytes(region.buf[off:off + size])

    def write(self, addr: int, data: bytes, what: str = "write") -> None:
        """Copy ``data`` to ``addr`` for a helper's output argument."""
        if not data:
            return
        region, off = self._region(addr, len(data), what)
        if not region.writable:
            raise Fault(f"{what}: helper writes to read-only {region.name}")
        region.buf[off:off + len(data)] = data
