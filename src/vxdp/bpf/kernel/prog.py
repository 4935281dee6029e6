"""Kernel programs through bpf(2): load with the verifier's log, test runs, info.

Loading follows libbpf's ``bpf_prog_load``: try once as asked; if the kernel
refuses and no log was asked for, load again with ``log_level=1`` and a log
buffer, growing the buffer (×4, up to 16 MiB) while the kernel answers ENOSPC
(a truncated log fails the load even if verification passed). A refusal then
raises `VerifierError` with the log, which is what a person needs to fix the
program. EAGAIN (the verifier gave up under memory pressure) is retried a few
times, as libbpf does.

``BPF_PROG_TEST_RUN`` runs the program on a packet we give and returns what it
did to it. With ``BPF_F_TEST_XDP_LIVE_FRAMES`` the kernel instead really sends
the frames the program answers ``XDP_TX``/``XDP_REDIRECT`` to (see
`live_frames`): then there is no ``data_out``/``ctx_out`` (the kernel refuses
them with EINVAL).
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from ..isa import Insn, encode
from ..obj import FuncInfo, LineInfo
from .maps import OBJ_NAME_LEN, sanitize_name
from .objects import obj_get_info
from .syscall import BpfError, Cmd, FdOwner, buf_addr, call

LOG_START = 256 * 1024
LOG_MAX = 16 * 1024 * 1024
LOG_MIN = 1024  # the kernel wants at least 128 bytes; a log this small says little anyway
TEST_RUN_TAILROOM = 4096  # room for bpf_xdp_adjust_tail growth in data_out

BPF_F_TEST_RUN_ON_CPU = 1 << 0
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


class ProgType(IntEnum):
    """``enum bpf_prog_type`` values vxdp loads."""

    SOCKET_FILTER = 1
    SCHED_CLS = 3
    SCHED_ACT = 4
    XDP = 6


class VerifierError(BpfError):
    """The kernel refused a program; ``.log`` holds the verifier's log (the reason is at its end).
    A one-pass load (``log_size``) also sets ``log_size`` (the buffer) and ``log_true_size`` (what the
    whole log needed, by the kernel's count; above ``log_size`` when the log was cut)."""

    log_size: int = 0
    log_true_size: int = 0

    def __str__(self) -> str:
        lines = self.log.rstrip().splitlines()
        tail = "\n".join(lines[-40:])
        more = f"[{len(lines) - 40} earlier lines in .log]\n" if len(lines) > 40 else ""
        return f"{self.strerror}\nverifier log:\n{more}{tail}" if lines else (self.strerror or "")


class _ProgLoadAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_PROG_LOAD. Offsets: prog_type 0, insn_cnt 4, insns 8, license 16,
    log_level 24, log_size 28, log_buf 32, kern_version 40, prog_flags 44, prog_name 48..63,
    prog_ifindex 64, expected_attach_type 68, prog_btf_fd 72, func_info_rec_size 76, func_info 80,
    func_info_cnt 88, line_info_rec_size 92, line_info 96, line_info_cnt 104, attach_btf_id 108,
    attach_prog_fd 112, core_relo_cnt 116, fd_array 120, core_relos 128, core_relo_rec_size 136,
    log_true_size 140 (6.4+; output, kernels that do not know it see a zero)."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * OBJ_NAME_LEN),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("func_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("line_info_cnt", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("core_relo_cnt", ctypes.c_uint32),
        ("fd_array", ctypes.c_uint64),
        ("core_relos", ctypes.c_uint64),
        ("core_relo_rec_size", ctypes.c_uint32),
        ("log_true_size", ctypes.c_uint32),
    ]


class _TestRunAttr(ctypes.Structure):
    """``union bpf_attr`` (``test``) for BPF_PROG_TEST_RUN. Offsets: prog_fd 0, retval 4,
    data_size_in 8, data_size_out 12, data_in 16, data_out 24, repeat 32, duration 36,
    ctx_size_in 40, ctx_size_out 44, ctx_in 48, ctx_out 56, flags 64, cpu 68, batch_size 72."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class _FuncInfoRec(ctypes.Structure):
    """``struct bpf_func_info``: insn_off, type_id (8 bytes)."""

    _fields_ = [("insn_off", ctypes.c_uint32), ("type_id", ctypes.c_uint32)]


class _LineInfoRec(ctypes.Structure):
    """``struct bpf_line_info``: insn_off, file_name_off, line_off, line_col (16 bytes)."""

    _fields_ = [("insn_off", ctypes.c_uint32), ("file_name_off", ctypes.c_uint32),
                ("line_off", ctypes.c_uint32), ("line_col", ctypes.c_uint32)]


class BpfProgInfo(ctypes.Structure):
    """``struct bpf_prog_info`` (uapi), 232 bytes, 8-aligned; ``flags`` bit 0 is gpl_compatible."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
        ("attach_btf_obj_id", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class ProgInfo:
    """What the kernel says about a loaded program (BPF_OBJ_GET_INFO_BY_FD).

    ``run_cnt``/``run_time_ns`` only move while run-time stats are on (`enable_stats`).
    """

    id: int
    type: int
    tag: str
    name: str
    jited_prog_len: int
    xlated_prog_len: int
    map_ids: tuple[int, ...]
    btf_id: int
    nr_func_info: int
    nr_line_info: int
    run_cnt: int
    run_time_ns: int
    verified_insns: int
    gpl_compatible: bool
    load_time_ns: int


@dataclass
class TestRunResult:
    """One BPF_PROG_TEST_RUN: the last run's return value and packet, and the mean duration."""

    retval: int
    data_out: bytes
    duration_ns: int
    ctx_out: bytes | None = None


@dataclass
class _LoadArgs:
    insns: bytes
    insn_cnt: int
    prog_type: int
    name: bytes
    license: bytes
    btf_fd: int
    expected_attach_type: int
    prog_flags: int
    kern_version: int
    func_info: list[FuncInfo] = field(default_factory=list)
    line_info: list[LineInfo] = field(default_factory=list)


def _records(rec_type, rows) -> ctypes.Array | None:
    if not rows:
        return None
    return (rec_type * len(rows))(*rows)


def _load_once(a: _LoadArgs, log_level: int, log: ctypes.Array | None, true_size: list[int] | None = None) -> int:
    """One BPF_PROG_LOAD (retried on EAGAIN); ``true_size`` gets the kernel's ``log_true_size``."""
    insns = ctypes.create_string_buffer(a.insns, len(a.insns))
    lic = ctypes.create_string_buffer(a.license)
    fi = _records(_FuncInfoRec, [_FuncInfoRec(f.insn, f.type_id) for f in a.func_info])
    li = _records(_LineInfoRec, [_LineInfoRec(x.insn, x.file_name_off, x.line_off, x.line_col)
                                 for x in a.line_info])
    attr = _ProgLoadAttr(
        prog_type=a.prog_type, insn_cnt=a.insn_cnt, insns=buf_addr(insns), license=buf_addr(lic),
        log_level=log_level if log is not None else 0,
        log_size=len(log) if log is not None else 0, log_buf=buf_addr(log),
        kern_version=a.kern_version, prog_flags=a.prog_flags, prog_name=a.name,
        expected_attach_type=a.expected_attach_type, prog_btf_fd=a.btf_fd,
        func_info_rec_size=ctypes.sizeof(_FuncInfoRec) if fi is not None else 0,
        func_info=buf_addr(fi), func_info_cnt=len(a.func_info),
        line_info_rec_size=ctypes.sizeof(_LineInfoRec) if li is not None else 0,
        line_info=buf_addr(li), line_info_cnt=len(a.line_info),
    )
    try:
        for attempt in range(5):
            try:
                return call(Cmd.PROG_LOAD, attr, f"prog {a.name.decode()!r}")
            except BpfError as e:
                if e.errno != errno.EAGAIN or attempt == 4:
                    raise
        raise AssertionError("unreachable")
    finally:
        if true_size is not None:
            true_size.append(attr.log_true_size)


def _log_text(log: ctypes.Array) -> str:
    return log.value.decode(errors="replace")


class KernelProgram(FdOwner):
    """A loaded program this process owns through one fd (closed by `close`, idempotently)."""

    def __init__(self, fd: int, name: str = "", prog_type: int = ProgType.XDP, verifier_log: str = ""):
        self._fd = fd
        self.name = name
        self.prog_type = prog_type
        self.verifier_log = verifier_log  # filled when the load asked for a log

    @classmethod
    def load(
        cls,
        insns: Sequence[Insn] | bytes,
        *,
        prog_type: int = ProgType.XDP,
        name: str = "",
        license: str = "GPL",
        log_level: int = 0,
        btf_fd: int = 0,
        func_info: Sequence[FuncInfo] | None = (),
        line_info: Sequence[LineInfo] | None = (),
        expected_attach_type: int = 0,
        prog_flags: int = 0,
        kern_version: int = 0,
        log_size: int | None = None,
    ) -> KernelProgram:
        """Load ``insns`` (one `Insn` per 8-byte slot, map fds already in place).

        ``log_level > 0`` keeps the verifier log of a successful load in
        ``.verifier_log``; a refused load always raises `VerifierError` with the log.
        func_info and line_info need ``btf_fd`` (the kernel checks them against that BTF).

        ``log_size``: exactly one verifier pass, with a log of that many bytes (level
        ``log_level`` or 1) and no retry. Since 6.4 the kernel's log rotates: a log too small
        keeps its tail (where the reason is), the kernel says how long it was
        (``log_true_size``, in `VerifierError.log_true_size`), and the load fails with ENOSPC
        *instead of* the verifier's own error (``bpf_check`` lets the log's ENOSPC win), so the
        caller must read a truncated log's ENOSPC as "log too small", not as the reason.
        """
        raw = insns if isinstance(insns, (bytes, bytearray)) else encode(list(insns))
        if not raw or len(raw) % 8:
            raise ValueError(f"prog {name!r}: {len(raw)} bytes of instructions "
                             "is not a non-empty multiple of 8")
        args = _LoadArgs(
            insns=bytes(raw), insn_cnt=len(raw) // 8, prog_type=int(prog_type),
            name=sanitize_name(name).encode(),
            license=license.encode(), btf_fd=btf_fd, expected_attach_type=expected_attach_type,
            prog_flags=prog_flags, kern_version=kern_version, func_info=list(func_info or ()), line_info=list(line_info or ()),
        )
        if log_size is not None:
            return cls._load_one_pass(args, name, prog_type, max(log_level, 1), log_size, log_level > 0)
        if log_level <= 0:
            try:
                return cls(_load_once(args, 0, None), name, prog_type)
            except BpfError:
                pass  # load again with a log to say why
        level = max(log_level, 1)
        size = LOG_START
        while True:
            log = ctypes.create_string_buffer(size)
            try:
                fd = _load_once(args, level, log)
            except BpfError as e:
                if e.errno == errno.ENOSPC and size < LOG_MAX:
                    size = min(size * 4, LOG_MAX)
                    continue
                raise VerifierError(Cmd.PROG_LOAD, e.errno, f"prog {name!r}", _log_text(log)) from None
            return cls(fd, name, prog_type, _log_text(log) if log_level > 0 else "")

    @classmethod
    def _load_one_pass(cls, args: _LoadArgs, name: str, prog_type: int, level: int, size: int,
                       keep: bool) -> KernelProgram:
        log = ctypes.create_string_buffer(max(int(size), LOG_MIN))
        true_size: list[int] = []
        try:
            fd = _load_once(args, level, log, true_size)
        except BpfError as e:
            err = VerifierError(Cmd.PROG_LOAD, e.errno, f"prog {name!r}", _log_text(log))
            err.log_true_size = true_size[0] if true_size else 0
            err.log_size = len(log)
            raise err from None
        return cls(fd, name, prog_type, _log_text(log) if keep else "")

    @classmethod
    def from_fd(cls, fd: int) -> KernelProgram:
        """Adopt an fd (from `prog_get_fd_by_id`, `obj_get`); this object then owns and closes it."""
        p = cls(fd)
        i = p.info()
        p.name, p.prog_type = i.name, i.type
        return p

    @property
    def handle(self) -> int:
        """What a prog_array value carries for this program: its fd."""
        return self.fd

    def test_run(
        self,
        data: bytes,
        *,
        repeat: int = 1,
        ctx_in: bytes | None = None,
        data_out_size: int | None = None,
        flags: int = 0,
        batch_size: int = 0,
        cpu: int = 0,
    ) -> TestRunResult:
        """Run the program on ``data`` ``repeat`` times (BPF_PROG_TEST_RUN).

        ``data_out`` is what the last run left between data and data_end; its
        buffer defaults to ``len(data) + 4096`` so a grown tail fits (a buffer too
        small makes the kernel answer ENOSPC). ``duration_ns`` is the kernel's mean
        per run. With live frames (flag 2) there is no data_out or ctx_out.
        """
        live = bool(flags & BPF_F_TEST_XDP_LIVE_FRAMES)
        din = ctypes.create_string_buffer(bytes(data), max(len(data), 1))
        out_size = 0 if live else (len(data) + TEST_RUN_TAILROOM if data_out_size is None else data_out_size)
        dout = ctypes.create_string_buffer(out_size) if out_size else None
        cin = ctypes.create_string_buffer(bytes(ctx_in), len(ctx_in)) if ctx_in else None
        cout = ctypes.create_string_buffer(len(ctx_in)) if ctx_in and not live else None
        attr = _TestRunAttr(
            prog_fd=self.fd, data_size_in=len(data), data_size_out=out_size, data_in=buf_addr(din),
            data_out=buf_addr(dout), repeat=repeat, ctx_size_in=len(ctx_in) if ctx_in else 0,
            ctx_size_out=len(cout) if cout is not None else 0, ctx_in=buf_addr(cin), ctx_out=buf_addr(cout),
            flags=flags, cpu=cpu, batch_size=batch_size,
        )
        call(Cmd.PROG_TEST_RUN, attr, f"prog {self.name!r}")
        return TestRunResult(
            retval=attr.retval,
            data_out=dout.raw[: attr.data_size_out] if dout is not None else b"",
            duration_ns=attr.duration,
            ctx_out=cout.raw[: attr.ctx_size_out] if cout is not None else None,
        )

    def info(self) -> ProgInfo:
        n = 16
        while True:
            ids = (ctypes.c_uint32 * n)()
            i = BpfProgInfo(nr_map_ids=n, map_ids=ctypes.addressof(ids))
            obj_get_info(self.fd, i, f"prog {self.name!r}")
            if i.nr_map_ids <= n:
                break
            n = i.nr_map_ids
        return ProgInfo(
            id=i.id, type=i.type, tag=bytes(i.tag).hex(), name=i.name.decode(errors="replace"),
            jited_prog_len=i.jited_prog_len, xlated_prog_len=i.xlated_prog_len,
            map_ids=tuple(ids[: i.nr_map_ids]), btf_id=i.btf_id, nr_func_info=i.nr_func_info,
            nr_line_info=i.nr_line_info, run_cnt=i.run_cnt, run_time_ns=i.run_time_ns,
            verified_insns=i.verified_insns, gpl_compatible=bool(i.flags & 1), load_time_ns=i.load_time,
        )

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"KernelProgram({self.name!r}, type={int(self.prog_type)}, {state})"


class _EnableStatsAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_ENABLE_STATS: type @0 (BPF_STATS_RUN_TIME = 0)."""

    _fields_ = [("type", ctypes.c_uint32)]


class StatsHandle(FdOwner):
    """Run-time statistics (run_cnt, run_time_ns) are collected while this is open."""

    def __init__(self, fd: int):
        self._fd = fd


def enable_stats() -> StatsHandle:
    """Turn on BPF_STATS_RUN_TIME for as long as the returned handle stays open."""
    return StatsHandle(call(Cmd.ENABLE_STATS, _EnableStatsAttr(type=0), "run time stats"))
