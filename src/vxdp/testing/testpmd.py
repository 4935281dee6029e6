"""DPDK's testpmd as a real vhost-user peer: ``net_vhost`` is a backend (device side),
``virtio_user`` a frontend (driver side). Used by tests as the reference peer of our code
and by benchmarks as the DPDK anchor.

Facts this module relies on (DPDK 22.11 from Debian 12, measured here):
- It runs without hugepages: ``--no-huge -m 512 --no-pci``; each instance needs its own
  ``--file-prefix`` (DPDK names its runtime files by it).
- testpmd exits at once when stdin is at EOF (/dev/null), in interactive mode and not, so
  stdin stays an open pipe for its whole life; ``quit`` on it shuts it down cleanly.
- On a pipe its stdout is block-buffered, so a command's output would arrive at exit only:
  we run it under ``stdbuf -oL``. Interactive mode echoes each command and then prints the
  next ``testpmd> `` prompt after the command's output, which delimits a reply.
- ``net_vhost0,iface=SOCK,client=0`` creates and listens on SOCK; ``client=1`` connects (and
  reconnects). ``virtio_user0,path=SOCK`` connects to a listening backend, or listens itself
  with ``server=1``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from .proc import HarnessError, OutputLog, close_pipes, spawn, stop_process, wait_for_path

TESTPMD = "dpdk-testpmd"
PROMPT = "testpmd> "


class TestpmdError(HarnessError):
    """testpmd did not start, died, or did not answer a command in time."""

    __test__ = False  # not a pytest test class, despite the name


@dataclass(frozen=True)
class PortStats:
    """One port's counters from ``show port stats all``."""

    port: int
    rx_packets: int
    rx_missed: int
    rx_bytes: int
    rx_errors: int
    rx_nombuf: int
    tx_packets: int
    tx_errors: int
    tx_bytes: int


_STATS_RX = re.compile(
    r"NIC statistics for port (\d+)\s+#+\s*\n"
    r"\s*RX-packets:\s*(\d+)\s+RX-missed:\s*(\d+)\s+RX-bytes:\s*(\d+)\s*\n"
    r"\s*RX-errors:\s*(\d+)\s*\n"
    r"\s*RX-nombuf:\s*(\d+)\s*\n"
    r"\s*TX-packets:\s*(\d+)\s+TX-errors:\s*(\d+)\s+TX-bytes:\s*(\d+)")


def parse_port_stats(text: str) -> dict[int, PortStats]:
    """Every port block in the output of ``show port stats all``, keyed by port id."""
    out: dict[int, PortStats] = {}
    for m in _STATS_RX.finditer(text):
        v = [int(g) for g in m.groups()]
        out[v[0]] = PortStats(*v)
    return out


def testpmd_argv(vdevs: Sequence[str], *, forward_mode: str, lcores: str, file_prefix: str,
                 mem_mb: int = 512, total_num_mbufs: int = 32768, auto_start: bool = True,
                 extra: Sequence[str] = (), binary: str = TESTPMD) -> list[str]:
    """The command line (public so that docs and benchmarks show exactly what ran)."""
    argv = ["stdbuf", "-oL", binary, "--no-huge", "-m", str(mem_mb), "--no-pci",
            "--file-prefix", file_prefix, "--lcores", lcores]
    for v in vdevs:
        argv += ["--vdev", v]
    argv += ["--", "-i", f"--forward-mode={forward_mode}", f"--total-num-mbufs={total_num_mbufs}"]
    if auto_start:
        argv.append("--auto-start")
    return argv + list(extra)


testpmd_argv.__test__ = False  # type: ignore[attr-defined]  # pytest: a helper, not a test


class Testpmd:
    """A running interactive testpmd; a context manager that always stops it.

    ``vdev_args`` is one ``--vdev`` string or several, e.g.
    ``"net_vhost0,iface=/tmp/s,client=0,queues=1"``. ``lcores`` like ``"0@1,1@1"`` maps testpmd's
    lcores 0 (main) and 1 (forwarding) onto host CPU 1. Forwarding starts at once unless
    ``auto_start=False`` (then call :meth:`command` with ``"start"``).
    """

    __test__ = False

    def __init__(self, vdev_args: str | Sequence[str], *, forward_mode: str, lcores: str = "0@1,1@1",
                 file_prefix: str, mem_mb: int = 512, total_num_mbufs: int = 32768,
                 auto_start: bool = True, extra: Sequence[str] = (), binary: str = TESTPMD,
                 start_timeout: float = 30.0, die_with_parent: bool = True):
        vdevs = [vdev_args] if isinstance(vdev_args, str) else list(vdev_args)
        if not vdevs:
            raise TestpmdError("testpmd needs at least one --vdev")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", file_prefix):
            raise TestpmdError(f"bad file prefix {file_prefix!r}")
        self.argv = testpmd_argv(vdevs, forward_mode=forward_mode, lcores=lcores, file_prefix=file_prefix,
                                 mem_mb=mem_mb, total_num_mbufs=total_num_mbufs, auto_start=auto_start,
                                 extra=extra, binary=binary)
        self._proc = spawn(self.argv, die_with_parent=die_with_parent)
        self.log = OutputLog([self._proc.stdout, self._proc.stderr], f"testpmd {file_prefix}")
        try:
            self.log.wait_for(re.escape(PROMPT), timeout=start_timeout, proc=self._proc)
        except HarnessError as e:
            self.close()
            raise TestpmdError(f"testpmd did not start: {e}") from e

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def wait_socket(self, path: str | Path, timeout: float = 10.0) -> None:
        """Wait until a server-mode vdev (net_vhost client=0, virtio_user server=1) listens on ``path``."""
        try:
            wait_for_path(path, timeout=timeout, proc=self._proc, what="testpmd's vhost-user socket")
        except HarnessError as e:
            raise TestpmdError(f"{e}; testpmd output:\n{self.log.tail()}") from e

    def command(self, line: str, timeout: float = 10.0) -> str:
        """Send one interactive command; return what it printed before the next prompt."""
        if "\n" in line:
            raise TestpmdError(f"one line per command, got {line!r}")
        start = len(self.log)
        try:
            self._proc.stdin.write(line.encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            raise TestpmdError(f"testpmd is gone (status {self._proc.poll()})") from e
        try:
            echo = self.log.wait_for(re.escape(line) + r"\n", start=start, timeout=timeout, proc=self._proc)
            end = self.log.wait_for(re.escape(PROMPT), start=echo.end(), timeout=timeout, proc=self._proc)
        except HarnessError as e:
            raise TestpmdError(f"testpmd command {line!r}: {e}") from e
        return self.log.text[echo.end():end.start()]

    def port_stats(self, timeout: float = 10.0) -> dict[int, PortStats]:
        """``show port stats all``, parsed; raises if no port block was found."""
        out = self.command("show port stats all", timeout)
        stats = parse_port_stats(out)
        if not stats:
            raise TestpmdError(f"no port statistics in testpmd's answer:\n{out}")
        return stats

    def close(self) -> None:
        """``quit``, then SIGTERM/SIGKILL if it lingers; always reaps; safe to call twice."""
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(b"quit\n")
                self._proc.stdin.flush()
                self._proc.wait(timeout=5.0)
            except Exception:  # noqa: BLE001, S110 - whatever happened, stop_process below ends it
                pass
        stop_process(self._proc, grace=5.0)
        self.log.join()
        close_pipes(self._proc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
