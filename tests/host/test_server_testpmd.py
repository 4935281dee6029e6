"""`vxdp host serve` against a real frontend nobody here wrote: DPDK testpmd's virtio_user.

The daemon runs as a subprocess on one end of a veth pair; the other end is counted (or fed)
by an AF_PACKET Port in its own namespace. The links carry no IPv6 chatter (quiet_lab), so
every frame counted is one of ours. Every wait is bounded; every process is stopped by a
context manager, also on failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from host_helpers import Counter, Daemon, poll, quiet_lab

from vxdp.frames import FrameBatch
from vxdp.netdev.port import Port
from vxdp.testing.netns import NetLab
from vxdp.testing.testpmd import Testpmd

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture
def lab():
    with NetLab(prefix="vxh") as lab:
        yield lab, quiet_lab(lab)


def _txonly_frame(f: bytes) -> bool:
    return len(f) == 64 and f[12:14] == b"\x08\x00" and f[23] == 17  # testpmd txonly: IPv4/UDP, 64 bytes


# Peer-side loss allowed, as a fraction of the frames sent. Where it comes from: the daemon sends
# with back-pressure (a full veth answers ENOBUFS and the frame is retried, DESIGN: tx direction),
# so the only place a frame may go is the *peer's* AF_PACKET ring, which a Python thread drains
# while testpmd's lcore spins one of the two CPUs and the daemon the other; when that thread is
# off-CPU the kernel drops (and counts, tp_drops) what the ring cannot hold. Those drops are
# load, not a bug: every other frame is accounted for exactly (`Counter.settle`). Observed: 0
# drops in 12 runs here, one of them beside two CPU-bound hogs (the ring holds ~50 k small
# frames); the bound leaves room for a machine four other engineers are loading.
PEER_LOSS_BOUND = 0.10


def _check_txonly_at_peer(counter: Counter, sent: int, sessions: int = 1) -> None:
    """Exact: each frame the daemon sent reached the peer's ring or was dropped there by the kernel
    (counted); each one read is testpmd's txonly frame, intact: 64 bytes of IPv4/UDP, and one
    content per testpmd (txonly repeats one frame; each testpmd draws its own source MAC).
    Bounded: the drops (`PEER_LOSS_BOUND`)."""
    st = counter.settle(sent)
    counter.stop()
    assert st.packets + st.drops == sent, st  # nothing vanished unseen, nothing duplicated
    assert counter.rejected == 0 and counter.count == st.packets, (counter.rejected, counter.count, st)
    assert counter.bytes == 64 * counter.count
    assert len(counter.distinct) == sessions, counter.distinct  # a corrupted frame would be one more
    assert st.drops <= PEER_LOSS_BOUND * sent, f"peer ring dropped {st.drops} of {sent} frames"


def _testpmd(sock: str, mode: str, tag: str) -> Testpmd:
    # cq=1: virtio_user then negotiates CTRL_VQ/CTRL_RX and emulates the ctrl queue itself (it
    # never hands it to the backend); without it, enabling promiscuous mode fails and testpmd's
    # error on stderr can split its prompt on stdout.
    return Testpmd(f"virtio_user0,path={sock},queues=1,cq=1", forward_mode=mode, auto_start=False,
                   file_prefix=f"vxh{os.getpid()}{tag}", lcores="0@1,1@1")


def _link_up(pmd: Testpmd) -> None:
    poll(lambda: "Link status: up" in pmd.command("show port info 0"), timeout=20, what="virtio_user link")


def _txonly_burst(pmd: Testpmd, daemon: Daemon, at_least: int) -> int:
    """Run txonly until the daemon has forwarded ``at_least`` frames; return testpmd's tx count."""
    before = daemon.show()["counters"]["tx"]["frames"]
    pmd.command("start")
    poll(lambda: daemon.show()["counters"]["tx"]["frames"] - before, until=lambda n: n >= at_least,
         what="frames forwarded by the daemon")
    pmd.command("stop")
    return pmd.port_stats()[0].tx_packets


def test_testpmd_txonly_frames_all_reach_the_port(lab, tmp_path):
    _, pair = lab
    sock = str(tmp_path / "vh.sock")
    with Daemon(tmp_path / "run", sock, "vxp", netns=pair.ns_a) as d, Port("vxq", netns=pair.ns_b) as peer:
        counter = Counter(peer, _txonly_frame)
        with _testpmd(sock, "txonly", "t") as pmd:
            _link_up(pmd)
            sent = _txonly_burst(pmd, d, 20_000)
            assert sent >= 20_000
            _check_txonly_at_peer(counter, sent)  # before the session ends: then show is the session's
            show = d.show()
        tx = show["counters"]["tx"]  # the ring took every frame testpmd enqueued, and sent each once
        assert tx["frames"] == sent and tx["bytes"] == 64 * sent and tx["drops"] == 0 and tx["errors"] == 0
        assert show["connected"] and show["vrings"][1]["running"] and not show["vrings"][2]["running"]
        assert "NET_MRG_RXBUF" in show["features_negotiated"] and "VERSION_1" in show["features_negotiated"]


def test_port_frames_all_reach_testpmd_rxonly(lab, tmp_path):
    _, pair = lab
    sock = str(tmp_path / "vh.sock")
    total = 5000
    sizes = [60 + (i * 97) % (1514 - 60 + 1) for i in range(total)]
    frames = [b"\x52\x54\x00\x12\x34\x56" + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" +
              i.to_bytes(4, "big") + bytes((i + k) & 0xFF for k in range(s - 18)) for i, s in enumerate(sizes)]
    with Daemon(tmp_path / "run", sock, "vxp", netns=pair.ns_a) as d, Port("vxq", netns=pair.ns_b) as peer, \
            _testpmd(sock, "rxonly", "r") as pmd:
        _link_up(pmd)
        pmd.command("start")
        b = FrameBatch.allocate(64)
        for start in range(0, total, 64):  # small batches: the guest's 256 rx buffers are the limit
            b.fill(frames[start:start + 64])
            assert peer.send_batch(b) == b.count
            poll(lambda s=start: d.show()["counters"]["rx"]["frames"], until=lambda n, s=start: n >= s + b.count,
                 what="frames delivered to testpmd")
        got = poll(lambda: pmd.port_stats()[0], until=lambda st: st.rx_packets >= total, what="testpmd rx")
        assert got.rx_packets == total and got.rx_bytes == sum(sizes)
        rx = d.show()["counters"]["rx"]
        assert rx == {"frames": total, "bytes": sum(sizes), "drops": 0, "errors": 0}


def test_frontend_goes_away_and_a_new_one_is_served(lab, tmp_path):
    _, pair = lab
    sock = str(tmp_path / "vh.sock")
    with Daemon(tmp_path / "run", sock, "vxp", netns=pair.ns_a) as d, Port("vxq", netns=pair.ns_b) as peer:
        counter = Counter(peer, _txonly_frame)
        total = 0
        for tag in ("a", "b"):
            with _testpmd(sock, "txonly", tag) as pmd:
                _link_up(pmd)
                total += _txonly_burst(pmd, d, 2000)
            poll(lambda: d.show()["connected"], until=lambda c: not c, what="session end")
            show = d.show()
            assert show["memory_regions"] == 0 and not any(v["running"] for v in show["vrings"])
        _check_txonly_at_peer(counter, total, sessions=2)
        show = d.show()
        assert show["counters"]["tx"]["frames"] == total and show["counters"]["tx"]["drops"] == 0
        assert show["sessions"] == 2 and d.alive()
        d.log.wait_for("frontend session 1 ended", timeout=10)


def test_second_frontend_is_refused_while_one_is_connected(lab, tmp_path):
    _, pair = lab
    sock = str(tmp_path / "vh.sock")
    with Daemon(tmp_path / "run", sock, "vxp", netns=pair.ns_a) as d, _testpmd(sock, "txonly", "s") as pmd:
        _link_up(pmd)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(sock)
        assert s.recv(16) == b""  # closed at once
        s.close()
        show = poll(d.show, until=lambda sh: sh["refused"] == 1, what="refusal")
        assert show["connected"] and show["sessions"] == 1
        d.log.wait_for("refusing a second frontend", timeout=10)
        pmd.command("start")  # the first frontend is still served
        poll(lambda: d.show()["counters"]["tx"]["frames"], until=lambda n: n > 100, what="traffic")
        pmd.command("stop")


def test_host_show_json_and_sigterm(lab, tmp_path):
    _, pair = lab
    sock = str(tmp_path / "vh.sock")
    d = Daemon(tmp_path / "run", sock, "vxp", netns=pair.ns_a, name="shw")
    try:
        env = dict(os.environ, VXDP_RUN_DIR=str(tmp_path / "run"))
        out = subprocess.run([sys.executable, "-m", "vxdp.cli.main", "host", "show", "-j"], env=env,
                             capture_output=True, text=True, timeout=30, check=True).stdout
        docs = json.loads(out)
        assert [x["name"] for x in docs] == ["shw"]
        assert docs[0]["counters"]["tx"]["frames"] == 0 and docs[0]["port"]["ifname"] == "vxp"
        text = subprocess.run([sys.executable, "-m", "vxdp.cli.main", "host", "show", "--name", "shw"], env=env,
                              capture_output=True, text=True, timeout=30, check=True).stdout
        assert "shw:" in text and "waiting for a frontend" in text
    finally:
        rc = d.stop()
    assert rc == 0  # SIGTERM is a clean exit
    assert not os.path.exists(sock) and not (tmp_path / "run" / "host-shw.sock").exists()
