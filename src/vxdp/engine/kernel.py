"""The kernel engine: maps and programs live in the host kernel, verified and JIT-compiled there.

This is the engine the offload service attaches to a host port; for ``prog
run`` and the differential tests it runs programs through
``BPF_PROG_TEST_RUN``, which gives the same XDP buffer geometry every run and
makes the kernel the oracle the other engines are checked against.

A program's BTF (when the object has one) goes in with its func_info and
line_info, so ``bpftool prog dump`` shows source lines. A kernel that refuses
the BTF still gets the program, without BTF, as libbpf does when BTF is
optional; a program the verifier refuses raises `VerifierError` with the log.
"""

from __future__ import annotations

from ..bpf.isa import Insn
from ..bpf.kernel import BpfError, KernelBtf, KernelMap, KernelProgram
from ..bpf.mapspec import MapSpec
from .base import Engine, Map, RunResult, XdpMd

PROG_TYPE_XDP = 6
KERNEL_NAME_SHOWN = 14  # BPF_OBJ_NAME_LEN - 2: the longest program name bpftool shows as it is


class KernelEngine(Engine):
    """Maps and programs in the host kernel; runs through ``BPF_PROG_TEST_RUN``."""

    name = "kernel"

    def __init__(self, *, name_prefix: str = "") -> None:
        self.name_prefix = name_prefix
        self.maps: list[KernelMap] = []
        self.programs: dict[int, KernelProgram] = {}
        self._btf: dict[bytes, KernelBtf | None] = {}

    def create_map(self, spec: MapSpec) -> Map:
        m = KernelMap.create(spec, name=self.name_prefix + spec.name)
        self.maps.append(m)
        return m

    def _btf_fd(self, raw: bytes | None) -> int:
        if not raw:
            return 0
        if raw not in self._btf:
            try:
                self._btf[raw] = KernelBtf.load(raw)
            except BpfError:
                self._btf[raw] = None
        btf = self._btf[raw]
        return btf.fd if btf is not None else 0

    def load_program(self, name: str, insns: list[Insn], *, license: str = "GPL", **extra: object) -> int:
        btf_fd = self._btf_fd(extra.get("btf"))  # type: ignore[arg-type]
        kname = self.name_prefix + name
        if self.name_prefix:
            # bpftool shows a 15-character (maybe truncated) program name as its BTF function's
            # name, which has no prefix: 14 characters keep the owner visible in `bpftool prog show`
            kname = kname[: KERNEL_NAME_SHOWN]
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
        self.programs[prog.fd] = prog
        return prog.fd

    def program(self, handle: int) -> KernelProgram:
        return self.programs[handle]

    def free_map(self, m: Map) -> None:
        """Close one map this engine made, before `close` (the offload service frees objects one by one)."""
        if m in self.maps:
            self.maps.remove(m)  # type: ignore[arg-type]
        m.close()

    def free_program(self, handle: int) -> None:
        """Close one program this engine loaded; unknown handles are ignored (idempotent)."""
        prog = self.programs.pop(handle, None)
        if prog is not None:
            prog.close()

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
        for prog in self.programs.values():
            prog.close()
        self.programs.clear()
        for m in self.maps:
            m.close()
        self.maps.clear()
        for btf in self._btf.values():
            if btf is not None:
                btf.close()
        self._btf.clear()
