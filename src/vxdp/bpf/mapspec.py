"""What a BPF map is before any engine creates it: type, sizes, flags, initial contents.

Every engine (host kernel, interpreter, JIT) creates its maps from a `MapSpec`,
and the object loader produces them from legacy ``maps`` sections, BTF ``.maps``
definitions and global-data sections alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum, IntEnum


class MapType(IntEnum):
    """Kernel map type ids (``enum bpf_map_type``); the ones vxdp runs are marked below."""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27
    INODE_STORAGE = 28
    TASK_STORAGE = 29
    BLOOM_FILTER = 30
    USER_RINGBUF = 31
    CGRP_STORAGE = 32
    ARENA = 33


PERCPU_TYPES = frozenset({MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH})
HASH_TYPES = frozenset({MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH})
ARRAY_TYPES = frozenset({MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.PROG_ARRAY})


class MapFlag(IntEnum):
    """``map_flags`` bits used here (uapi ``BPF_F_*``)."""

    NO_PREALLOC = 1 << 0
    NO_COMMON_LRU = 1 << 1
    RDONLY = 1 << 3
    WRONLY = 1 << 4
    MMAPABLE = 1 << 10
    RDONLY_PROG = 1 << 7
    WRONLY_PROG = 1 << 8


class UpdateFlag(IntEnum):
    """``flags`` of a map update (``BPF_ANY``, ``BPF_NOEXIST``, ``BPF_EXIST``)."""

    ANY = 0
    NOEXIST = 1
    EXIST = 2


class MapOrigin(Enum):
    """Where in the object a map was defined; global data maps behave differently at load."""

    LEGACY = "maps"  # struct bpf_map_def in SEC("maps")
    BTF = ".maps"  # BTF-defined, SEC(".maps")
    DATA = ".data"
    RODATA = ".rodata"
    BSS = ".bss"


@dataclass
class MapSpec:
    """A map as the object declares it.

    ``data`` is the initial content of a global-data map (one value of
    ``value_size`` bytes at key 0). ``prog_init`` maps prog_array slots to the
    name of the program a BTF ``.values`` initialiser puts there; the loader
    fills those slots after the programs are loaded, as libbpf does.
    """

    name: str
    type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    origin: MapOrigin = MapOrigin.BTF
    data: bytes | None = None
    prog_init: dict[int, str] = field(default_factory=dict)
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0
    pinning: int = 0  # BTF ``pinning`` attribute: 0 none, 1 LIBBPF_PIN_BY_NAME

    @property
    def is_percpu(self) -> bool:
        return self.type in PERCPU_TYPES

    def user_value_size(self, ncpus: int | None = None) -> int:
        """Bytes of one value as user space reads and writes it (a lookup, an update, the offload wire):
        every CPU's slot, each rounded up to 8 bytes, for a per-CPU map (``ncpus``: by default the possible
        CPUs); ``value_size`` otherwise, a prog_array's 4 included (a program id or fd to the kernel, a
        program handle on the wire). The one rule every engine, the device and every view use."""
        if self.is_percpu:
            return (possible_cpus() if ncpus is None else ncpus) * percpu_value_stride(self.value_size)
        return self.value_size

    @property
    def is_global_data(self) -> bool:
        return self.origin in (MapOrigin.DATA, MapOrigin.RODATA, MapOrigin.BSS)


def possible_cpus() -> int:
    """Number of possible CPUs, the multiplier of per-CPU values seen from user space."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    return count


def percpu_value_stride(value_size: int) -> int:
    """Bytes between two CPUs' values in a per-CPU lookup buffer (the kernel rounds to 8)."""
    return (value_size + 7) & ~7
