"""`vxdp.bench.guest_hooks` in ``vxdp guest run`` as users run it: ``guest.bench_tx`` posts exactly the
frames asked for, ``guest.bench_discard`` keeps received frames from the tap until turned off."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from vxdp import rpc
from vxdp.bench.port import FRAME_64
from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.testing.daemon import GuestDaemon, HostDaemon
from vxdp.testing.netns import NetLab
from vxdp.testing.proc import poll

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

FRAMES = 500


def _send(ifname: str, frame: bytes, count: int) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((ifname, 0))
        for _ in range(count):
            s.send(frame)
    finally:
        s.close()


@pytest.fixture
def daemons(tmp_path: Path):
    with NetLab("vxbh") as lab:
        traffic, hostns, guest = lab.netns(ipv6=False), lab.netns(ipv6=False), lab.netns(ipv6=False)
        lab.veth(traffic, hostns, "vxt0", "vxp0")
        sock = str(tmp_path / "vh.sock")
        with HostDaemon(sock, "vxp0", hostns, tmp_path, name="bh0") as host, \
                GuestDaemon(sock, guest, "vxg0", tmp_path, name="bg0") as g:
            g.wait_connected()
            yield traffic, host, g


def test_bench_tx_posts_the_frames_asked_for_and_refuses_bad_ones(daemons):
    _traffic, host, g = daemons
    before = g.show()["counters"]["tx_frames"]
    r = g.call("guest.bench_tx", frame=FRAME_64.hex(), count=FRAMES, seconds=10.0, timeout=30.0)
    assert r["frames"] == FRAMES and r["seconds"] > 0
    assert g.show()["counters"]["tx_frames"] - before == FRAMES
    # the backend took them off the guest's tx ring and sent them out of its port
    poll(lambda: host.show()["counters"]["tx"]["frames"], lambda n: n >= FRAMES, timeout=20, what="host sent")
    with pytest.raises(rpc.RpcError, match="want 14"):
        g.call("guest.bench_tx", frame="00" * 10, count=1, seconds=1.0)


def test_bench_discard_keeps_frames_from_the_tap_until_turned_off(daemons):
    traffic, _host, g = daemons
    assert g.call("guest.bench_discard", on=True) == {"discard": True}
    doc = g.show()
    rx0, tap0 = doc["counters"]["rx_frames"], doc["tap_stats"]["tx_frames"]
    run_in_netns(traffic, _send, "vxt0", FRAME_64, FRAMES)
    doc = poll(g.show, lambda d: d["counters"]["rx_frames"] - rx0 >= FRAMES, timeout=20, what="guest received")
    assert doc["tap_stats"]["tx_frames"] == tap0  # counted by the driver, never written to the tap
    assert doc["counters"]["rx_dropped"] == 0

    assert g.call("guest.bench_discard", on=False) == {"discard": False}
    run_in_netns(traffic, _send, "vxt0", FRAME_64, FRAMES)
    poll(lambda: g.show()["tap_stats"]["tx_frames"] - tap0, lambda n: n >= FRAMES, timeout=20,
         what="frames written to the tap again")
