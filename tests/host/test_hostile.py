"""Hostile frontends against the real daemon (a subprocess): garbage messages, wrong fds, rings
outside memory, bad ring sizes, descriptors outside memory, loops, overflowing lengths, an avail
index that jumps. Each test checks the daemon's answer (error ack, closed session, or the queue
marked NEEDS_RESET with its err eventfd signalled and ONE log line), and then that the same
daemon process still serves a well-behaved frontend whose frame reaches the veth peer.

The frontend is ours: `FrontendSession` over a real socket, guest memory in a real memfd, and
`DriverQueue` writing the rings (hostile descriptors written by hand into that memory).
"""

from __future__ import annotations

import os
import select
import socket
import struct

import pytest
from host_helpers import Daemon, poll, quiet_lab

from vxdp.frames import FrameBatch
from vxdp.netdev.port import Port
from vxdp.testing.netns import NetLab
from vxdp.vhost_user import frontend as fe
from vxdp.vhost_user import messages as m
from vxdp.vhost_user.connection import Connection, Role
from vxdp.vhost_user.errors import RemoteProtocolError, RequestFailed
from vxdp.vhost_user.frontend import FrontendSession, RegionSpec, VringSpec
from vxdp.vhost_user.messages import FrontendReq as R
from vxdp.vhost_user.transport import Channel, send_message
from vxdp.virtio.features import Feature
from vxdp.virtio.memory import QEMU_SEALS, GuestMemory
from vxdp.virtio.virtqueue import DESC_F_NEXT, DriverQueue

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

FEATURES = Feature.mask(Feature.VERSION_1, Feature.PROTOCOL_FEATURES)
MEM = 1 << 20
NUM = 256
_DESC = struct.Struct("<QIHH")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """ONE daemon for the whole module: every test's hostile frontend hits the same process."""
    yield from hostile_daemon(tmp_path_factory)


def hostile_daemon(tmp_path_factory):
    """(daemon ``hx``, its vhost-user socket, the veth peer ``vxq``): `env`'s, for other modules too."""
    tmp = tmp_path_factory.mktemp("hostile")
    with NetLab(prefix="vxx") as lab:
        pair = quiet_lab(lab)
        sock = str(tmp / "vh.sock")
        with Daemon(tmp / "run", sock, "vxp", netns=pair.ns_a, name="hx") as d, \
                Port("vxq", netns=pair.ns_b) as peer:
            yield d, sock, peer


class Guest:
    """A frontend of ours: memfd guest memory, rx (0) and tx (1) rings, eventfds, a channel."""

    def __init__(self, sock_path: str, seals: int | None = QEMU_SEALS):
        self.mem = GuestMemory.allocate(MEM, seals=seals)
        self.rx = DriverQueue.create(self.mem, NUM, 0)
        self.tx = DriverQueue.create(self.mem, NUM, (self.rx.end_gpa + 4095) & ~4095)
        self.buf = (self.tx.end_gpa + 4095) & ~4095
        self.fds = {k: os.eventfd(0, os.EFD_NONBLOCK) for k in ("k0", "c0", "e0", "k1", "c1", "e1")}
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(sock_path)
        self.ch = Channel(s, Connection(Role.FRONTEND))
        self.fs = FrontendSession(FEATURES, ack_all=True)

    def uva(self, gpa: int) -> int:
        return self.mem.gpa_to_uva(gpa, 1)

    def vring(self, i: int, q: DriverQueue, **over) -> VringSpec:
        spec = {"index": i, "num": q.num, "desc_uva": self.uva(q.desc_gpa), "avail_uva": self.uva(q.avail_gpa),
                "used_uva": self.uva(q.used_gpa), "kick_fd": self.fds[f"k{i}"], "call_fd": self.fds[f"c{i}"],
                "err_fd": self.fds[f"e{i}"]}
        spec.update(over)
        return VringSpec(**spec)

    def regions(self) -> list[RegionSpec]:
        r = self.mem.regions[0]
        return [RegionSpec(r.guest_phys_addr, r.size, r.userspace_addr, 0, r.fd)]

    def run(self, step):
        return fe.run(step, self.ch.exchange)

    def start(self) -> None:
        self.run(self.fs.negotiate())
        self.run(self.fs.start(self.regions(), [self.vring(0, self.rx), self.vring(1, self.tx)]))

    def send_frame(self, frame: bytes) -> None:
        gpa = self.buf
        self.mem.write(gpa, bytes(12) + frame)
        self.tx.add_buffers(self.mem, [(gpa, 12 + len(frame), False)])
        os.eventfd_write(self.fds["k1"], 1)

    def hostile_tx(self, descs: list[tuple[int, int, int, int]], head: int = 0, avail_step: int = 1) -> None:
        """Write raw descriptors into the tx table, publish ``head`` (avail idx += avail_step), kick."""
        for i, d in enumerate(descs):
            self.mem.write(self.tx.desc_gpa + 16 * i, _DESC.pack(*d))
        self.mem.write_u16(self.tx.avail_gpa + 4, head)
        self.mem.write_u16(self.tx.avail_gpa + 2, avail_step & 0xFFFF)
        os.eventfd_write(self.fds["k1"], 1)

    def close(self) -> None:
        self.ch.close()
        for fd in self.fds.values():
            os.close(fd)
        self.mem.close()


def _err_signalled(fd: int, timeout: float = 10.0) -> bool:
    r, _, _ = select.select([fd], [], [], timeout)
    return bool(r) and os.eventfd_read(fd) >= 1


def _still_serves(env, tag: int) -> None:
    """A well-behaved frontend next: its frame crosses the daemon and arrives at the peer."""
    d, sock, peer = env
    poll(lambda: d.show()["connected"], until=lambda c: not c, what="previous session over")
    g = Guest(sock)
    try:
        g.start()
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x09" + b"\x88\xb5" + tag.to_bytes(4, "big") + bytes(46)
        g.send_frame(frame)
        b = FrameBatch.allocate(64)

        def got():
            select.select([peer.fileno()], [], [], 0.1)
            peer.recv_batch(b)
            return frame in b.frames()
        poll(got, what=f"frame {tag} at the peer")
        assert d.alive()
    finally:
        g.close()


def test_good_frontend_baseline(env):
    _still_serves(env, 0)


@pytest.mark.parametrize("garbage", [
    struct.pack("=III", int(R.GET_FEATURES), 0x2, 0),  # header version 2
    struct.pack("=III", int(R.SET_OWNER), 0x1, 1 << 20),  # payload over the limit
    struct.pack("=III", int(R.SET_VRING_NUM), 0x1, 8)[:7],  # truncated header, then EOF
    struct.pack("=III", int(R.SET_VRING_NUM), 0x1, 8) + b"\x01\x00",  # truncated payload, then EOF
], ids=["version", "oversize", "short-header", "short-payload"])
def test_malformed_message_closes_the_session_only(env, garbage):
    d, sock, _ = env
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    poll(lambda: d.show()["connected"], what="connected")
    s.sendall(garbage)
    s.shutdown(socket.SHUT_WR)
    assert s.recv(64) == b""  # the daemon closed the session
    s.close()
    _still_serves(env, 1)


def test_unknown_request_and_wrong_fd_count_get_error_acks(env):
    d, sock, _ = env
    g = Guest(sock)
    try:
        g.run(g.fs.negotiate())
        # SET_VRING_KICK without an fd although no_fd is clear: refused with an error ack, session lives.
        # (encoded by hand: our Connection refuses to send what it would refuse to receive)
        bad = m.Message(R.SET_VRING_KICK, m.VringFd(1), m.VERSION | m.FLAG_NEED_REPLY, ())
        send_message(g.ch.sock, bad.encode())
        ack = g.ch.recv()
        assert ack.request == R.SET_VRING_KICK and ack.payload.value != 0
        # An fd that cannot be mapped as memory (an eventfd) in SET_MEM_TABLE: error ack.
        efd = os.eventfd(0)
        try:
            bogus = [RegionSpec(0, MEM, g.mem.regions[0].userspace_addr, 0, efd)]
            with pytest.raises(RequestFailed):
                g.run(g.fs.set_features())
                g.run(g.fs.set_mem_table(bogus))
        finally:
            os.close(efd)
        # The same session still works afterwards.
        g.run(g.fs.set_mem_table(g.regions()))
        assert d.show()["memory_regions"] == 1
    finally:
        g.close()
    _still_serves(env, 2)


def test_ring_size_not_power_of_two_and_ring_outside_memory_refused(env):
    d, sock, _ = env
    g = Guest(sock)
    try:
        g.run(g.fs.negotiate())
        g.run(g.fs.set_features())
        g.run(g.fs.set_mem_table(g.regions()))
        with pytest.raises(RequestFailed):
            g.run(g.fs._ask(g.fs._req(R.SET_VRING_NUM, m.VringState(1, 255))))
        outside = g.vring(1, g.tx, used_uva=g.mem.regions[0].userspace_addr + MEM + 4096)
        with pytest.raises(RequestFailed):
            g.run(g.fs.start_vring(outside))
        assert not d.show()["vrings"][1]["running"]
    finally:
        g.close()
    d.log.wait_for(r"ring size 255 is not a power of two", timeout=10)
    _still_serves(env, 3)


HOSTILE_RINGS = {
    # name: (descriptors, head, avail idx, error the daemon names)
    "outside-memory": ([(MEM + 0x1000, 64, 0, 0)], 0, 1, "OUT_OF_MEMORY"),
    "loop": ([(0x80000, 64, DESC_F_NEXT, 1), (0x80100, 64, DESC_F_NEXT, 0)], 0, 1, "CHAIN_LOOP"),
    "length-overflow": ([(0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF, 0, 0)], 0, 1, "OUT_OF_MEMORY"),
    "head-out-of-range": ([], 300, 1, "HEAD_RANGE"),
    "avail-jump": ([], 0, NUM + 5, "AVAIL_IDX"),
}


@pytest.mark.parametrize("case", list(HOSTILE_RINGS))
def test_hostile_tx_ring_needs_reset_daemon_lives(env, case):
    d, sock, _ = env
    descs, head, avail, code = HOSTILE_RINGS[case]
    g = Guest(sock)
    try:
        g.start()
        start = len(d.log)
        errors = d.show()["counters"]["tx"]["errors"]  # counters live as long as the daemon
        g.hostile_tx(descs, head, avail)
        assert _err_signalled(g.fds["e1"])  # NEEDS_RESET told through the err eventfd
        show = d.show()
        tx, rx = show["vrings"][1], show["vrings"][0]
        assert code in tx["error"] and not tx["running"]
        assert rx["running"] and not rx["error"]  # the other ring is untouched
        assert show["counters"]["tx"]["errors"] == errors + 1
        line = d.log.wait_for(r"^.*queue 1 \(tx\) needs reset.*$", start=start, timeout=10)
        assert "hx" in line.group(0) and code in line.group(0)
        os.eventfd_write(g.fds["k1"], 1)  # kicking a broken queue does nothing more
        poll(lambda: d.show()["counters"]["tx"]["errors"], until=lambda n: n == errors + 1,
             what="errors counted once")
        assert d.log.text[start:].count("needs reset") == 1  # ONE line
        assert g.run(g.fs.stop_vring(1)) is not None  # GET_VRING_BASE still answered
    finally:
        g.close()
    _still_serves(env, 10 + list(HOSTILE_RINGS).index(case))


def test_stalled_frontend_times_out(env):
    _, sock, _ = env
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sock)
    s.sendall(struct.pack("=III", int(R.SET_VRING_NUM), 0x1, 8) + b"\x01")  # then nothing
    assert s.recv(64) == b""  # the daemon gave up after its io timeout
    s.close()
    _still_serves(env, 4)


def test_session_error_without_reply_closes_session(env):
    """SET_VRING_NUM 255 without need_reply: nothing to ack, so the session is closed."""
    _, sock, _ = env
    g = Guest(sock)
    try:
        g.run(g.fs.negotiate())
        g.ch.send(m.Message(R.SET_VRING_NUM, m.VringState(0, 255), m.VERSION, ()))
        with pytest.raises((ConnectionError, RemoteProtocolError)):
            g.ch.recv()
    finally:
        g.close()
    _still_serves(env, 5)
