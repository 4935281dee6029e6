"""Hostile frontends against the real daemon, continued: what a frontend does with the fds and
bytes it hands over. Its memory fd shrunk under the mapping (SIGBUS) or too small from the start,
a sealable memfd, a full blocking call eventfd, a kick fd that is a regular file, a payload that
trickles in a byte at a time, a memory table whose offsets overflow. Each test shows the daemon
survives, answers (an error ack, a session it ends with one log line, its control socket) and
leaks nothing, and ends with a well-behaved frontend whose frame reaches the veth peer
(`_still_serves`). The daemon, the frontend and the checks are test_hostile's.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import time

import pytest
from host_helpers import poll
from test_hostile import MEM, Guest, _err_signalled, _still_serves, hostile_daemon

from vxdp.frames import FrameBatch
from vxdp.host.server import ServeConfig
from vxdp.vhost_user.errors import RequestFailed
from vxdp.vhost_user.frontend import RegionSpec
from vxdp.vhost_user.messages import FrontendReq as R
from vxdp.virtio.memory import OFF_MAX

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

IO_TIMEOUT_S = ServeConfig("", "").io_timeout_s  # the daemon's default, which the tests' daemon runs with


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """ONE daemon for this module (test_hostile's kind)."""
    yield from hostile_daemon(tmp_path_factory)


def _frame(tag: int) -> bytes:
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x0a" + b"\x88\xb5" + tag.to_bytes(4, "big") + bytes(46)


def _at_peer(peer, frame: bytes) -> None:
    b = FrameBatch.allocate(64)

    def got():
        select.select([peer.fileno()], [], [], 0.1)
        peer.recv_batch(b)
        return frame in b.frames()
    poll(got, what="the frame at the peer")


def _files(pid: int) -> list[str]:
    """The daemon's open fds other than sockets (the control socket's clients come and go)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if not target.startswith("socket:"):
            out.append(target)
    return sorted(out)


def _session_over(d) -> None:
    poll(lambda: d.show()["connected"], until=lambda c: not c, what="previous session over")


# ------------------------------------------------------------------ guest memory (SIGBUS)
def test_memory_fd_smaller_than_its_region_is_refused(env):
    d, sock, _ = env
    _session_over(d)
    g = Guest(sock, seals=None)
    try:
        g.run(g.fs.negotiate())
        g.run(g.fs.set_features())
        os.ftruncate(g.mem.fd, MEM // 2)  # (our own mapping past MEM/2 is not touched again)
        with pytest.raises(RequestFailed):
            g.run(g.fs.set_mem_table(g.regions()))
        assert d.show()["memory_regions"] == 0
    finally:
        g.close()
    d.log.wait_for(r"the fd holds 0x80000 bytes, the region needs 0x100000", timeout=10)
    _still_serves(env, 20)


def test_sealable_memfd_is_sealed_against_shrinking(env):
    d, sock, _ = env
    _session_over(d)
    g = Guest(sock, seals=0)  # sealable, not sealed by the frontend
    try:
        g.start()
        assert fcntl.fcntl(g.mem.fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
        with pytest.raises(PermissionError):
            os.ftruncate(g.mem.fd, 0)
    finally:
        g.close()
    _still_serves(env, 21)


def test_memory_shrunk_under_the_daemon_ends_that_session_only(env):
    """An unsealable memfd (QEMU's memfd,seal=off) truncated to 0 after SET_MEM_TABLE, then a tx
    kick: the daemon's access faults (SIGBUS); it used to die of it (exit 135)."""
    d, sock, _ = env
    _session_over(d)
    g = Guest(sock, seals=None)
    try:
        g.start()
        start = len(d.log)
        frame = _frame(22)
        g.mem.write(g.buf, bytes(12) + frame)
        g.tx.add_buffers(g.mem, [(g.buf, 12 + len(frame), False)])
        os.ftruncate(g.mem.fd, 0)  # from here on neither side may touch the mapping without a fault
        os.eventfd_write(g.fds["k1"], 1)
        line = d.log.wait_for(r"^.*frontend session \d+ ended: guest memory fault \(SIGBUS\) at 0x[0-9a-f]+.*$",
                              start=start, timeout=20)
        assert "hx" in line.group(0)
        assert d.alive()
        assert _err_signalled(g.fds["e1"])  # the rings were stopped as NEEDS_RESET first
        g.ch.sock.settimeout(10)
        assert g.ch.sock.recv(64) == b""  # the daemon closed this session
    finally:
        g.close()
    d.log.wait_for(r"cannot be sealed against shrinking", timeout=10)
    _still_serves(env, 23)


# ------------------------------------------------------------------ eventfds
def test_full_blocking_call_eventfd_is_counted_not_waited_on(env):
    """A blocking call eventfd at 2**64-2: one more write would block forever (it did, in the loop)."""
    d, sock, peer = env
    _session_over(d)
    g = Guest(sock)
    os.close(g.fds["c1"])
    g.fds["c1"] = os.eventfd(0)  # blocking
    os.eventfd_write(g.fds["c1"], (1 << 64) - 2)
    try:
        full = d.show()["eventfd_full"]
        g.start()
        assert not os.get_blocking(g.fds["c1"])  # the daemon made the shared description non-blocking
        frame = _frame(24)
        g.send_frame(frame)
        _at_peer(peer, frame)
        poll(lambda: d.show()["eventfd_full"], until=lambda n: n > full, what="the full call eventfd counted")
        assert d.show()["vrings"][1]["running"]
    finally:
        g.close()
    _still_serves(env, 25)


def test_kick_fd_that_is_a_regular_file_is_refused_with_an_error_ack(env, tmp_path):
    d, sock, _ = env
    _session_over(d)
    g = Guest(sock)
    with open(tmp_path / "kick", "w+b") as f:
        try:
            g.run(g.fs.negotiate())
            g.run(g.fs.set_features())
            g.run(g.fs.set_mem_table(g.regions()))
            with pytest.raises(RequestFailed):
                g.run(g.fs.start_vring(g.vring(1, g.tx, kick_fd=f.fileno())))
            assert not d.show()["vrings"][1]["running"]
            g.run(g.fs.start_vring(g.vring(1, g.tx)))  # the session lives: with an eventfd it starts
            assert d.show()["vrings"][1]["running"]
        finally:
            g.close()
    d.log.wait_for(r"vring 1: refused a kick fd that is not an eventfd: /\S*kick", timeout=10)
    _still_serves(env, 26)


# ------------------------------------------------------------------ a slow sender
def test_slow_sender_does_not_stall_the_daemon(env):
    """A payload that trickles in a byte every 1.5 s: the control socket answers meanwhile (within
    the daemon's io timeout, the slow message's own deadline), and that deadline ends the session."""
    d, sock, _ = env
    _session_over(d)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    try:
        s.connect(sock)
        poll(lambda: d.show()["connected"], what="connected")
        start = len(d.log)
        s.sendall(struct.pack("=III", int(R.SET_VRING_NUM), 0x1, 8) + b"\x01")
        for byte in (b"\x00", b"\x00"):
            assert d.call("device.show", timeout=IO_TIMEOUT_S)["name"] == "hx"  # answered meanwhile
            time.sleep(1.5)  # the attack's pace
            try:
                s.sendall(byte)
            except (BrokenPipeError, ConnectionResetError):
                break  # the daemon already ended it
        assert d.call("device.show", timeout=IO_TIMEOUT_S)["name"] == "hx"
        assert s.recv(64) == b""  # the message's deadline ended the session
    finally:
        s.close()
    d.log.wait_for(r"ended: a message was not complete within \S+ s of its first byte", start=start, timeout=10)
    _still_serves(env, 27)


# ------------------------------------------------------------------ a bad memory table
def test_overflowing_memory_table_is_refused_and_leaks_no_fd(env):
    """8 regions at mmap_offset 2**63, 50 times: OverflowError used to escape (no ack) and the 8
    region fds of every message stayed open, even after the session."""
    d, sock, _ = env
    _session_over(d)
    before = poll(lambda: _files(d.pid), until=lambda f: not any("memfd:" in t for t in f),
                  what="no guest memory mapped")
    g = Guest(sock)
    try:
        g.run(g.fs.negotiate())
        g.run(g.fs.set_features())
        r = g.mem.regions[0]
        bad = [RegionSpec(i * MEM, MEM, r.userspace_addr + i * MEM, 1 << 63, r.fd) for i in range(8)]
        assert bad[0].mmap_offset > OFF_MAX
        for _ in range(50):
            with pytest.raises(RequestFailed):
                g.run(g.fs.set_mem_table(bad))
        assert _files(d.pid) == before
        g.run(g.fs.set_mem_table(g.regions()))  # the session still takes a good table
        assert d.show()["memory_regions"] == 1
    finally:
        g.close()
    poll(lambda: _files(d.pid), until=lambda f: f == before, what="every fd of the session closed")
    _still_serves(env, 28)
