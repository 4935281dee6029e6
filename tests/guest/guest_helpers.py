"""Helpers of the guest driver tests: ICMP ping from inside a netns (no ping binary here),
and both daemons as subprocesses (`vxdp.testing.daemon`, verbose) with the tests' defaults."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from pathlib import Path

from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.testing.daemon import GuestDaemon, HostDaemon
from vxdp.testing.proc import poll

__all__ = ["GuestProc", "HostProc", "ping", "poll", "tcp_transfer"]


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


class GuestProc(GuestDaemon):
    """``vxdp guest run -v`` as a subprocess with its own run dir, always stopped."""

    def __init__(self, sock: str, netns: str, tap: str, run_dir: Path, *, addr: str | None = None,
                 name: str = "g0", server: bool = False, extra: tuple[str, ...] = ()) -> None:
        super().__init__(sock, netns, tap, run_dir, name=name, addr=addr, server=server, extra=("-v", *extra))


class HostProc(HostDaemon):
    """``vxdp host serve -v`` as a subprocess, always stopped; in server mode, ready once it listens."""

    def __init__(self, sock: str, port: str, netns: str, run_dir: Path, *, name: str = "hd0",
                 mac: str = "52:54:00:12:34:56", client: bool = False, extra: tuple[str, ...] = ()) -> None:
        super().__init__(sock, port, netns, run_dir, name=name, mac=mac, client=client, extra=("-v", *extra))


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
