"""Shared pieces of the vhost-user tests: a device model that records calls (a test double of
OUR interface; sockets, memfds and eventfds stay real), fd counting, and a socketpair pairing
of a backend session with a frontend channel (h11's ConnectionPair idea)."""

from __future__ import annotations

import os
import socket
import threading

from vxdp.vhost_user import messages as m
from vxdp.vhost_user.backend import BackendSession, DeviceModel, Vring
from vxdp.vhost_user.connection import Connection, Role, close_fds
from vxdp.vhost_user.frontend import RegionSpec, VringSpec
from vxdp.vhost_user.messages import FrontendReq as R
from vxdp.vhost_user.transport import Channel, recv_message_bytes, send_message

VIRTIO_F_VERSION_1 = 1 << 32
OFFERED = VIRTIO_F_VERSION_1 | m.F_PROTOCOL_FEATURES | 1  # + VIRTIO_NET_F_CSUM


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


class RecordingDevice(DeviceModel):
    """Records (method, args); owns the fds it is given (closes them on replace/reset)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fds: dict[tuple[str, int], int] = {}
        self.mem_fds: list[int] = []
        self.mem_inodes: list[int] = []
        self.started: set[int] = set()
        self.rings: dict[int, Vring] = {}  # the session's record of each ring started
        self.config = bytes(range(32))

    def _keep(self, kind: str, index: int, fd: int | None) -> None:
        old = self.fds.pop((kind, index), None)
        if old is not None:
            os.close(old)
        if fd is not None:
            self.fds[(kind, index)] = fd

    def set_features(self, features):
        self.calls.append(("set_features", features))

    def set_mem_table(self, regions, fds):
        close_fds(self.mem_fds)
        self.mem_fds = list(fds)
        self.mem_inodes = [os.fstat(fd).st_ino for fd in fds]
        self.calls.append(("set_mem_table", tuple(regions)))

    def set_vring_kick(self, index, fd):
        self._keep("kick", index, fd)
        self.calls.append(("set_vring_kick", index, fd is not None))

    def set_vring_call(self, index, fd):
        self._keep("call", index, fd)
        self.calls.append(("set_vring_call", index, fd is not None))

    def set_vring_err(self, index, fd):
        self._keep("err", index, fd)
        self.calls.append(("set_vring_err", index, fd is not None))

    def start_vring(self, index, vring):
        self.started.add(index)
        self.rings[index] = vring
        self.calls.append(("start_vring", index, vring.num, vring.base))

    def stop_vring(self, index):
        self.started.discard(index)
        self.calls.append(("stop_vring", index))
        return self.rings[index].base + 7  # as if 7 buffers were consumed

    def reset(self):
        close_fds(self.mem_fds)
        self.mem_fds = []
        close_fds(self.fds.values())
        self.fds.clear()
        self.calls.append(("reset",))

    def get_config(self, offset, size):
        return self.config[offset:offset + size]

    def set_status(self, status):
        self.calls.append(("set_status", status))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class GuestSide:
    """Real frontend resources: one memfd of guest memory (mapped, so the user addresses are
    real) split in two regions like QEMU's (GPA 0..0xa0000, 0xc0000..), eventfds per vring."""

    SIZE = 1 << 20

    def __init__(self, nvrings: int = 2, num: int = 256) -> None:
        import mmap

        self.memfd = os.memfd_create("vxdp-test-guest")
        os.ftruncate(self.memfd, self.SIZE)
        self.map = mmap.mmap(self.memfd, self.SIZE)
        import ctypes

        self.uva = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        low = 0xA0000
        self.regions = [
            RegionSpec(0, low, self.uva, 0, self.memfd),
            RegionSpec(0xC0000, self.SIZE - 0xC0000, self.uva + 0xC0000, 0xC0000, self.memfd),
        ]
        self.eventfds: list[int] = []
        self.vrings = []
        for i in range(nvrings):
            base = self.uva + 0xC0000 + i * 0x10000  # rings in the second region
            kick, call = os.eventfd(0), os.eventfd(0)
            self.eventfds += [kick, call]
            self.vrings.append(VringSpec(i, num, base, base + 16 * num, base + 0x8000, kick, call))

    def close(self) -> None:
        close_fds(self.eventfds)
        import ctypes  # noqa: F401  (the addressof export must be gone before close)

        try:
            self.map.close()
        except BufferError:
            pass
        os.close(self.memfd)


class Pair:
    """A backend session served by a thread on one end of a real AF_UNIX socketpair and a
    frontend ``Channel`` on the other."""

    def __init__(self, device: RecordingDevice | None = None, **session_kw) -> None:
        self.device = device or RecordingDevice()
        session_kw.setdefault("features", OFFERED)
        self.session = BackendSession(self.device, **session_kw)
        self.fsock, self.bsock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel = Channel(self.fsock, Connection(Role.FRONTEND))
        self.closed_by_backend = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn = Connection(Role.BACKEND)
        try:
            while True:
                data, fds = recv_message_bytes(self.bsock)
                conn.receive_data(data, fds)
                out, close = self.session.process(conn)
                for b in out:
                    send_message(self.bsock, b)
                if close:
                    break
        finally:
            conn.close()
            self.session.disconnect()
            self.closed_by_backend.set()
            self.bsock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.fsock.close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.bsock.close()


REGION = m.MemRegion(0xC0000, 0x40000, 0x7F0000000000, 0xC0000)

# (request, payload, nfds) for every request the backend decodes.
REQUESTS = [
    (R.GET_FEATURES, m.Empty(), 0),
    (R.SET_FEATURES, m.U64((1 << 32) | (1 << 30)), 0),
    (R.SET_OWNER, m.Empty(), 0),
    (R.RESET_OWNER, m.Empty(), 0),
    (R.SET_MEM_TABLE, m.MemoryTable((m.MemRegion(0, 0xA0000, 0x7F0000000000, 0), REGION)), 2),
    (R.SET_VRING_NUM, m.VringState(1, 256), 0),
    (R.SET_VRING_ADDR, m.VringAddr(1, 0, 0x7F00000C0000, 0x7F00000C8000, 0x7F00000C1000, 0), 0),
    (R.SET_VRING_BASE, m.VringState(0, 5), 0),
    (R.GET_VRING_BASE, m.VringState(0, 0), 0),
    (R.SET_VRING_KICK, m.VringFd(1), 1),
    (R.SET_VRING_CALL, m.VringFd(0, no_fd=True), 0),
    (R.SET_VRING_ERR, m.VringFd(2), 1),
    (R.GET_PROTOCOL_FEATURES, m.Empty(), 0),
    (R.SET_PROTOCOL_FEATURES, m.U64(int(m.ProtocolFeature.MQ | m.ProtocolFeature.REPLY_ACK)), 0),
    (R.GET_QUEUE_NUM, m.Empty(), 0),
    (R.SET_VRING_ENABLE, m.VringState(1, 1), 0),
    (R.SET_BACKEND_REQ_FD, m.Empty(), 1),
    (R.GET_CONFIG, m.Config(0, 6, 0, bytes(6)), 0),
    (R.SET_CONFIG, m.Config(0, 6, 0, b"\x52\x54\x00\x12\x34\x56"), 0),
    (R.GET_MAX_MEM_SLOTS, m.Empty(), 0),
    (R.ADD_MEM_REG, m.SingleMemRegion(REGION), 1),
    (R.REM_MEM_REG, m.SingleMemRegion(REGION), 0),
    (R.SET_STATUS, m.U64(0xF), 0),
    (R.GET_STATUS, m.Empty(), 0),
]
