"""`JitEngine`: the `Engine` interface over LLVM-compiled programs and native maps.

A program loads only once our verifier accepts it (`analysis.observe` is that verifier,
taking notes for the code generator); it is then compiled to native code whose batch loop
(`batch`) runs many frames per call. `run` mirrors BPF_PROG_TEST_RUN as `InterpEngine.run`
does (same frame layout, same refusals of a bad packet or context, the result from
``data_meta`` to ``data_end``), as a batch of one frame; `run_frames` is the fast path: a
numpy array of frames and their offsets in, actions out, frames rewritten in place.

Handles are small integers from 1, and a program's id (what a user-space lookup of a
prog_array slot returns) is its handle, as in the interpreter. A run never raises for
anything the program does: a failed run-time check ends that packet as XDP_ABORTED,
counted in ``engine.faults``, its reason in ``engine.last_fault``.
"""

from __future__ import annotations

import ctypes
import errno
import random
from dataclasses import dataclass, field

import numpy as np

from ...bpf.isa import Insn
from ...bpf.mapapi import Map
from ...bpf.mapspec import MapSpec, possible_cpus
from ...frames import FrameBatch
from ..base import Engine, ProgramInfo, RunResult, XdpMd, program_tag
from ..interp.xdp import (
    LOOPBACK_IFINDEX,
    MAX_LINEAR,
    PAGE_SIZE,
    XDP_PACKET_HEADROOM,
    PacketSizeError,
    check_context,
)
from .analysis import Notes, observe
from .codegen import ModuleBuilder
from .compiler import Compiled, compile_module
from .context import CTX_WORDS, STACK_AREA, Ctx, FaultKind
from .irtypes import ARRAY, BATCH, ENTRY, PERCPU_ARRAY, PROG_ARRAY, MapRef
from .map_runtime import ADDRESSES
from .maps import make_native_map
from .staging import stage_in, stage_out

BATCH_FN = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int64,
                            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class JitError(ValueError):
    """A caller error at the engine boundary: unknown program handle, frames of the wrong shape."""


@dataclass
class JitRunResult(RunResult):
    """A `RunResult` that also says why the JIT'd code aborted the packet (``None`` if it did not)."""

    fault: str | None = None


@dataclass
class JitProgram:
    """A loaded program: its code, the maps it refers to (kept alive with it), its batch entry."""

    name: str
    handle: int
    insns: list[Insn]
    compiled: Compiled
    batch: object
    maps: list[Map] = field(default_factory=list)

    @property
    def entry(self) -> int:
        return self.compiled.addresses[ENTRY]


def map_ref(m: Map) -> MapRef:
    """What the code generator needs of a native map, read from its descriptor (`maps` contract)."""
    words = (ctypes.c_uint64 * 16).from_address(m.desc)
    kind, max_entries, ncpus, stride, values = words[0], words[3], words[4], words[5], words[6]
    region = None
    if kind == ARRAY:
        region = (values, values + max_entries * stride)
    elif kind == PERCPU_ARRAY:
        region = (values, values + ncpus * max_entries * stride)
    elif kind == PROG_ARRAY:
        region = (0, 0)  # never a value a program may touch
    else:  # hash maps: the preallocated pool of every element's values (word 15: slots per element)
        region = (values, values + max_entries * words[15] * stride)
    return MapRef(m.handle, m.desc, kind, values, max_entries, stride, ncpus, region)


class JitEngine(Engine):
    """Runs programs as native code. ``cpu`` is the CPU a program believes it runs on; ``seed`` seeds
    ``bpf_get_prandom_u32`` (reproducible runs)."""

    name = "jit"

    def __init__(self, *, cpu: int = 0, ncpus: int | None = None, seed: int | None = None):
        self.ncpus = ncpus or possible_cpus()
        self.cpu = cpu
        self.maps: dict[int, Map] = {}
        self.programs: dict[int, JitProgram] = {}
        self._retired: list[JitProgram] = []  # freed, but a prog_array slot may still point at its code
        self.ctx = np.zeros(CTX_WORDS, np.uint64)
        self.stack = np.zeros(STACK_AREA // 8, np.uint64)
        self.ctx[Ctx.STACK_BASE // 8] = self.stack.ctypes.data
        self._ctx_addr = self.ctx.ctypes.data
        self.ctx[Ctx.RNG // 8] = random.Random(seed).getrandbits(64) | 1
        self.faults = 0
        self.last_fault: str | None = None
        self.compile_ns: dict[int, int] = {}
        self._next_map = 1
        self._next_prog = 1
        self._stage: tuple[np.ndarray, np.ndarray] | None = None  # XDP pages for `run_batch`
        self._runners: dict[int, BatchRunner] = {}  # per program, over those pages

    # -- maps ---------------------------------------------------------------------------------
    def create_map(self, spec: MapSpec) -> Map:
        m = make_native_map(spec, self._next_map, ncpus=self.ncpus, resolve_prog=self._entry_of)
        self.maps[m.handle] = m
        self._next_map += 1
        return m

    def _entry_of(self, prog_id: int) -> int:
        p = self.programs.get(prog_id)
        if p is None:
            raise OSError(errno.EBADF, f"EBADF: no program with handle {prog_id}")
        return p.entry

    def free_map(self, m: Map) -> None:
        if self.maps.get(m.handle) is m:
            del self.maps[m.handle]
            if not any(m in p.maps for p in self.programs.values()):
                m.close()

    # -- programs -----------------------------------------------------------------------------
    def load_program(self, name: str, insns: list[Insn], *, license: str = "GPL", **extra: object) -> int:
        """Verify (raises `VerifierRejected` with the log), compile, and return the handle."""
        insns = list(insns)
        notes = observe(insns, self.maps, func_info=bool(extra.get("func_info")))
        return self.install(name, insns, notes)

    def install(self, name: str, insns: list[Insn], notes: Notes) -> int:
        """Compile ``insns`` with the verifier's ``notes`` already taken and return the handle.
        `load_program` is the door that verifies; the tests of the run-time checks come in here to
        model a verifier that was wrong (notes of one program, code of another)."""
        used = sorted({b.map for bases in notes.bases.values() for b in bases if b.map}
                      | {insn.imm for insn in insns if insn.code == 0x18 and insn.src in (1, 2)})
        refs = {h: map_ref(self.maps[h]) for h in used if h in self.maps}
        text = ModuleBuilder(name, insns, notes, refs, ADDRESSES).build()
        compiled = compile_module(text, [ENTRY, BATCH])
        handle = self._next_prog
        self._next_prog += 1
        self.programs[handle] = JitProgram(name, handle, insns, compiled, BATCH_FN(compiled.addresses[BATCH]),
                                           [self.maps[h] for h in refs])
        self.compile_ns[handle] = compiled.compile_ns
        return handle

    def program(self, prog: int) -> JitProgram:
        p = self.programs.get(prog)
        if p is None:
            raise JitError(f"no program with handle {prog}")
        return p

    def program_info(self, prog: int) -> ProgramInfo:
        p = self.program(prog)
        return ProgramInfo(p.handle, p.name, program_tag(p.insns))

    def free_program(self, prog: int) -> None:
        p = self.programs.pop(prog, None)
        self._runners.pop(prog, None)
        if p is not None:
            self._retired.append(p)

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()
        self._retired.extend(self.programs.values())
        self.programs.clear()

    # -- running ------------------------------------------------------------------------------
    def _set_ctx(self, ctx: XdpMd) -> None:
        if not 0 <= self.cpu < self.ncpus:  # inlined per-CPU lookups index by it: never past the storage
            raise JitError(f"cpu {self.cpu} is not one of the {self.ncpus} possible CPUs")
        c = self.ctx
        c[Ctx.INGRESS_IFINDEX // 8] = ((ctx.rx_queue_index & 0xFFFFFFFF) << 32) | (
            (ctx.ingress_ifindex or LOOPBACK_IFINDEX) & 0xFFFFFFFF)
        c[Ctx.EGRESS_IFINDEX // 8] = 0
        c[Ctx.CPU // 8] = self.cpu

    def batch_runner(self, prog: int, frames: np.ndarray, geometry: np.ndarray) -> BatchRunner:
        """A `BatchRunner` over arrays the caller keeps and refills (a ring of frames): the addresses
        are taken once, so each batch costs one native call."""
        p = self.program(prog)
        if frames.dtype != np.uint8 or frames.ndim != 2 or not frames.flags.c_contiguous or frames.shape[1] < PAGE_SIZE:
            raise JitError(f"frames must be a C-contiguous uint8 array of shape (n, >= {PAGE_SIZE})")
        n = frames.shape[0]
        if geometry.dtype != np.int32 or geometry.shape != (n, 3) or not geometry.flags.c_contiguous:
            raise JitError(f"geometry must be a C-contiguous int32 array of shape ({n}, 3)")
        return BatchRunner(self, p, frames, geometry, np.zeros(n, np.int32))

    def run_batch(self, prog: int, batch: FrameBatch, actions: np.ndarray, *, ctx: XdpMd | None = None) -> None:
        """`Engine.run_batch`: the batch's frames staged into XDP pages (`staging`), one native call for
        all of them, the results copied back; no Python per frame."""
        n = batch.count
        if n == 0:
            return
        pages, geometry = self._pages(n)
        stage_in(batch.data, batch.lens, n, pages, geometry)
        runner = self._runners.get(prog)
        if runner is None or runner.frames is not pages or runner.prog is not self.program(prog):
            runner = self._runners[prog] = self.batch_runner(prog, pages, geometry)
        raw = runner.run(n, ctx=ctx or XdpMd())
        stage_out(pages, geometry, raw, n, batch.data, batch.lens, actions)

    def _pages(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """XDP pages and their geometry for at least ``n`` frames, kept across batches."""
        if self._stage is None or self._stage[0].shape[0] < n:
            self._stage = (np.zeros((max(n, 64), PAGE_SIZE), np.uint8), np.zeros((max(n, 64), 3), np.int32))
            self._runners.clear()
        return self._stage

    def run_frames(self, prog: int, frames: np.ndarray, geometry: np.ndarray, *, ctx: XdpMd | None = None,
                   repeat: int = 1) -> np.ndarray:
        """Run ``prog`` on every frame of ``frames`` (uint8, shape (n, stride), C-contiguous) whose
        ``geometry`` (int32, shape (n, 3)) gives data_meta, data, data_end offsets; both are rewritten in
        place. Returns the actions (int32, shape (n,)); a faulted packet's is XDP_ABORTED."""
        return self.batch_runner(prog, frames, geometry).run(ctx=ctx or XdpMd(), repeat=repeat)

    def _finish(self, p: JitProgram, faults: int) -> None:
        self.faults += faults
        word = int(self.ctx[Ctx.LAST_FAULT // 8]) if faults else 0
        self.last_fault = describe_fault(p.name, word) if word else None

    def run(self, prog: int, packet: bytes, *, repeat: int = 1, ctx: XdpMd | None = None) -> JitRunResult:
        self.program(prog)
        ctx = ctx or XdpMd()
        packet = bytes(packet)
        check_context(len(packet), ctx.ingress_ifindex, ctx.rx_queue_index, ctx.meta_len, ctx.egress_ifindex)
        if len(packet) - ctx.meta_len < 14:
            raise PacketSizeError(f"packet of {len(packet) - ctx.meta_len} bytes after {ctx.meta_len} of metadata "
                                  "is shorter than an Ethernet header (14)")
        if len(packet) > MAX_LINEAR + ctx.meta_len:
            raise PacketSizeError(f"packet of {len(packet)} bytes exceeds the {MAX_LINEAR} linear bytes of a frame")
        frames = np.zeros((1, PAGE_SIZE), np.uint8)
        meta = XDP_PACKET_HEADROOM - ctx.meta_len
        frames[0, meta:meta + len(packet)] = np.frombuffer(packet, np.uint8)
        geometry = np.array([[meta, XDP_PACKET_HEADROOM, meta + len(packet)]], np.int32)
        actions = self.run_frames(prog, frames, geometry, ctx=ctx, repeat=repeat)
        lo, data, hi = (int(x) for x in geometry[0])
        elapsed = int(self.ctx[Ctx.ELAPSED_NS // 8])  # timed by the native loop, as the kernel's test run is
        return JitRunResult(int(actions[0]) & 0xFFFFFFFF, frames[0, lo:hi].tobytes(), elapsed / max(1, repeat),
                            data - lo, self.last_fault)


class BatchRunner:
    """One program over fixed arrays: ``run()`` runs the first ``n`` frames in one native call.

    ``frames``, ``geometry`` (data_meta, data, data_end offsets per frame) and ``actions`` are
    the caller's to fill and read between runs; the context (device, queue) stays as the last
    run that named one set it."""

    def __init__(self, engine: JitEngine, prog: JitProgram, frames: np.ndarray, geometry: np.ndarray,
                 actions: np.ndarray):
        self.engine, self.prog = engine, prog
        self.frames, self.geometry, self.actions = frames, geometry, actions
        self._args = (engine._ctx_addr, _address(frames), frames.shape[0], frames.shape[1], _address(geometry),
                      _address(actions))
        engine._set_ctx(XdpMd())

    def run(self, n: int | None = None, *, ctx: XdpMd | None = None, repeat: int = 1) -> np.ndarray:
        """Run the program on frames ``[0, n)`` (all by default); returns ``actions`` (the first n count)."""
        if ctx is not None:
            self.engine._set_ctx(ctx)
        a = self._args
        count = a[2] if n is None else max(0, min(n, a[2]))
        faults = self.prog.batch(a[0], a[1], count, a[3], a[4], a[5], max(1, repeat))
        if faults or self.engine.last_fault:
            self.engine._finish(self.prog, faults)
        return self.actions


def _address(a: np.ndarray) -> int:
    """The data address of an array (``a.ctypes.data`` costs microseconds; this does not)."""
    return a.__array_interface__["data"][0]


def describe_fault(name: str, word: int) -> str:
    """The fault word as a person reads it: program, instruction, reason."""
    kind = word & 0xFF
    reason = {FaultKind.ACCESS: "memory access outside every region the program may touch",
              FaultKind.HELPER: "helper refused its arguments"}.get(kind, f"fault {kind}")
    return f"{name}: pc {(word >> 8) - 1}: {reason}"


__all__ = ["BatchRunner", "JitEngine", "JitError", "JitProgram", "JitRunResult"]
