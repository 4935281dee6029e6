"""Measuring a rate by a counter at the receiving end: the waits every benchmark of frames shares."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


@dataclass(frozen=True)
class Sample:
    frames: int
    seconds: float
    offered_frames: int | None = None  # what the source sent, where it says

    @property
    def mpps(self) -> float:
        return self.frames / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"frames": self.frames, "seconds": round(self.seconds, 4), "mpps": round(self.mpps, 4)}
        if self.offered_frames is not None:
            d["offered_mpps"] = round(self.offered_frames / self.seconds / 1e6, 4) if self.seconds else 0.0
        return d


def settled(counter: Callable[[], int], start: int | None, *, timeout: float = 60.0, step: float = 0.2) -> int:
    """Wait until ``counter`` has moved past ``start`` (None: from anywhere) and then stands still
    (bounded); its last value.

    The first frames wake every lazy path, and in a fresh checkout that includes numba
    compiling the daemons' kernels on first use (seconds): a measurement taken before that
    would count nothing, and one taken while a backlog drains would count the warm-up."""
    deadline = time.monotonic() + timeout
    last = counter()
    while time.monotonic() < deadline:
        time.sleep(step)
        now = counter()
        if (start is None or now > start) and now == last:
            return now
        last = now
    return last


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class Progress:
    """A line per step on stderr: what is being measured now, and about how long is left.

    The run's length is estimated up front (``estimate`` seconds); each step says what it
    should cost, and once a few seconds of steps are done the estimate left is scaled by how
    long the steps so far really took (daemon starts and compiles are the unknowns)."""

    def __init__(self, estimate: float, *, name: str = "bench", stream: TextIO | None = None) -> None:
        self.name = name
        self.estimate = estimate
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self._done_estimate = 0.0
        self._current = 0.0

    def step(self, what: str, cost: float) -> None:
        self._done_estimate += self._current
        self._current = cost
        elapsed = time.monotonic() - self.started
        scale = elapsed / self._done_estimate if self._done_estimate > 5 else 1.0
        left = max(0.0, self.estimate - self._done_estimate) * scale
        print(f"{self.name}: {what} ({_duration(elapsed)} in, about {_duration(left)} left)", file=self.stream,
              flush=True)

    def done(self) -> None:
        print(f"{self.name}: done in {_duration(time.monotonic() - self.started)}", file=self.stream, flush=True)


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(out_dir: str | None, name: str, pids: dict[str, int], seconds: float,
             record: dict[str, str], *, kernel: bool = False) -> Iterator[None]:
    """While the body runs (about ``seconds``): py-spy records each process of ``pids`` (raw stacks,
    ``NAME-WHO.txt``) and, with ``kernel``, ``perf record -a -g`` the whole machine, kernel included
    (``NAME-perf.txt``, its report by symbol). Each file written goes into ``record``; a profiler
    that is not installed is skipped; nothing at all without ``out_dir``."""
    if not out_dir:
        yield
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spy, perf = _py_spy(), shutil.which("perf") if kernel else None
    procs = []
    for who, pid in pids.items() if spy else ():
        path = out / f"{name}-{who}.txt"
        procs.append(subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                                       "--nonblocking", "-d", str(int(seconds) + 3), "-o", str(path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        record[f"{name}-{who}"] = str(path)
    data = out / f"{name}-perf.data"
    if perf:
        procs.append(subprocess.Popen([perf, "record", "-q", "-a", "-g", "-F", "499", "-o", str(data), "--",
                                       "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        for pr in procs:
            try:
                pr.wait(timeout=seconds + 20)
            except subprocess.TimeoutExpired:
                pr.kill()
                pr.wait(5)
        if perf and data.exists():
            report = out / f"{name}-perf.txt"
            with report.open("w") as f:
                subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", "comm,sym",
                                "--percent-limit", "1", "-g", "none"], stdout=f, stderr=subprocess.DEVNULL,
                               check=False, timeout=120)
            data.unlink()
            record[f"{name}-perf"] = str(report)
