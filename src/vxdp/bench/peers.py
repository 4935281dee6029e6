"""The processes a datapath benchmark runs: our two daemons as the CLI starts them, and testpmd.

Why subprocesses and not the classes in-process: the figures must be those of ``vxdp host
serve`` and ``vxdp guest run`` as users run them (one Python process, one event loop each),
and profilers (py-spy) attach to them by pid. Each is a context manager that always stops
its process (SIGTERM, then SIGKILL; `vxdp.testing.proc` also sets PDEATHSIG so a killed
benchmark leaves nothing behind). Every wait is bounded.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from vxdp import rpc
from vxdp.testing.proc import HarnessError, OutputLog, close_pipes, spawn, stop_process
from vxdp.testing.testpmd import Testpmd

START_S = 60.0


class PeerError(HarnessError):
    """A daemon did not start, died, or a bounded wait ran out."""


def poll(fn: Callable[[], Any], until: Callable[[Any], bool] = bool, *, timeout: float, what: str) -> Any:
    """Call ``fn`` until ``until(value)``; `PeerError` with the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise PeerError(f"{what}: still {value!r} after {timeout:g} s")
        time.sleep(0.05)


class _Daemon:
    """A ``python -m vxdp.cli.main …`` daemon with its control socket in ``run_dir``."""

    def __init__(self, argv: list[str], run_dir: Path, control: str, what: str, cpu: int | None) -> None:
        self.what = what
        self.control = run_dir / control
        before = os.environ.get(rpc.RUN_DIR_ENV)
        os.environ[rpc.RUN_DIR_ENV] = str(run_dir)
        try:
            self.proc = spawn([sys.executable, "-m", "vxdp.cli.main", *argv])
        finally:
            if before is None:
                del os.environ[rpc.RUN_DIR_ENV]
            else:
                os.environ[rpc.RUN_DIR_ENV] = before
        self.log = OutputLog([self.proc.stdout, self.proc.stderr], what)
        if cpu is not None:  # before it starts threads: they inherit it
            try:
                os.sched_setaffinity(self.proc.pid, {cpu})
            except OSError:
                pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds the daemon used so far (/proc/PID/stat), for "what limits us"."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> Any:
        if self.proc.poll() is not None:
            raise PeerError(f"{self.what} exited with {self.proc.returncode}:\n{self.log.tail()}")
        return rpc.call(self.control, method, timeout=timeout, **params)

    def _wait_control(self) -> None:
        try:
            poll(lambda: self.control.exists() or self.proc.poll() is not None, timeout=START_S,
                 what=f"{self.what} control socket")
            if self.proc.poll() is not None:
                raise PeerError(f"{self.what} exited with {self.proc.returncode}:\n{self.log.tail()}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        stop_process(self.proc, grace=10.0)
        self.log.join()
        close_pipes(self.proc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Backend(_Daemon):
    """``vxdp host serve`` on ``port`` in ``netns``, listening on ``sock``."""

    def __init__(self, sock: str, port: str, netns: str, run_dir: Path, name: str = "bh0",
                 mac: str = "52:54:00:0a:0b:0c", cpu: int | None = None) -> None:
        super().__init__(["host", "serve", "--socket", sock, "--port", port, "--netns", netns, "--name", name,
                          "--mac", mac], run_dir, f"host-{name}.sock", f"vxdp host {name}", cpu)
        self._wait_control()
        try:
            poll(lambda: os.path.exists(sock), timeout=START_S, what="backend's vhost-user socket")
        except BaseException:
            self.close()
            raise

    def show(self) -> dict:
        return self.call("device.show", timeout=10.0)


class Guest(_Daemon):
    """``vxdp guest run`` connecting to ``sock``, its tap ``tap`` in ``netns``."""

    def __init__(self, sock: str, netns: str, tap: str, run_dir: Path, *, addr: str | None = None,
                 name: str = "bg0", cpu: int | None = None) -> None:
        super().__init__(["guest", "run", "--socket", sock, "--netns", netns, "--tap", tap, "--name", name,
                          *(["--addr", addr] if addr else [])], run_dir, f"guest-{name}.sock", f"vxdp guest {name}", cpu)
        self._wait_control()

    def show(self) -> dict:
        return self.call("guest.show", timeout=10.0)

    def wait_connected(self, timeout: float = 30.0) -> dict:
        def get():
            try:
                return self.show()
            except rpc.RpcError:
                return None
        return poll(get, lambda d: d is not None and d["connected"], timeout=timeout,
                    what=f"{self.what} connected")

    def rx_frames(self) -> int:
        return self.show()["counters"]["rx_frames"]


def testpmd_vhost(sock: str, mode: str, prefix: str, lcores: str) -> Testpmd:
    """testpmd as the BACKEND (net_vhost listening on ``sock``), forwarding started."""
    pmd = Testpmd(f"net_vhost0,iface={sock},client=0,queues=1", forward_mode=mode, file_prefix=prefix,
                  lcores=lcores)
    try:
        pmd.wait_socket(sock)
    except BaseException:
        pmd.close()
        raise
    return pmd


def testpmd_virtio_user(sock: str, mode: str, prefix: str, lcores: str) -> Testpmd:
    """testpmd as the DRIVER (virtio_user connecting to ``sock``), started once the link is up.

    cq=1: virtio_user emulates the ctrl queue itself, so enabling promiscuous mode cannot fail
    and split its prompt (see tests/host/test_server_testpmd.py).
    """
    pmd = Testpmd(f"virtio_user0,path={sock},queues=1,cq=1", forward_mode=mode, auto_start=False,
                  file_prefix=prefix, lcores=lcores)
    try:
        poll(lambda: "Link status: up" in pmd.command("show port info 0"), timeout=30, what="virtio_user link")
        pmd.command("start")
    except BaseException:
        pmd.close()
        raise
    return pmd
