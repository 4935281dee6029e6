"""Measuring a rate by a counter at the receiving end: the waits every benchmark of frames shares."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


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
