"""The kernel engine: maps and programs live in the host kernel, verified and JIT-compiled there.

This is the engine the offload service attaches to a host port; for ``prog
run`` and the differential tests it runs programs through
``BPF_PROG_TEST_RUN``, which gives the same XDP buffer geometry every run and
makes the kernel the oracle the other engines are checked against.

A program's BTF (when the object has one) goes in with its func_info and
line_info, so ``bpftool prog dump`` shows source lines. A kernel that refuses
the BTF still gets the program, without BTF, as libbpf does when BTF is
optional; a program the verifier refuses raises `VerifierError` with the log.

BTF objects are shared by the programs loaded with the same blob and counted:
the last `free_program` of those closes it, so a guest sending a new blob with
every load holds one BTF object per live program, never one per load. A blob
the kernel refused is not kept at all (its programs load without BTF).

Closing a prog_array (`free_map`, `close`): the kernel empties it in a deferred
work item once its last fd closes, taking a map reference for that work; if
another user reference (anyone's ``BPF_MAP_GET_FD_BY_ID``, ``bpftool map show``)
is dropped before that work ran, the kernel (6.18) queues the already-queued
work again and leaks that reference, so the empty array lives forever
(``prog_array_map_clear`` ignores ``schedule_work``'s answer). So we put a
*sentinel* program, held only by the array, at index 0 before the last close and
wait (bounded) until the kernel's clear freed it: from then on, nobody opening
the array can make it leak. A frozen array cannot take the sentinel and is closed
as it is.
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass

from ..bpf.isa import Insn, XdpAction, verdict_program
from ..bpf.kernel.btf import KernelBtf
from ..bpf.kernel.maps import KernelMap
from ..bpf.kernel.objects import prog_get_next_id
from ..bpf.kernel.prog import KernelProgram
from ..bpf.kernel.syscall import BpfError
from ..bpf.mapapi import Map
from ..bpf.mapspec import MapSpec, MapType
from .base import Engine, ProgramInfo, RunResult, XdpMd

log = logging.getLogger(__name__)

PROG_TYPE_XDP = 6
KERNEL_NAME_SHOWN = 14  # BPF_OBJ_NAME_LEN - 2: the longest program name bpftool shows as it is
CLEAR_WAIT = 2.0  # seconds a prog_array close waits for the kernel's deferred clear
_SENTINEL = verdict_program(XdpAction.PASS)


@dataclass
class _Btf:
    """One loaded BTF blob and how many live programs use it."""

    btf: KernelBtf
    users: int = 0


class KernelEngine(Engine):
    """Maps and programs in the host kernel; runs through ``BPF_PROG_TEST_RUN``."""

    name = "kernel"

    def __init__(self, *, name_prefix: str = "") -> None:
        self.name_prefix = name_prefix
        self.maps: list[KernelMap] = []
        self.programs: dict[int, KernelProgram] = {}
        self._btf: dict[bytes, _Btf] = {}
        self._prog_btf: dict[int, bytes] = {}  # program fd -> the blob whose BTF it holds

    def create_map(self, spec: MapSpec) -> Map:
        m = KernelMap.create(spec, name=self.name_prefix + spec.name)
        self.maps.append(m)
        return m

    def _btf_acquire(self, raw: bytes | None) -> KernelBtf | None:
        if not raw:
            return None
        entry = self._btf.get(raw)
        if entry is None:
            try:
                entry = _Btf(KernelBtf.load(raw))
            except BpfError:
                return None  # refused: the program loads without BTF, and nothing of the blob is kept
            self._btf[bytes(raw)] = entry
        entry.users += 1
        return entry.btf

    def _btf_release(self, raw: bytes) -> None:
        entry = self._btf.get(raw)
        if entry is None:
            return
        entry.users -= 1
        if entry.users <= 0:
            del self._btf[raw]
            entry.btf.close()

    def load_program(self, name: str, insns: list[Insn], *, license: str = "GPL", **extra: object) -> int:
        raw = extra.get("btf")
        btf = self._btf_acquire(raw)  # type: ignore[arg-type]
        btf_fd = btf.fd if btf is not None else 0
        kname = self.name_prefix + name
        if self.name_prefix:
            # bpftool shows a 15-character (maybe truncated) program name as its BTF function's
            # name, which has no prefix: 14 characters keep the owner visible in `bpftool prog show`
            kname = kname[: KERNEL_NAME_SHOWN]
        try:
            prog = KernelProgram.load(
                insns,
                prog_type=PROG_TYPE_XDP,
                name=kname,
                license=license,
                btf_fd=btf_fd,
                func_info=extra.get("func_info") if btf_fd else None,  # type: ignore[arg-type]
                line_info=extra.get("line_info") if btf_fd else None,  # type: ignore[arg-type]
                log_level=int(extra.get("log_level") or 0),  # type: ignore[call-overload]
                log_size=extra.get("log_size"),  # type: ignore[arg-type]  # None: libbpf's retries
            )
        except BaseException:
            if btf is not None:
                self._btf_release(raw)  # type: ignore[arg-type]
            raise
        self.programs[prog.fd] = prog
        if btf is not None:
            self._prog_btf[prog.fd] = raw  # type: ignore[assignment]
        return prog.fd

    def program(self, handle: int) -> KernelProgram:
        return self.programs[handle]

    def program_info(self, prog: int) -> ProgramInfo:
        info = self.programs[prog].info()
        return ProgramInfo(info.id, info.name, info.tag)

    def free_map(self, m: Map) -> None:
        """Close one map this engine made, before `close` (the offload service frees objects one by one)."""
        if m in self.maps:
            self.maps.remove(m)  # type: ignore[arg-type]
        if isinstance(m, KernelMap) and m.spec.type == MapType.PROG_ARRAY and not m.closed:
            close_prog_array(m)
        else:
            m.close()

    def free_program(self, handle: int) -> None:
        """Close one program this engine loaded (and its BTF with its last user); unknown handles are ignored."""
        prog = self.programs.pop(handle, None)
        if prog is not None:
            prog.close()
        raw = self._prog_btf.pop(handle, None)
        if raw is not None:
            self._btf_release(raw)

    def run(self, prog: int, packet: bytes, *, repeat: int = 1, ctx: XdpMd | None = None) -> RunResult:
        ctx_in = None
        if ctx is not None:
            # struct xdp_md: data (= the metadata length), data_end, data_meta (always 0), ingress_ifindex,
            # rx_queue_index, egress_ifindex
            ctx_in = b"".join(int(v).to_bytes(4, "little") for v in (
                ctx.meta_len, len(packet), 0, ctx.ingress_ifindex, ctx.rx_queue_index, ctx.egress_ifindex))
        result = self.programs[prog].test_run(packet, repeat=repeat, ctx_in=ctx_in)
        return RunResult(result.retval, result.data_out, float(result.duration_ns))

    def close(self) -> None:
        for fd in list(self.programs):
            self.free_program(fd)
        for m in list(self.maps):
            self.free_map(m)
        for entry in self._btf.values():
            entry.btf.close()
        self._btf.clear()
        self._prog_btf.clear()


def close_prog_array(m: KernelMap) -> None:
    """Close our last fd of a prog_array and return once the kernel's deferred clear has run (see the
    module docstring): a sentinel program only the array holds goes at index 0 and we wait, bounded by
    `CLEAR_WAIT`, for its id to go. Anything refusing the sentinel (a frozen array) just closes."""
    sentinel_id = None
    try:
        with KernelProgram.load(_SENTINEL, prog_type=PROG_TYPE_XDP, name="vxdp_clear") as s:
            sentinel_id = s.info().id
            m.update(struct.pack("<I", 0), struct.pack("<I", s.fd))
    except (BpfError, OSError, ValueError):
        sentinel_id = None
    m.close()
    if sentinel_id is None:
        return
    deadline = time.monotonic() + CLEAR_WAIT
    while prog_get_next_id(sentinel_id - 1) == sentinel_id:
        if time.monotonic() > deadline:
            log.warning("prog_array: the kernel has not cleared it %.1f s after its last close", CLEAR_WAIT)
            return
        time.sleep(0.0002)
