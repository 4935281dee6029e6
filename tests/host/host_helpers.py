"""Shared pieces of the host daemon tests: the daemon as a real subprocess (``python -m
vxdp.cli.main host serve``, killed whatever happens), a quiet lab (two namespaces, a veth
pair, IPv6 off so the links carry only the frames a test sends), bounded polling, and a
peer-side frame counter."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vxdp import rpc
from vxdp.frames import FrameBatch
from vxdp.netdev.port import Port
from vxdp.testing.netns import NetLab, VethPair
from vxdp.testing.proc import OutputLog, close_pipes, spawn, stop_process

DEADLINE_S = 30.0


def poll(fn: Callable, *, until: Callable = bool, timeout: float = DEADLINE_S, what: str = "condition"):
    """Call ``fn`` until ``until(value)``; a deadline, never a sleep to wait out."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout} s")
        time.sleep(0.05)


def quiet_lab(lab: NetLab, *, addr_port: str | None = None, addr_peer: str | None = None,
              mtu: int | None = None) -> VethPair:
    """Namespaces ``ns_a`` (the daemon's port ``vxp``) and ``ns_b`` (the peer ``vxq``), IPv6 off, so
    nothing but the test's frames (and ARP/IPv4 when addresses are given) crosses the link."""
    a, b = lab.netns(), lab.netns()
    for ns in (a, b):
        for key in ("all", "default"):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"],
                           check=True)
    pair = lab.veth(a, b, "vxp", "vxq", addr_b=addr_peer, addr_a=addr_port, mtu=mtu)
    for ns, ifname in ((a, "vxp"), (b, "vxq")):  # frames must stay MTU-sized for AF_PACKET/virtio
        subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname, "tso", "off", "gso", "off",
                        "gro", "off", "tx", "off"], check=False, capture_output=True)
    return pair


class Daemon:
    """``vxdp host serve`` as a subprocess with its own run dir; `close` stops it (SIGTERM, then KILL)."""

    def __init__(self, run_dir: Path, sock: str, port: str, *, netns: str | None, name: str = "t0",
                 client: bool = False, extra: tuple[str, ...] = ()):
        self.run_dir, self.sock, self.name = Path(run_dir), sock, name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "vxdp.cli.main", "host", "serve", "--socket", sock, "--port", port,
                "--name", name, *(["--netns", netns] if netns else []), *(["--client"] if client else []), *extra]
        env_before = os.environ.get(rpc.RUN_DIR_ENV)
        os.environ[rpc.RUN_DIR_ENV] = str(self.run_dir)
        try:
            self.proc = spawn(argv)
        finally:
            if env_before is None:
                del os.environ[rpc.RUN_DIR_ENV]
            else:
                os.environ[rpc.RUN_DIR_ENV] = env_before
        self.log = OutputLog([self.proc.stdout, self.proc.stderr], f"vxdp host {name}")
        self.control = self.run_dir / f"host-{name}.sock"
        try:
            poll(lambda: self.control.exists() or self.proc.poll() is not None, timeout=60,
                 what="daemon control socket")
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log.tail()}")
        except BaseException:
            self.close()
            raise

    def show(self) -> dict:
        return rpc.call(self.control, "device.show", timeout=10)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> int | None:
        rc = stop_process(self.proc, grace=10.0)
        self.log.join()
        close_pipes(self.proc)
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Counter:
    """Counts frames arriving on a Port (in a thread) that pass ``accept``; `stop` returns the total."""

    def __init__(self, port: Port, accept: Callable[[bytes], bool]):
        self.port, self.accept = port, accept
        self.count = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import select

        b = FrameBatch.allocate(256)
        while not self._stop.is_set():
            select.select([self.port.fileno()], [], [], 0.05)
            while self.port.recv_batch(b):
                for f in b.frames():
                    if self.accept(f):
                        self.count += 1
                        self.bytes += len(f)

    def stop(self) -> int:
        self._stop.set()
        self._t.join(10)
        return self.count
