"""vhost_user.transport: real AF_UNIX sockets, SCM_RIGHTS, server and client modes."""

from __future__ import annotations

import os
import socket

import pytest
from vhost_user_helpers import open_fds

from vxdp.vhost_user import messages as m
from vxdp.vhost_user.connection import Connection, Role
from vxdp.vhost_user.errors import LocalProtocolError, RemoteProtocolError
from vxdp.vhost_user.messages import FrontendReq as R
from vxdp.vhost_user.transport import (
    Channel,
    MessageReader,
    connect,
    listen,
    recv_message_bytes,
    send_message,
)


@pytest.fixture
def sockpair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def test_messages_and_fds_stay_together(sockpair):
    a, b = sockpair
    efd = os.eventfd(5)
    front = Connection(Role.FRONTEND)
    for msg in (m.Message(R.SET_OWNER), m.Message(R.SET_VRING_KICK, m.VringFd(1), fds=(efd,)),
                m.Message(R.SET_VRING_NUM, m.VringState(1, 256))):
        send_message(a, *front.send(msg))  # three messages queued back to back
    ch = Channel(b, Connection(Role.BACKEND))
    assert ch.recv() == m.Message(R.SET_OWNER)
    kick = ch.recv()
    assert kick.request == R.SET_VRING_KICK and len(kick.fds) == 1
    assert os.eventfd_read(kick.fds[0]) == 5  # the same eventfd, seen through the new fd
    os.close(kick.fds[0])
    assert ch.recv() == m.Message(R.SET_VRING_NUM, m.VringState(1, 256))
    os.close(efd)


def test_too_many_fds_closed(sockpair):
    a, b = sockpair
    fds = [os.eventfd(0) for _ in range(10)]
    before = open_fds()
    socket.send_fds(a, [m.Message(R.SET_OWNER).encode()], fds)
    with pytest.raises(RemoteProtocolError, match="more than 8 fds") as ei:
        recv_message_bytes(b)
    assert ei.value.fatal
    assert open_fds() == before  # the 8 that arrived were closed, the kernel dropped the rest
    for fd in fds:
        os.close(fd)


def test_oversize_header_not_read_on(sockpair):
    a, b = sockpair
    a.sendall(m.HEADER.pack(1, 1, 1 << 20) + b"x" * 32)
    data, fds = recv_message_bytes(b)
    assert len(data) == 12 and fds == []
    conn = Connection(Role.BACKEND)
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="over the 4096-byte limit"):
        conn.next_event()


def test_eof(sockpair):
    a, b = sockpair
    a.close()
    assert recv_message_bytes(b) == (b"", [])
    ch = Channel(b, Connection(Role.BACKEND))
    with pytest.raises(ConnectionError):
        ch.recv()


def test_send_refuses_more_than_8_fds(sockpair):
    with pytest.raises(LocalProtocolError):
        send_message(sockpair[0], b"x", list(range(9)))


def test_server_mode_replaces_stale_socket_and_client_connects_first(tmp_path):
    path = str(tmp_path / "vu.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # a socket file left by a dead server
    stale.close()
    srv, claim = listen(path)
    try:
        cli = connect(path)  # before accept: the backlog holds it
        peer, _ = srv.accept()
        memfd = os.memfd_create("t")
        os.write(memfd, b"guest")
        send_message(cli, m.Message(R.SET_MEM_TABLE, m.MemoryTable((m.MemRegion(0, 4096, 0x10000, 0),)),
                                    fds=(memfd,)).encode(), [memfd])
        ch = Channel(peer, Connection(Role.BACKEND))
        msg = ch.recv()
        assert os.pread(msg.fds[0], 5, 0) == b"guest"
        for fd in (memfd, *msg.fds):
            os.close(fd)
        cli.close()
        peer.close()
    finally:
        srv.close()
        claim.release()
    assert not os.path.exists(path)  # ours, so removed


def test_listen_leaves_non_socket_alone(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a socket")
    with pytest.raises(OSError):
        listen(str(path))
    assert path.read_text() == "not a socket"


def test_client_mode_gives_clear_error(tmp_path):
    with pytest.raises(ConnectionError, match="cannot connect to .*nothing.sock"):
        connect(str(tmp_path / "nothing.sock"), retries=2, interval=0)


def test_client_mode_backend_connects_to_listening_frontend(tmp_path):
    """QEMU's server=on: the frontend listens and the backend connects (client mode)."""
    path = str(tmp_path / "qemu.sock")
    srv, claim = listen(path)
    try:
        backend_sock = connect(path, retries=3, interval=0)
        front_sock, _ = srv.accept()
        front = Channel(front_sock, Connection(Role.FRONTEND))
        back = Channel(backend_sock, Connection(Role.BACKEND))
        front.send(m.Message(R.GET_FEATURES))
        assert back.recv() == m.Message(R.GET_FEATURES)
        back.send(m.reply(R.GET_FEATURES, m.U64(1 << 32)))
        assert front.recv().payload == m.U64(1 << 32)
        front.close()
        back.close()
    finally:
        srv.close()
        claim.release()


def test_message_reader_byte_by_byte_keeps_fds_with_the_header(sockpair):
    """The backend's non-blocking reader: whatever the socket holds, never past the current
    message, the fds with its first byte, and since when the message has been incomplete."""
    a, b = sockpair
    b.setblocking(False)
    efd = os.eventfd(3)
    kick = m.Message(R.SET_VRING_KICK, m.VringFd(1), fds=(efd,)).encode()
    num = m.Message(R.SET_VRING_NUM, m.VringState(1, 256)).encode()
    r, conn = MessageReader(), Connection(Role.BACKEND)
    assert r.read(b) is None and r.since is None  # nothing there: no wait
    socket.send_fds(a, [kick[:1]], [efd])
    data, fds = r.read(b, clock=lambda: 100.0)
    assert data == kick[:1] and len(fds) == 1  # the fds come with the first byte
    conn.receive_data(data, fds)
    assert r.since == 100.0 and not r.overdue(2.0, 101.0) and r.overdue(2.0, 102.5)
    for byte in kick[1:] + num:
        a.send(bytes([byte]))
    while (chunk := r.read(b)) is not None:
        assert not chunk[1]
        conn.receive_data(*chunk)
    assert r.since is None  # between messages
    msg = conn.next_event()
    assert msg.request == R.SET_VRING_KICK and len(msg.fds) == 1
    assert os.eventfd_read(msg.fds[0]) == 3
    os.close(msg.fds[0])
    assert conn.next_event() == m.Message(R.SET_VRING_NUM, m.VringState(1, 256))
    os.close(efd)


def test_message_reader_stops_at_message_boundaries(sockpair):
    a, b = sockpair
    b.setblocking(False)
    two = m.Message(R.SET_OWNER).encode() + m.Message(R.SET_VRING_NUM, m.VringState(0, 8)).encode()
    a.sendall(two)
    r = MessageReader()
    assert r.read(b)[0] == two[:m.HEADER_SIZE]  # SET_OWNER has no payload: its header is all of it
    assert r.read(b)[0] == two[m.HEADER_SIZE:2 * m.HEADER_SIZE]
    assert r.read(b)[0] == two[2 * m.HEADER_SIZE:]
    assert r.read(b) is None
    a.close()
    assert r.read(b) == (b"", [])
