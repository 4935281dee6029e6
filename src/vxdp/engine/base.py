"""One interface for every execution engine: the host kernel, the interpreter, the JIT.

An engine offers three primitives: create a map from a `MapSpec`, load one
linked program whose map references already carry the engine's own map
handles, and run a loaded program on a packet. Everything above (loading a
whole object, filling prog_arrays, the CLI, the offload service) is written once
against these primitives, so engines differ only where they really differ.
Callers that keep objects one by one also get what an engine knows of a
program (`ProgramInfo`: id, name, tag) and the freeing of one map or program.

Maps speak `vxdp.bpf.mapapi.Map` on every engine (re-exported here), so
callers and tests cannot tell the engines apart.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass

import numpy as np

from ..bpf.isa import LDDW, Insn, PseudoSrc, XdpAction
from ..bpf.mapapi import Map
from ..bpf.mapspec import MapSpec
from ..frames import FrameBatch


@dataclass(frozen=True)
class XdpMd:
    """The fields of ``struct xdp_md`` a caller may set for a run (BPF_PROG_TEST_RUN's ctx_in).

    The defaults are what the kernel's test run uses without a context: the
    loopback device of the running namespace, receive queue 0. What the kernel
    accepts (``xdp_convert_md_to_buff``, ``bpf_prog_test_run_xdp``), and so every
    engine: ``ingress_ifindex`` 0 keeps that default device (a program reads the
    loopback's index, 1), otherwise it names a device of the caller's namespace
    (ENODEV if none) whose ``rx_queue_index`` must exist (EINVAL); a non-zero
    ``rx_queue_index`` needs a non-zero ``ingress_ifindex``; ``egress_ifindex``
    must be 0 (a test run has no egress device). ``meta_len`` is ctx_in's
    ``data``: the first ``meta_len`` bytes of the packet given are metadata
    (``data_meta`` .. ``data``), a multiple of 4 of at most 216 bytes (the headroom
    beside a ``struct xdp_frame``), and an Ethernet header must follow them.
    """

    ingress_ifindex: int = 1
    rx_queue_index: int = 0
    meta_len: int = 0
    egress_ifindex: int = 0


@dataclass
class RunResult:
    """What one program run (or the last of ``repeat`` runs) gave."""

    action: int  # the program's return value: an XdpAction for XDP programs
    packet: bytes  # the packet after the run, from data_meta to data_end (as BPF_PROG_TEST_RUN's data_out)
    duration_ns: float  # mean wall time of one run, as the engine measures it
    meta_len: int = 0  # how many of ``packet``'s first bytes are metadata (data - data_meta), not frame


@dataclass(frozen=True)
class ProgramInfo:
    """What an engine says about a loaded program, the same on every engine."""

    id: int  # what a user-space lookup of a prog_array slot holding the program answers
    name: str  # as the engine shows it (the kernel keeps 15 characters)
    tag: str  # 16 hex digits (`program_tag` for engines outside the kernel)


def program_tag(insns: list[Insn]) -> str:
    """The kernel's tag rule (``bpf_prog_calc_tag``, SHA-256 since 6.18): the first 8 bytes of the
    hash of the instructions with the map references of ``lddw`` zeroed, so the tag names the code,
    not the numbers its maps happen to have."""
    out, pc = bytearray(), 0
    while pc < len(insns):
        insn = insns[pc]
        if insn.code == LDDW and insn.src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_VALUE) and pc + 1 < len(insns):
            out += insn.replace(imm=0).encode() + insns[pc + 1].replace(imm=0).encode()
            pc += 2
            continue
        out += insn.encode()
        pc += 1
    return hashlib.sha256(bytes(out)).digest()[:8].hex()


class Engine(abc.ABC):
    """An execution engine: makes maps, loads programs, runs them on packets."""

    name: str
    prog_types: frozenset[int] | None = frozenset({6})
    """The program types (``enum bpf_prog_type``) it runs: XDP for every local engine. ``None``: the
    engine passes the type on and its far side decides (the offload device, under its policy)."""

    @abc.abstractmethod
    def create_map(self, spec: MapSpec) -> Map:
        """A new map as ``spec`` declares it, whole: ``spec.data`` written at key 0 and a
        ``.rodata`` map frozen (read-only to user space), as libbpf prepares global data."""

    @abc.abstractmethod
    def load_program(self, name: str, insns: list[Insn], *, license: str = "GPL", **extra: object) -> int:
        """Load resolved instructions; return the program handle prog_array values carry.

        ``extra`` passes what an engine may use and others ignore (BTF, func_info,
        line_info for the kernel; ``prog_type`` and ``section``, which the offload sends on). A refused program raises the engine's error,
        with the verifier log where there is one.
        """

    @abc.abstractmethod
    def run(self, prog: int, packet: bytes, *, repeat: int = 1, ctx: XdpMd | None = None) -> RunResult: ...

    def run_batch(self, prog: int, batch: FrameBatch, actions: np.ndarray, *, ctx: XdpMd | None = None) -> None:
        """Run ``prog`` once on each frame of ``batch``, each in a fresh XDP frame: frame ``i`` comes back
        rewritten in place (``lens[i]`` its new length) and its verdict in ``actions[i]``. A frame the
        program grew past the batch's slot is ABORTED, left as it came in. A fault ends that frame
        ABORTED, never the batch.

        This default runs `run` per frame (in Python: the reference engines, whose point is not
        speed); an engine that compiles programs overrides it with one native call per batch."""
        for i in range(batch.count):
            n = int(batch.lens[i])
            result = self.run(prog, batch.data[i, :n].tobytes(), ctx=ctx)
            out = result.packet[result.meta_len:]  # the metadata stays behind with the XDP frame
            if len(out) > batch.slot_size:
                actions[i] = XdpAction.ABORTED
                continue
            batch.data[i, : len(out)] = np.frombuffer(out, np.uint8)
            batch.lens[i] = len(out)
            actions[i] = result.action

    def program_info(self, prog: int) -> ProgramInfo:
        """The id, name and tag of a loaded program."""
        raise NotImplementedError(f"engine {self.name}: no program info")

    def free_map(self, m: Map) -> None:
        """Release one map this engine made, before `close` (the offload service frees objects one by one)."""
        m.close()

    def free_program(self, prog: int) -> None:
        """Release one program this engine loaded; an unknown handle is ignored."""

    def close(self) -> None:
        """Release every map and program this engine made."""


__all__ = ["Engine", "Map", "ProgramInfo", "RunResult", "XdpMd", "program_tag"]
