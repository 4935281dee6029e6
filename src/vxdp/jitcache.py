"""Compiled code built before a daemon says it is ready, and a record of what was built.

The datapath loops are numba functions with ``cache=True``: compiled on the first
call with a given set of argument types, then written to the cache (``*.nbi`` index
and ``*.nbc`` code files in the ``__pycache__`` folder beside each source file, or
under ``$NUMBA_CACHE_DIR`` when that is set) and loaded from it by later processes.
A first call therefore takes seconds of compile on a fresh install (about 20 s for
the backend's set on a 2-CPU machine) and milliseconds afterwards.

Why the daemons compile before they serve: a daemon that listens first and compiles
on its first frame tells its peers it is ready while it cannot move a frame: on a
fresh clone the first pings of ``vxdp demo`` were lost and its first control command
timed out. So each daemon runs its `Warmup` (a set of calls that type every kernel
exactly as the datapath does, on dummy inputs that do no work) before it creates a
socket or brings a tap up, and logs what it compiled; after that, `watch` logs any
kernel that still compiles at run time, which would be a warm-up that missed a type
(tests assert that it does not happen).

Each layer keeps the warm-up of its own compiled loops (``vxdp.virtio.warmup``,
``vxdp.netdev.warmup``); this module only runs them and reports. ``vxdp compile``
(run by ``make setup``) runs them all once so that the cache is there before the
first daemon starts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from numba.core import event
from numba.core.registry import CPUDispatcher

__all__ = ["WarmupReport", "cache_location", "dispatchers", "prepare", "run", "signatures", "watch"]


@dataclass
class WarmupReport:
    """What a warm-up did: functions loaded from the cache, functions compiled, how long it took."""

    loaded: list[str] = field(default_factory=list)
    compiled: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        if not self.compiled:
            return f"{len(self.loaded)} compiled functions loaded from the cache in {self.seconds:.1f} s"
        return (f"{len(self.compiled)} functions compiled ({len(self.loaded)} loaded from the cache) in "
                f"{self.seconds:.1f} s, cached under {cache_location()}")


def cache_location() -> str:
    """Where numba keeps the cache of this package's compiled functions (what ``vxdp compile`` fills)."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return env
    return str(Path(__file__).resolve().parent / "**" / "__pycache__")


def dispatchers() -> list[CPUDispatcher]:
    """Every numba dispatcher of the vxdp modules imported so far (the compiled loops the warm-ups type)."""
    import sys

    found: dict[int, CPUDispatcher] = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "vxdp" or name.startswith("vxdp.")):
            continue
        for obj in list(vars(mod).values()):
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__.startswith("vxdp."):
                found[id(obj)] = obj
    return list(found.values())


def _name(d: CPUDispatcher) -> str:
    return f"{d.py_func.__module__}.{d.py_func.__qualname__}"


def signatures() -> dict[str, set]:
    """Each kernel's typed versions so far (compiled or loaded): what a test compares before and after."""
    return {_name(d): set(d.signatures) for d in dispatchers()}


def run(warmups: Iterable[Callable[[], None]]) -> WarmupReport:
    """Run each warm-up; report which functions were loaded from the cache and which were compiled."""
    t0 = time.monotonic()
    before = {_name(d): (sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()))
              for d in dispatchers()}
    for warm in warmups:
        warm()
    report = WarmupReport(seconds=time.monotonic() - t0)
    for d in dispatchers():
        hits0, misses0 = before.get(_name(d), (0, 0))
        hits, misses = sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values())
        if misses > misses0:
            report.compiled.append(_name(d))
        elif hits > hits0:
            report.loaded.append(_name(d))
    return report


class _RuntimeCompileLog(event.Listener):
    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log, self.what = log, what

    def on_start(self, ev: event.Event) -> None:
        d = ev.data.get("dispatcher")
        name = _name(d) if d is not None else "?"
        self.log.warning("%s: compiling %s%s while serving: the warm-up missed these argument types "
                         "(the datapath stalls until it is done)", self.what, name, tuple(ev.data.get("args", ())))

    def on_end(self, ev: event.Event) -> None:
        pass


_watching: list[_RuntimeCompileLog] = []


def watch(log: logging.Logger, what: str) -> None:
    """From now on, log a warning for every kernel compiled in this process (none should be).
    Once per process: a second call only renames who is warned about."""
    if _watching:
        _watching[0].log, _watching[0].what = log, what
        return
    _watching.append(_RuntimeCompileLog(log, what))
    event.register("numba:compile", _watching[0])


def prepare(log: logging.Logger, what: str, warmups: Iterable[Callable[[], None]],
            first_run_s: int) -> WarmupReport:
    """A daemon's step before it serves: run its warm-ups, log what they did, then `watch`.
    ``first_run_s`` is what a compile from an empty cache takes, for the line a waiting user reads."""
    log.info("%s: loading the datapath's compiled loops (a first run after install compiles them: "
             "about %d s; `vxdp compile` does it ahead)", what, first_run_s)
    report = run(warmups)
    log.info("%s: %s", what, report.summary())
    watch(log, what)
    return report
