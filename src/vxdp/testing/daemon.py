"""Our own daemons (``vxdp host serve``, ``vxdp guest run``) as subprocesses: the one way that
tests, benchmarks and ``vxdp demo`` start, talk to and stop them.

Why subprocesses and not the classes in-process: what runs must be what users run (one Python
process and one event loop per daemon, its CLI parsing and signal handling), and profilers
(py-spy) attach to it by pid.

Why ``$VXDP_RUN_DIR`` goes into the child's environment only: the daemon puts its control socket
there, and setting it in ``os.environ`` around the fork would race with other threads of ours and
leak into every later child. `Daemon.env` is that environment, for CLI calls made alongside.

Why pipes read by `OutputLog` (and a file only at the end): tests wait for log lines
(``log.wait_for``) and every error message carries the tail of the output; the demo wants files
a user can read afterwards. Every wait is bounded; `Daemon.stop` always reaps (SIGTERM, then
SIGKILL) and `spawn` sets PDEATHSIG, so a killed parent leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from vxdp import rpc

from .proc import (
    HarnessError,
    HarnessTimeout,
    OutputLog,
    close_pipes,
    poll,
    spawn,
    stop_process,
    wait_for_path,
)

__all__ = ["Daemon", "DaemonError", "GuestDaemon", "HostDaemon"]

# A daemon compiles (or loads) its datapath kernels before it creates a socket (vxdp.jitcache): from an
# empty cache that is ~20 s on an idle 2-CPU machine, and two daemons starting together share the CPUs.
START_S = 120.0
STOP_GRACE_S = 10.0


class DaemonError(HarnessError):
    """A daemon did not start in time or died."""


class Daemon:
    """``python -m vxdp.cli.main ARGV`` with its control socket ``run_dir/control``; a context
    manager that always stops it. ``cpu`` pins it before it starts threads (they inherit it);
    ``log_file`` receives the whole output when it stops; ``env`` is added to the environment it
    inherits (e.g. ``NUMBA_CACHE_DIR``)."""

    def __init__(self, argv: Sequence[str], run_dir: str | os.PathLike, control: str, *, what: str,
                 cpu: int | None = None, log_file: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self.what = what
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.control = self.run_dir / control
        self.log_file = log_file
        self.env = {**os.environ, **(env or {}), rpc.RUN_DIR_ENV: str(self.run_dir)}
        self.proc = spawn([sys.executable, "-m", "vxdp.cli.main", *argv], env=self.env)
        self.log = OutputLog([self.proc.stdout, self.proc.stderr], what)
        if cpu is not None:
            try:
                os.sched_setaffinity(self.proc.pid, {cpu})
            except OSError:  # fewer CPUs than asked for: run unpinned
                pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self, n: int = 4000) -> str:
        """The last ``n`` characters the daemon wrote (stdout and stderr), for failure messages."""
        return self.log.tail(n)

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise DaemonError(f"{self.what} exited with {self.proc.returncode}:\n{self.output(2000)}")

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> Any:
        """One request on the control socket (`rpc.RpcError` if refused, `DaemonError` if it died)."""
        self._check_alive()
        return rpc.call(self.control, method, timeout=timeout, **params)

    def wait_path(self, path: str | os.PathLike, what: str, timeout: float = START_S) -> None:
        """Until ``path`` exists; `DaemonError` at once if the daemon exits meanwhile."""
        try:
            wait_for_path(path, timeout=timeout, proc=self.proc, what=what)
        except HarnessError as e:
            raise DaemonError(f"{self.what}: {e}; last output:\n{self.output(2000)}") from None

    def wait_control(self, timeout: float = START_S) -> None:
        """Until the daemon is ready: it listens on its control socket only once its kernels are compiled
        and its other sockets are bound. Connecting is the test, not the path: a daemon killed earlier
        may have left the path behind."""
        what = ("its control socket (it listens once its datapath kernels are compiled or loaded from the "
                "cache; `vxdp compile` builds the cache)")

        def listening() -> bool:
            self._check_alive()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.control))
                return True
            except OSError:
                return False
            finally:
                s.close()
        try:
            poll(listening, bool, timeout=timeout, what=f"{self.what} listening on {what}")
        except HarnessTimeout as e:
            raise DaemonError(f"{e}; last output:\n{self.output(2000)}") from None

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds the daemon used so far, from /proc/PID/stat."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> int | None:
        """``sig``, then SIGKILL after ``grace`` s; reaps, drains the output. Returns the exit status."""
        rc = stop_process(self.proc, grace=grace, sig=sig)
        self.log.join()
        close_pipes(self.proc)
        if self.log_file is not None:
            self.log_file.write_text(self.log.text)
        return rc

    def _started(self, *paths: tuple[str | os.PathLike, str]) -> None:
        """Wait for the control socket and ``paths`` ((path, what) pairs); stops the daemon on failure."""
        try:
            self.wait_control()
            for path, what in paths:
                self.wait_path(path, what)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class HostDaemon(Daemon):
    """``vxdp host serve`` on ``port`` (in ``netns``); back from the constructor once it answers
    and, unless ``client``, listens on its vhost-user socket ``sock``."""

    def __init__(self, sock: str, port: str, netns: str | None, run_dir: str | os.PathLike, *, name: str,
                 mac: str | None = None, client: bool = False, extra: Sequence[str] = (),
                 cpu: int | None = None, log_file: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        argv = ["host", "serve", "--socket", sock, "--port", port, "--name", name,
                *(["--netns", netns] if netns else []), *(["--mac", mac] if mac else []),
                *(["--client"] if client else []), *extra]
        super().__init__(argv, run_dir, f"host-{name}.sock", what=f"vxdp host {name}", cpu=cpu, log_file=log_file,
                         env=env)
        self._started(*([] if client else [(sock, "vhost-user socket")]))

    def show(self) -> dict:
        return self.call("device.show", timeout=10.0)


class GuestDaemon(Daemon):
    """``vxdp guest run`` on ``sock``, its tap ``tap`` in ``netns``; back once it answers."""

    def __init__(self, sock: str, netns: str, tap: str, run_dir: str | os.PathLike, *, name: str,
                 addr: str | None = None, server: bool = False, extra: Sequence[str] = (),
                 cpu: int | None = None, log_file: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        argv = ["guest", "run", "--socket", sock, "--netns", netns, "--tap", tap, "--name", name,
                *(["--addr", addr] if addr else []), *(["--server"] if server else []), *extra]
        super().__init__(argv, run_dir, f"guest-{name}.sock", what=f"vxdp guest {name}", cpu=cpu,
                         log_file=log_file, env=env)
        self._started()

    def show(self) -> dict:
        return self.call("guest.show", timeout=10.0)

    def wait_connected(self, timeout: float = 30.0, connects: int = 1) -> dict:
        """Its ``guest.show`` once connected ``connects`` times or more (`DaemonError` if it died)."""
        def get() -> dict | None:
            try:
                return self.show()
            except rpc.RpcError:
                return None
        return poll(get, lambda d: d is not None and d["connected"] and d["counters"]["connects"] >= connects,
                    timeout=timeout, what=f"{self.what} connected")
