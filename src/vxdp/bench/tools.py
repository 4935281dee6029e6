"""The traffic tools benchmarks drive between two namespaces: iperf3 (streams) and sockperf (ping-pong).

One way to run each, for `vxdp.bench.datapath` and `vxdp.bench.seed`: the server starts in
its namespace and is waited for by its listening socket (bounded), the client runs for a
fixed time (bounded by a timeout), the server is always reaped, and a tool that is missing
or fails is one `ToolError` naming the Debian package or quoting the tool's own words.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

IPERF3_PORT = 5201
SOCKPERF_PORT = 11111
LISTEN_S = 10.0


class ToolError(Exception):
    """A traffic tool is missing, did not start, or failed (its output quoted)."""


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise ToolError(f"{tool} is not installed (Debian package {package})")


def _ns(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _listening(ns: str, port: int, udp: bool) -> bool:
    out = subprocess.run(_ns(ns, ["ss", "-lnu" if udp else "-lnt"]), check=False, capture_output=True,
                         text=True).stdout
    return f":{port} " in out


@contextlib.contextmanager
def _server(ns: str, argv: Sequence[str], port: int, *, udp: bool = False) -> Iterator[subprocess.Popen]:
    """``argv`` started in ``ns``; back once it listens on ``port``; always stopped."""
    proc = subprocess.Popen(_ns(ns, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + LISTEN_S
        while not _listening(ns, port, udp):
            if proc.poll() is not None:
                raise ToolError(f"{argv[0]} server exited with {proc.returncode}: {proc.stderr.read()[-500:]}")
            if time.monotonic() > deadline:
                raise ToolError(f"{argv[0]} server did not listen on port {port} within {LISTEN_S:g} s")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


@dataclass(frozen=True)
class Stream:
    """One iperf3 run, as the receiver saw it."""

    bits_per_second: float
    packets: int | None = None  # UDP: datagrams the receiver got
    lost_percent: float | None = None  # UDP


def iperf3(client_ns: str, server_ns: str, server_ip: str, seconds: int, *, reverse: bool = False,
           udp_len: int | None = None) -> Stream:
    """iperf3 from ``client_ns`` to a server at ``server_ip`` in ``server_ns`` for ``seconds`` (``-R``: the
    server sends). ``udp_len``: UDP datagrams of that many payload bytes, as fast as the sender can
    (``-b 0``); otherwise one TCP stream. The figure is what the receiving end counted."""
    _need("iperf3", "iperf3")
    with _server(server_ns, ["iperf3", "-s", "-1", "-B", server_ip], IPERF3_PORT):
        argv = ["iperf3", "-c", server_ip, "-J", "-t", str(seconds)]
        if udp_len is not None:
            argv += ["-u", "-b", "0", "-l", str(udp_len)]
        if reverse:
            argv.append("-R")
        r = subprocess.run(_ns(client_ns, argv), check=False, capture_output=True, text=True, timeout=seconds + 30)
    try:
        doc = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise ToolError(f"iperf3 failed: {r.stdout[-500:]} {r.stderr[-500:]}") from None
    if "error" in doc:
        raise ToolError(f"iperf3: {doc['error']}")
    end = doc["end"]
    if udp_len is None:
        return Stream(end["sum_received"]["bits_per_second"])
    got = end.get("sum_received") or end["sum"]  # iperf3 >= 3.10 says what the receiver got apart
    return Stream(got["bits_per_second"], got.get("packets"), got.get("lost_percent"))


@dataclass(frozen=True)
class PingPong:
    """One sockperf ping-pong run: messages answered per second and the mean one-way latency."""

    per_second: float
    latency_us: float


_RUN = re.compile(r"\[Valid Duration\] RunTime=([\d.]+) sec; .*?ReceivedMessages=(\d+)")  # past its warm-up
_LAT = re.compile(r"avg-latency=([\d.]+)")


def sockperf_ping_pong(client_ns: str, server_ns: str, server_ip: str, seconds: int, *, tcp: bool) -> PingPong:
    """sockperf ping-pong (one message in flight, answered by the server) for ``seconds``; UDP or TCP."""
    _need("sockperf", "sockperf")
    proto = ["--tcp"] if tcp else []
    with _server(server_ns, ["sockperf", "server", "-i", server_ip, "-p", str(SOCKPERF_PORT), *proto],
                 SOCKPERF_PORT, udp=not tcp):
        r = subprocess.run(_ns(client_ns, ["sockperf", "ping-pong", "-i", server_ip, "-p", str(SOCKPERF_PORT),
                                           "-t", str(seconds), *proto]),
                           check=False, capture_output=True, text=True, timeout=seconds + 30)
    text = r.stdout + r.stderr
    run, lat = _RUN.search(text), _LAT.search(text)
    if r.returncode or not run or not lat:
        raise ToolError(f"sockperf ping-pong failed (exit {r.returncode}): {text[-800:]}")
    run_s, received = float(run.group(1)), int(run.group(2))
    return PingPong(received / run_s if run_s else 0.0, float(lat.group(1)))


__all__ = ["PingPong", "Stream", "ToolError", "iperf3", "sockperf_ping_pong"]
