"""One interface for every execution engine: the host kernel, the interpreter, the JIT.

An engine offers three primitives: create a map from a `MapSpec`, load one
linked program whose map references already carry the engine's own map
handles, and run a loaded program on a packet. Everything above (loading a
whole object, filling prog_arrays, the CLI, the offload service) is written once
against these primitives, so engines differ only where they really differ.

Maps speak the user-space side of the kernel's map API on every engine: keys
and values are bytes, a lookup of a missing key is ``None``, per-CPU values are
one slot per possible CPU, each ``round_up(value_size, 8)`` bytes, and errors
are `OSError` with the errno the kernel would give (ENOENT, EEXIST, E2BIG,
EINVAL), so callers and tests cannot tell the engines apart.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

from ..bpf.isa import Insn
from ..bpf.mapspec import MapSpec, UpdateFlag


@dataclass(frozen=True)
class XdpMd:
    """The fields of ``struct xdp_md`` a caller may set for a run (BPF_PROG_TEST_RUN's ctx_in).

    The defaults are what the kernel's test run uses without a context: the
    loopback device of the running namespace, receive queue 0.
    """

    ingress_ifindex: int = 1
    rx_queue_index: int = 0


@dataclass
class RunResult:
    """What one program run (or the last of ``repeat`` runs) gave."""

    action: int  # the program's return value: an XdpAction for XDP programs
    packet: bytes  # the packet after the run, from data to data_end
    duration_ns: float  # mean wall time of one run, as the engine measures it


class Map(abc.ABC):
    """A created map, the same API on every engine."""

    spec: MapSpec
    handle: int  # what lddw MAP_FD carries for this engine: a kernel fd, an interpreter slot

    @abc.abstractmethod
    def lookup(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def update(self, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None: ...

    @abc.abstractmethod
    def delete(self, key: bytes) -> None:
        """Raises ``OSError(ENOENT)`` for a missing key, ``OSError(EINVAL)`` on arrays."""

    @abc.abstractmethod
    def next_key(self, key: bytes | None) -> bytes | None:
        """The key after ``key`` (the first with ``None``); ``None`` at the end."""

    def keys(self) -> Iterator[bytes]:
        key = self.next_key(None)
        seen = 0
        while key is not None and seen <= self.spec.max_entries:
            yield key
            seen += 1
            key = self.next_key(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def close(self) -> None:
        """Release what the map holds (a kernel fd); idempotent."""


class Engine(abc.ABC):
    """An execution engine: makes maps, loads programs, runs them on packets."""

    name: str

    @abc.abstractmethod
    def create_map(self, spec: MapSpec) -> Map:
        """A new map as ``spec`` declares it, whole: ``spec.data`` written at key 0 and a
        ``.rodata`` map frozen (read-only to user space), as libbpf prepares global data."""

    @abc.abstractmethod
    def load_program(self, name: str, insns: list[Insn], *, license: str = "GPL", **extra: object) -> int:
        """Load resolved instructions; return the program handle prog_array values carry.

        ``extra`` passes what an engine may use and others ignore (BTF, func_info,
        line_info for the kernel). A refused program raises the engine's error,
        with the verifier log where there is one.
        """

    @abc.abstractmethod
    def run(self, prog: int, packet: bytes, *, repeat: int = 1, ctx: XdpMd | None = None) -> RunResult: ...

    def close(self) -> None:
        """Release every map and program this engine made."""
