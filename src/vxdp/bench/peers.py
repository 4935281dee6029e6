"""The processes a datapath benchmark runs: our two daemons as the CLI starts them, and testpmd.

The daemons are `vxdp.testing.daemon`'s (subprocesses, so the figures are those of ``vxdp host
serve`` and ``vxdp guest run`` as users run them, and profilers attach by pid), each pinned to
a CPU. Each is a context manager that always stops its process. Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vxdp.testing.daemon import GuestDaemon, HostDaemon
from vxdp.testing.proc import poll
from vxdp.testing.testpmd import Testpmd


class Backend(HostDaemon):
    """``vxdp host serve`` on ``port`` in ``netns``, listening on ``sock``."""

    def __init__(self, sock: str, port: str, netns: str, run_dir: Path, name: str = "bh0",
                 mac: str = "52:54:00:0a:0b:0c", cpu: int | None = None, extra: Sequence[str] = ()) -> None:
        super().__init__(sock, port, netns, run_dir, name=name, mac=mac, cpu=cpu, extra=extra)


class Guest(GuestDaemon):
    """``vxdp guest run`` connecting to ``sock``, its tap ``tap`` in ``netns``."""

    def __init__(self, sock: str, netns: str, tap: str, run_dir: Path, *, addr: str | None = None,
                 name: str = "bg0", cpu: int | None = None) -> None:
        super().__init__(sock, netns, tap, run_dir, name=name, addr=addr, cpu=cpu)

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
        # starting the port is vhost-user messages to the backend, answered between its datapath
        # batches: on a loaded 2-CPU machine it once took more than the default 10 s
        pmd.command("start", timeout=30)
    except BaseException:
        pmd.close()
        raise
    return pmd
