"""PROG_LOAD's stages, apart so the verifier pass can run off the event loop (the host kernel may
verify for seconds, and one loop serves every device of the daemon).

`prepare` (policy, handles, the rewritten host copy and its counters map; under the service's
lock), `verify` (the one kernel verifier pass: no lock, it touches only what `prepare` made),
`commit` (the handle, under the lock; refused if the device was reset or filled meanwhile).
`PendingLoad` runs the last two on any thread, charging the pass to the device's verifier time
budget. The stages take what they use (the policy, the device record, the lock that guards it),
never the service itself, so this module knows nothing of who calls it.

One pass: the log is sized once: ``quota.max_verifier_log``, or the guest's ``log_size`` below it
when the guest asked for a log of success too (``log_level`` > 0). Without a log level,
``log_size`` only bounds the text of a refusal (cut to its tail by the handler): sizing the
kernel's buffer by it would refuse good programs whose walk logs more than that.
Engines outside the kernel (the interpreter) have no verifier: what they refuse to load is
EINVAL naming the engine, and a log level asks them for nothing. The host kernel's log rotates (6.4+): a log too small keeps its tail, the kernel reports the
whole length (``log_true_size``) and answers ENOSPC *instead of* the verifier's own result
(``bpf_check`` lets the log's error win), so a cut log is E2BIG here, naming the verifier's last
words from the tail, never ENOSPC (which the guest would read as a quota).
"""

from __future__ import annotations

import errno
import threading
import time
from dataclasses import dataclass

from ...bpf.isa import Insn
from ...bpf.kernel.prog import VerifierError
from ...bpf.mapspec import MapSpec, MapType
from ...bpf.obj import FuncInfo, LineInfo
from ...engine.base import Engine
from ...engine.verifier.errors import VerifierRejected
from .errors import OffloadError, engine_call
from .handles import Kind
from .objects import Device, MapObj, ProgObj, ProgSource
from .policy import PROG_TYPES, Policy
from .rewrite import (
    ACTION_SLOTS,
    CountedProgram,
    add_action_counters,
    check_ext_info,
    check_program,
    rewrite_map_handles,
)
from .verifier_log import EpilogueMap, guest_log


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
    engine: Engine
    log_level: int
    log_size: int


class PendingLoad:
    """A PROG_LOAD between its checks and its verifier pass: `run` on any thread (once).

    ``lock`` guards ``dev`` (the service's lock); the pass runs without it."""

    def __init__(self, lock: threading.RLock, policy: Policy, dev: Device, prep: Prepared):
        self.lock, self.policy, self.dev, self.prep = lock, policy, dev, prep

    def run(self) -> tuple[int, str]:
        """`load` on this thread, counting a refusal; returns (handle, tag)."""
        try:
            obj = load(self.lock, self.policy, self.dev, self.prep)
        except OffloadError:
            with self.lock:
                self.dev.counters["refused"] += 1
            raise
        return obj.handle, obj.tag


def load(lock: threading.RLock, policy: Policy, dev: Device, prep: Prepared) -> ProgObj:
    """Verify (without ``lock``; the time is charged to the device's budget), then bind the program
    to its handle (with ``lock``, which guards ``dev``)."""
    with lock:
        dev.counters["verifier_runs"] = dev.counters.get("verifier_runs", 0) + 1
    start = time.monotonic()
    try:
        fd = verify(prep)
    finally:
        with lock:
            dev.budget.spend(time.monotonic() - start)
    with lock:
        return commit(policy, dev, prep, fd)


def prepare(policy: Policy, dev: Device, insns: list[Insn], name: str, license: str, prog_type: int | str,
            btf: bytes | None, func_info: list[FuncInfo], line_info: list[LineInfo], *, origin: str,
            handle: int | None = None, log_level: int = 0, log_size: int = 0) -> Prepared:
    """Everything before the verifier: policy, handles, the rewritten host copy, its counters map.
    ``handle``: the one the program will take (a state import), else a fresh one."""
    q = policy.quota
    policy.check_prog_type(prog_type)
    if handle is not None and dev.handles.kind(handle) is not None:
        raise OffloadError(errno.EEXIST, f"device {dev.name}: handle {handle} is already in use")
    check_room(policy, dev, name, len(insns))
    # BTF is charged to map memory (`btf_ledger`): refused here if it cannot fit; charged in `commit`
    btf_blob, _ = dev.btf.charge(dev.name, name, btf, dev.map_memory, q)
    source = ProgSource(tuple(insns), license, PROG_TYPES.get(prog_type, 0) if isinstance(prog_type, str)
                        else int(prog_type), btf_blob, tuple(func_info), tuple(line_info))
    refs = check_program(insns, policy, name=name)
    check_ext_info(insns, func_info, line_info, name=name)
    maps = {h: _map(dev, h) for h in sorted(refs.map_handles)}
    host_insns = rewrite_map_handles(insns, lambda h: maps[h].map.handle)
    engine: Engine = dev.engine  # type: ignore[assignment]
    counters = engine_call("action counters", engine.create_map,
                           MapSpec("act", MapType.PERCPU_ARRAY, 4, 8, len(ACTION_SLOTS)))
    try:
        counted = add_action_counters(host_insns, counters.handle, func_info=func_info, line_info=line_info)
    except BaseException:
        engine.free_map(counters)
        raise
    cap = q.max_verifier_log
    return Prepared(name, license, btf_blob or None, counted, len(host_insns), counters, refs.map_handles, len(insns),
                    source, origin, handle, engine, max(0, min(int(log_level), 7)),
                    min(int(log_size), cap) if log_size and log_level else cap)


def check_room(policy: Policy, dev: Device, name: str, n_insns: int) -> None:
    """The program quotas: the device's count of programs and of their instructions, read from its table."""
    q = policy.quota
    if dev.handles.count(Kind.PROG) >= q.max_progs:
        raise OffloadError(errno.ENOSPC, f"policy: device {dev.name} already has {q.max_progs} programs",
                           "quota.max_progs")
    used = dev.insns
    if used + n_insns > q.max_total_insns:
        raise OffloadError(errno.ENOSPC, f"policy: program {name!r} has {n_insns} instructions; device "
                           f"{dev.name} has {used} of {q.max_total_insns} loaded", "quota.max_total_insns")


def verify(prep: Prepared) -> int:
    """The one verifier pass (no lock needed: it touches only ``prep``); frees the counters map
    if the engine refuses. A log the kernel cut (ENOSPC, ``log_true_size`` above the buffer) is
    E2BIG naming the verifier's last words from the log's tail, never ENOSPC."""
    name, counted, engine = prep.name, prep.counted, prep.engine
    try:
        try:
            return engine.load_program(name, counted.insns, license=prep.license, btf=prep.btf,
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
        except VerifierRejected as e:  # our verifier, in front of an engine outside the kernel
            raise OffloadError(errno.EACCES, f"verifier refused program {name!r}: insn {e.insn}: {e.reason}",
                               "verifier", e.log) from None
        except OSError as e:
            raise OffloadError(e.errno or errno.EINVAL, f"program {name!r}: {e}") from None
        except ValueError as e:  # an engine outside the kernel that cannot load it
            raise OffloadError(errno.EINVAL, f"engine {engine.name} refused program {name!r}: {e}") from None
    except BaseException:
        engine.free_map(prep.counters)
        raise


def commit(policy: Policy, dev: Device, prep: Prepared, fd: int) -> ProgObj:
    """Bind the verified program to its handle in the device's table; the lock is held. A device
    reset (its engine replaced) or another load that took the room meanwhile: the program is freed
    and the load refused."""
    engine = prep.engine
    try:
        if dev.engine is not engine:
            raise OffloadError(errno.ECANCELED, f"device {dev.name} was reset while program "
                               f"{prep.name!r} was being verified")
        check_room(policy, dev, prep.name, prep.guest_insns)
        for h in sorted(prep.map_handles):
            _map(dev, h)
        # again, under the lock: another load may have charged (or freed) the same blob meanwhile
        dev.btf.charge(dev.name, prep.name, prep.btf, dev.map_memory, policy.quota)
        info = engine.program_info(fd)
    except BaseException:
        engine.free_program(fd)
        engine.free_map(prep.counters)
        raise
    handle = dev.handles.add(Kind.PROG, None, prep.handle)
    obj = ProgObj(handle=handle, name=prep.name, kernel_name=info.name, engine_handle=fd, tag=info.tag,
                  kernel_id=info.id, guest_insns=prep.guest_insns, host_insns=len(prep.counted.insns),
                  map_handles=tuple(sorted(prep.map_handles)), counters=prep.counters, source=prep.source,
                  origin=prep.origin)
    dev.handles.bind(handle, obj)
    dev.btf.hold(prep.source.btf)
    return obj


def _map(dev: Device, handle: int) -> MapObj:
    return dev.handles.get(handle, Kind.MAP)  # type: ignore[return-value]
