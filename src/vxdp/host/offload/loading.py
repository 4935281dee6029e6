"""PROG_LOAD's stages, apart so the verifier pass can run off the event loop (issue 9 §9).

`prepare` (policy, handles, the rewritten host copy and its counters map; under the service's
lock), `verify` (the one kernel verifier pass: no lock, it touches only what `prepare` made),
`commit` (the handle, under the lock; refused if the device was reset or filled meanwhile).
`PendingLoad` runs the last two on any thread, charging the pass to the device's verifier time
budget. `OffloadService.prog_load_begin` makes one; `OffloadService.prog_load` runs it at once.

One pass: the log is sized once: ``quota.max_verifier_log``, or the guest's ``log_size`` below it
when the guest asked for a log of success too (``log_level`` > 0). Without a log level,
``log_size`` only bounds the text of a refusal (cut to its tail by the handler): sizing the
kernel's buffer by it would refuse good programs whose walk logs more than that.
The host kernel's log rotates (6.4+): a log too small keeps its tail, the kernel reports the
whole length (``log_true_size``) and answers ENOSPC *instead of* the verifier's own result
(``bpf_check`` lets the log's error win), so a cut log is E2BIG here, naming the verifier's last
words from the tail, never ENOSPC (which the guest would read as a quota).
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...bpf.isa import Insn
from ...bpf.kernel.prog import VerifierError
from ...bpf.kernel.syscall import BpfError
from ...bpf.mapspec import MapSpec, MapType
from ...bpf.obj import FuncInfo, LineInfo
from ...engine.kernel import KernelEngine
from .errors import OffloadError
from .handles import Kind
from .objects import Device, ProgObj, ProgSource
from .policy import PROG_TYPES, TimeBudget
from .rewrite import (
    ACTION_SLOTS,
    CountedProgram,
    add_action_counters,
    check_ext_info,
    check_program,
    rewrite_map_handles,
)
from .verifier_log import EpilogueMap, guest_log

if TYPE_CHECKING:
    from .service import OffloadService


@dataclass(frozen=True)
class Prepared:
    """A program checked and rewritten, waiting for its verifier pass."""

    name: str
    license: str
    btf: bytes | None
    counted: CountedProgram
    host_len: int  # slots before the epilogue was added
    counters: object  # the host-owned action-counters map, freed if the load fails
    map_handles: frozenset[int] | set[int]
    guest_insns: int
    source: ProgSource
    origin: str
    handle: int | None
    engine: KernelEngine
    log_level: int
    log_size: int


class PendingLoad:
    """A PROG_LOAD between its checks and its verifier pass: `run` on any thread (once)."""

    def __init__(self, service: OffloadService, dev: Device, prep: Prepared, budget: TimeBudget):
        self.service, self.dev, self.prep, self.budget = service, dev, prep, budget

    def run(self) -> tuple[int, str]:
        """Verify (without the service's lock; the time is charged to the device's budget), then
        give the program its handle (with the lock)."""
        svc, dev = self.service, self.dev
        start = time.monotonic()
        try:
            fd = verify(svc, dev, self.prep)
        except OffloadError:
            with svc._lock:
                dev.counters["refused"] += 1
            raise
        finally:
            with svc._lock:
                self.budget.spend(time.monotonic() - start)
        with svc._lock:
            try:
                return commit(svc, dev, self.prep, fd)
            except OffloadError:
                dev.counters["refused"] += 1
                raise


def prepare(svc: OffloadService, dev: Device, insns: list[Insn], name: str, license: str, prog_type: int | str,
                  btf: bytes | None, func_info: list[FuncInfo], line_info: list[LineInfo],
                  handle: int | None, log_level: int, log_size: int) -> Prepared:
    """Everything before the verifier: policy, handles, the rewritten host copy, its counters map."""
    p, q = svc.policy, svc.policy.quota
    p.check_prog_type(prog_type)
    origin = svc._origin(handle is not None)
    if handle is not None and dev.handles.kind(handle) is not None:
        raise OffloadError(errno.EEXIST, f"device {dev.name}: handle {handle} is already in use")
    check_room(svc, dev, name, len(insns))
    # BTF is charged to map memory (`btf_ledger`): refused here if it cannot fit; charged in `commit`
    btf_blob, _ = svc._btf[dev.name].charge(dev.name, name, btf, dev.map_memory, q)
    source = ProgSource(tuple(insns), license, PROG_TYPES.get(prog_type, 0) if isinstance(prog_type, str)
                        else int(prog_type), btf_blob, tuple(func_info), tuple(line_info))
    refs = check_program(insns, p, name=name)
    check_ext_info(insns, func_info, line_info, name=name)
    for h in sorted(refs.map_handles):
        svc._map(dev, h)
    host_insns = rewrite_map_handles(insns, lambda h: svc._map(dev, h).map.handle)
    counters = svc._kernel("action counters", dev.engine.create_map,
                            MapSpec("act", MapType.PERCPU_ARRAY, 4, 8, len(ACTION_SLOTS)))
    try:
        counted = add_action_counters(host_insns, counters.handle, func_info=func_info, line_info=line_info)
    except BaseException:
        dev.engine.free_map(counters)
        raise
    cap = q.max_verifier_log
    return Prepared(name, license, btf_blob or None, counted, len(host_insns), counters, refs.map_handles, len(insns),
                     source, origin, handle, dev.engine, max(0, min(int(log_level), 7)),
                     min(int(log_size), cap) if log_size and log_level else cap)

def check_room(svc: OffloadService, dev: Device, name: str, n_insns: int) -> None:
    q, progs = svc.policy.quota, svc._progs[dev.name]
    if len(progs) >= q.max_progs:
        raise OffloadError(errno.ENOSPC, f"policy: device {dev.name} already has {q.max_progs} programs",
                           "quota.max_progs")
    used = sum(o.guest_insns for o in progs.values())
    if used + n_insns > q.max_total_insns:
        raise OffloadError(errno.ENOSPC, f"policy: program {name!r} has {n_insns} instructions; device "
                           f"{dev.name} has {used} of {q.max_total_insns} loaded", "quota.max_total_insns")

def verify(svc: OffloadService, dev: Device, prep: Prepared) -> int:
    """The one verifier pass (no lock needed: it touches only ``prep``); frees the counters map
    if the kernel refuses. A log the kernel cut (ENOSPC, ``log_true_size`` above the buffer) is
    E2BIG naming the verifier's last words from the log's tail, never ENOSPC."""
    name, counted = prep.name, prep.counted
    with svc._lock:
        dev.counters["verifier_runs"] = dev.counters.get("verifier_runs", 0) + 1
    try:
        try:
            return prep.engine.load_program(name, counted.insns, license=prep.license, btf=prep.btf,
                                            func_info=counted.func_info, line_info=counted.line_info,
                                            log_level=prep.log_level, log_size=prep.log_size)
        except VerifierError as e:
            log = guest_log(e.log, EpilogueMap(counted.epilogue_start, len(counted.insns) - prep.host_len))
            last = next((ln for ln in reversed(log.splitlines())
                         if ln.strip() and not ln.startswith(("processed ", "verification time", "stack depth"))),
                        e.strerror or "")
            code = e.errno or errno.EINVAL
            if code == errno.ENOSPC and e.log_true_size > e.log_size > 0:
                raise OffloadError(errno.E2BIG, f"kernel verifier refused program {name!r}: {last} (its log "
                                   f"of {e.log_true_size} bytes is longer than the {e.log_size} this load may "
                                   "have; its tail follows)", "verifier", log) from None
            raise OffloadError(code, f"kernel verifier refused program {name!r}: {last}", "verifier",
                               log) from None
        except BpfError as e:
            raise OffloadError(e.errno or errno.EINVAL, f"program {name!r}: {e}") from None
    except BaseException:
        prep.engine.free_map(prep.counters)
        raise

def commit(svc: OffloadService, dev: Device, prep: Prepared, fd: int) -> tuple[int, str]:
    """Give the verified program its handle; the lock is held. A device reset (or another load
    that took the room) meanwhile: the program is freed and the load refused."""
    try:
        if svc.devices.get(dev.name) is not dev or dev.engine is not prep.engine:
            raise OffloadError(errno.ECANCELED, f"device {dev.name} was reset while program "
                               f"{prep.name!r} was being verified")
        check_room(svc, dev, prep.name, prep.guest_insns)
        for h in sorted(prep.map_handles):
            svc._map(dev, h)
        # again, under the lock: another load may have charged (or freed) the same blob meanwhile
        ledger = svc._btf[dev.name]
        _, btf_charge = ledger.charge(dev.name, prep.name, prep.btf, dev.map_memory, svc.policy.quota)
        info = prep.engine.program(fd).info()
    except BaseException:
        prep.engine.free_program(fd)
        prep.engine.free_map(prep.counters)
        raise
    handle = dev.handles.add(Kind.PROG, None, prep.handle)
    obj = ProgObj(handle=handle, name=prep.name, kernel_name=info.name, engine_handle=fd, tag=info.tag,
                  kernel_id=info.id, guest_insns=prep.guest_insns, host_insns=len(prep.counted.insns),
                  map_handles=tuple(sorted(prep.map_handles)), counters=prep.counters, source=prep.source,
                  origin=prep.origin)
    dev.handles.bind(handle, obj)
    svc._progs[dev.name][handle] = obj
    ledger.hold(prep.source.btf)
    dev.map_memory += btf_charge
    return handle, info.tag
