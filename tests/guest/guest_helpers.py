"""Helpers of the guest driver tests: ICMP ping from inside a netns (no ping binary here),
and both daemons as subprocesses (`vxdp.testing.daemon`, verbose) with the tests' defaults."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.testing.daemon import GuestDaemon, HostDaemon
from vxdp.testing.proc import poll

__all__ = ["GuestProc", "HostProc", "PingResult", "ping", "ping_all", "ping_checked", "poll", "tcp_transfer"]


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


@dataclass(frozen=True)
class PingResult:
    """What `ping_checked` saw. ``corrupt`` and ``duplicates`` are bugs whatever the load (a reply
    whose payload differs, a second reply to one request); ``first_try`` is what load decides."""

    count: int  # echoes asked for
    answered: int  # echoes that got an intact reply, on the first request or a retry
    first_try: int  # echoes answered on their first request, within its timeout
    requests: int  # echo requests sent, retries included
    corrupt: int  # replies with our id and a sequence we sent, but another payload
    duplicates: int  # replies to a request already answered
    late: int  # intact replies to an earlier, timed-out request
    missed: tuple[int, ...] = ()  # the echoes (0-based) that got no intact reply at all


def _ping_checked(dst: str, count: int, timeout: float, retries: int, retry_timeout: float,
                  size: int) -> PingResult:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = (os.getpid() + 1) & 0xFFFF
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    seq_echo: dict[int, int] = {}  # request sequence -> echo index
    answered_seqs: set[int] = set()
    answered: set[int] = set()
    first = corrupt = dup = late = 0
    seq = 0

    def take(data: bytes, addr: tuple) -> int | None:
        """Account one received datagram; the request sequence it answers intact, if any."""
        nonlocal corrupt, dup
        ihl = (data[0] & 0xF) * 4
        t, _c, _ck, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if t != 0 or rid != ident or addr[0] != dst or rseq not in seq_echo:
            return None
        if data[ihl + 8:] != payload:
            corrupt += 1
            return None
        if rseq in answered_seqs:
            dup += 1
            return None
        answered_seqs.add(rseq)
        return rseq

    try:
        for echo in range(count):
            for attempt in range(1 + retries):
                seq = (seq + 1) & 0xFFFF
                seq_echo[seq] = echo
                hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
                s.sendto(struct.pack("!BBHHH", 8, 0, _csum(hdr + payload), ident, seq) + payload, (dst, 0))
                deadline = time.monotonic() + (timeout if attempt == 0 else retry_timeout)
                while echo not in answered:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([s], [], [], left)[0]:
                        break
                    rseq = take(*s.recvfrom(65536))
                    if rseq is None:
                        continue
                    if rseq != seq:
                        late += 1  # the reply to an earlier, timed-out request
                    if seq_echo[rseq] == echo:
                        answered.add(echo)
                        first += rseq == seq and attempt == 0
                if echo in answered:
                    break
        # a short drain: a duplicate of the last reply would land now
        while select.select([s], [], [], 0.2)[0]:
            take(*s.recvfrom(65536))
    finally:
        s.close()
    return PingResult(count, len(answered), first, len(seq_echo), corrupt, dup, late,
                      tuple(e for e in range(count) if e not in answered))


def ping_checked(netns: str, dst: str, count: int = 5, *, timeout: float = 2.0, retries: int = 3,
                 retry_timeout: float = 5.0, size: int = 56) -> PingResult:
    """Echo requests from ``netns`` to ``dst``, each retried (a new sequence number) up to ``retries``
    times with ``retry_timeout`` when its reply is not back within ``timeout``; every reply checked."""
    return run_in_netns(netns, _ping_checked, dst, count, timeout, retries, retry_timeout, size)


# Echoes answered on the first request (2 s), as a fraction, that `ping_all` asks for. A reply
# later than that is load (a daemon or the busy-polling peer starved of the 2 CPUs), and the
# retries (3 x 5 s) absorb it; what no load explains (a corrupt or duplicated reply, an echo
# never answered in 17 s) fails exactly. Observed beside testpmd: every echo on its first try in
# 8 of 9 runs of test_driver_testpmd.py; the ninth, the first run from a new checkout, had 18/20
# on the first try, 2 late replies and one echo never answered in 17 s. Reproduced with
# NUMBA_CACHE_DIR at an empty folder (the first 20 echoes took 29 s, echo 0 never answered): the
# driver compiles its kernels on first use after saying it is ready (issue 8 §1), a bug, so
# failing there is right.
FIRST_TRY_RATIO = 0.75


def ping_all(netns: str, dst: str, count: int = 5, *, size: int = 56) -> PingResult:
    """`ping_checked`, asserting: no corrupt or duplicated reply, every echo answered (bounded
    retries), at least `FIRST_TRY_RATIO` of them on the first try."""
    r = ping_checked(netns, dst, count, size=size)
    assert r.corrupt == 0 and r.duplicates == 0, r
    assert r.answered == count, r
    assert r.first_try >= FIRST_TRY_RATIO * count, r
    return r


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
