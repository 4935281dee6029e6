"""Helpers of the guest driver tests: ICMP ping from inside a netns (no ping binary here),
the driver as a subprocess that is always stopped, bounded polling."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from vxdp import rpc
from vxdp.bpf.kernel.netns import run_in_netns


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _ping(dst: str, count: int, timeout: float, size: int, interval: float) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    got = 0
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    try:
        for seq in range(count):
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            pkt = struct.pack("!BBHHH", 8, 0, _csum(hdr + payload), ident, seq) + payload
            s.sendto(pkt, (dst, 0))
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select([s], [], [], left)
                if not r:
                    break
                data, addr = s.recvfrom(65536)
                ihl = (data[0] & 0xF) * 4
                t, _c, _ck, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if t == 0 and rid == ident and rseq == seq and addr[0] == dst:
                    if data[ihl + 8:] == payload:
                        got += 1
                    break
            if interval:
                time.sleep(interval)
    finally:
        s.close()
    return got


def ping(netns: str, dst: str, count: int = 5, *, timeout: float = 2.0, size: int = 56,
         interval: float = 0.0) -> int:
    """Echo requests from ``netns`` to ``dst``; returns how many intact replies came back (bounded)."""
    return run_in_netns(netns, _ping, dst, count, timeout, size, interval)


def poll(fn: Callable[[], object], until: Callable[[object], bool], *, timeout: float, what: str):
    """Call ``fn`` until ``until(value)``; AssertionError with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout} s")
        time.sleep(0.1)


class _Daemon:
    """A ``vxdp`` daemon as a subprocess logging to a file in its run dir; a context manager that
    always stops it (SIGTERM, then SIGKILL after 10 s)."""

    def __init__(self, argv: list[str], run_dir: Path, log_name: str) -> None:
        self.run_dir = run_dir
        self.path = run_dir / log_name
        self.env = dict(os.environ, VXDP_RUN_DIR=str(run_dir))
        self.log = open(self.path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "vxdp.cli.main", *argv], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = 15) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class GuestProc(_Daemon):
    """``vxdp guest run`` as a subprocess with its own run dir, always stopped."""

    def __init__(self, sock: str, netns: str, tap: str, run_dir: Path, *, addr: str | None = None,
                 name: str = "g0", server: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.name = name
        argv = ["guest", "run", "--socket", sock, "--netns", netns, "--tap", tap, "--name", name, "-v"]
        if addr:
            argv += ["--addr", addr]
        if server:
            argv.append("--server")
        super().__init__(argv + list(extra), run_dir, f"guest-{name}.log")

    @property
    def control(self) -> Path:
        return self.run_dir / f"guest-{self.name}.sock"

    def show(self) -> dict:
        return rpc.call(self.control, "guest.show", timeout=10.0)

    def call(self, method: str, **params):
        return rpc.call(self.control, method, timeout=15.0, **params)

    def wait_connected(self, timeout: float = 30.0, connects: int = 1) -> dict:
        def get():
            if self.proc.poll() is not None:
                raise AssertionError(f"guest driver exited with {self.proc.returncode}: {self.output()}")
            try:
                return self.show()
            except rpc.RpcError:
                return None
        return poll(get, lambda d: d is not None and d["connected"] and d["counters"]["connects"] >= connects,
                    timeout=timeout, what="guest driver connected")


class HostProc(_Daemon):
    """``vxdp host serve`` as a subprocess, always stopped; in server mode, ready once it listens."""

    def __init__(self, sock: str, port: str, netns: str, run_dir: Path, *, name: str = "hd0",
                 mac: str = "52:54:00:12:34:56", client: bool = False, extra: tuple[str, ...] = ()) -> None:
        argv = ["host", "serve", "--socket", sock, "--port", port, "--netns", netns, "--name", name,
                "--mac", mac, "-v"]
        if client:
            argv.append("--client")
        super().__init__(argv + list(extra), run_dir, f"host-{name}.log")
        if not client:
            poll(lambda: os.path.exists(sock) or self.proc.poll() is not None, bool, timeout=30,
                 what="host backend listening")
            if self.proc.poll() is not None:
                raise AssertionError(f"host backend exited: {self.output()}")


def tcp_transfer(src_ns: str, dst_ns: str, dst_ip: str, data: bytes, timeout: float = 60.0) -> tuple[str, int]:
    """Send ``data`` over TCP from a socket in ``src_ns`` to a listener in ``dst_ns``; return the
    receiver's (sha256 hex, byte count). Sockets keep the netns they were created in."""
    import hashlib
    import threading

    lsock = run_in_netns(dst_ns, socket.create_server, (dst_ip, 0))
    csock = run_in_netns(src_ns, socket.socket, socket.AF_INET, socket.SOCK_STREAM)
    lsock.settimeout(timeout)
    csock.settimeout(timeout)
    box: dict[str, object] = {}

    def receive() -> None:
        try:
            conn, _ = lsock.accept()
            conn.settimeout(timeout)
            h, n = hashlib.sha256(), 0
            with conn:
                while chunk := conn.recv(1 << 16):
                    h.update(chunk)
                    n += len(chunk)
            box["result"] = (h.hexdigest(), n)
        except OSError as e:
            box["error"] = e

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    try:
        csock.connect((dst_ip, lsock.getsockname()[1]))
        csock.sendall(data)
        csock.shutdown(socket.SHUT_WR)
        t.join(timeout)
    finally:
        csock.close()
        lsock.close()
    if "error" in box:
        raise AssertionError(f"receiver failed: {box['error']}")
    if "result" not in box:
        raise AssertionError(f"transfer not done within {timeout} s")
    return box["result"]  # type: ignore[return-value]
