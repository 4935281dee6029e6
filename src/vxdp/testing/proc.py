"""Child processes the harness starts and always stops: output capture and bounded waits.

Why a reader thread per stream: QEMU's serial console and testpmd's prompt are long-lived
pipes that we must read while also writing to them; a thread that appends every byte to one
buffer lets callers wait for a pattern with a deadline (``OutputLog.wait_for``) without
non-blocking I/O juggling, and keeps the whole transcript for error messages.

Why ``PR_SET_PDEATHSIG``: if pytest itself is killed, QEMU and testpmd must not outlive it and
hold sockets, memory and CPUs. The signal fires when the *thread* that forked the child exits,
so start these processes from a long-lived thread (the main one), not a throwaway thread.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


class HarnessError(Exception):
    """A peer process failed to start, died, or did not answer in time."""


class HarnessTimeout(HarnessError):
    """A bounded wait ran out; the message carries the tail of the peer's output."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv: Sequence[str], *, die_with_parent: bool = True,
          env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` with stdin/stdout/stderr on pipes (stdin stays open: testpmd quits on EOF);
    ``env`` replaces the child's environment (never ours: other threads read it)."""
    try:
        return subprocess.Popen(
            list(argv),
            env=None if env is None else dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # PLW1509: the hook only calls prctl (no locks), and no Popen option sets PDEATHSIG
            preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509
        )
    except OSError as e:
        raise HarnessError(f"cannot start {argv[0]}: {e}") from e


def stop_process(proc: subprocess.Popen, *, grace: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
    """``sig`` (SIGTERM), then SIGKILL after ``grace`` seconds; always reaps; closes stdin. Returns the status."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    return proc.returncode


def close_pipes(proc: subprocess.Popen) -> None:
    """Close our ends of stdout/stderr, once the reader threads have seen EOF (never under them)."""
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


class OutputLog:
    """Everything a child wrote on one or more pipes, decoded, with waits for patterns."""

    def __init__(self, streams: Sequence, name: str):
        self.name = name
        self._text = ""
        self._cond = threading.Condition()
        self._open = len(streams)
        self._threads = [
            threading.Thread(target=self._pump, args=(s,), name=f"{name}-out", daemon=True) for s in streams
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream) -> None:
        try:
            while True:
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    break
                with self._cond:
                    self._text += chunk.decode("utf-8", "replace").replace("\r", "")
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._open -= 1
                self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return self._text

    def __len__(self) -> int:
        with self._cond:
            return len(self._text)

    def tail(self, n: int = 2000) -> str:
        return self.text[-n:]

    def wait_for(self, pattern: str | re.Pattern, *, start: int = 0, timeout: float,
                 proc: subprocess.Popen | None = None) -> re.Match:
        """First match of ``pattern`` at or after ``start``; raises on timeout or when the output ends."""
        rx = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._text, start)
                if m:
                    return m
                if self._open == 0 or (proc is not None and proc.poll() is not None):
                    raise HarnessError(
                        f"{self.name} ended (status {proc.poll() if proc else '?'}) before "
                        f"{rx.pattern!r} appeared; last output:\n{self._text[-2000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessTimeout(
                        f"{self.name}: no {rx.pattern!r} within {timeout:g} s; last output:\n"
                        f"{self._text[-2000:]}")
                self._cond.wait(min(left, 0.5))

    def join(self, timeout: float = 5.0) -> None:
        for t in self._threads:
            t.join(timeout)


def poll(fn: Callable[[], Any], until: Callable[[Any], bool] = bool, *, timeout: float = 30.0,
         what: str = "condition") -> Any:
    """Call ``fn`` until ``until(value)``; `HarnessTimeout` with the last value after ``timeout`` seconds
    (a deadline, never a sleep to wait out)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise HarnessTimeout(f"{what}: still {value!r} after {timeout:g} s")
        time.sleep(0.05)


def wait_for_path(path: str | Path, *, timeout: float, proc: subprocess.Popen | None = None,
                  what: str = "socket") -> None:
    """Poll (bounded) until ``path`` exists, e.g. a vhost-user socket a server is about to bind."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.poll() is not None:
            raise HarnessError(f"process exited (status {proc.returncode}) before creating {what} {path}")
        if time.monotonic() >= deadline:
            raise HarnessTimeout(f"{what} {path} did not appear within {timeout:g} s")
        time.sleep(0.05)
