"""Hostile guests against the real daemon's offload state (issue: "a hostile guest must not ...").

The frontend is our guest driver's own classes, in this process, so a test can do what a stock
driver never would (clear a feature bit it negotiated, then leave) while the BPF commands travel
over a real ctrl virtqueue to a real ``vxdp host serve``. Each test ends with what a good guest
must still get.
"""

from __future__ import annotations

import struct

import pytest
from host_helpers import Daemon, poll, quiet_lab

from vxdp.bpf.isa import EXIT, Insn, XdpAction
from vxdp.bpf.mapspec import MapType
from vxdp.guest.driver import GuestDriver
from vxdp.host.offload.policy import Quota
from vxdp.host.offload.service import kernel_prefix
from vxdp.testing.kobjects import prog_names
from vxdp.testing.netns import NetLab
from vxdp.vhost_user.frontend import run
from vxdp.virtio.offload import FEATURE_BPF_OFFLOAD
from vxdp.virtio.offload_client import OffloadClient, OffloadRefused, ctrl_transport
from vxdp.virtio.offload_wire import Errno

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture
def daemon(tmp_path):
    with NetLab("vxh") as lab:
        pair = quiet_lab(lab)
        sock = str(tmp_path / "vh.sock")
        with Daemon(tmp_path / "run", sock, "vxp", netns=pair.ns_a, name="hz") as d:
            d.sock = sock
            yield d


U32 = struct.Struct("<I")
PASS = [Insn(0xB7, 0, 0, 0, XdpAction.PASS), Insn(EXIT)]


def _prefix(daemon) -> str:
    """The kernel-name prefix of the daemon's device: how bpftool tells its objects."""
    return kernel_prefix(daemon.show()["offload"]["device"]["name"])


def _guest(sock: str) -> tuple[GuestDriver, OffloadClient]:
    drv = GuestDriver(sock, mem_mb=16, queue_size=256)
    drv.connect(timeout=30)
    return drv, OffloadClient(ctrl_transport(drv.ctrl))


def test_clearing_the_offload_bit_before_leaving_still_frees_the_sessions_objects(daemon):
    drv, client = _guest(daemon.sock)
    try:
        assert drv.features >> FEATURE_BPF_OFFLOAD & 1
        handle = client.map_create(MapType.ARRAY, 4, 8, 4, name="secret")
        client.map_update(handle, b"\0\0\0\0", (0x5EC2E7).to_bytes(8, "little"))
        # the hostile part: stop every ring, then SET_FEATURES without bit 58, then go away
        for i in range(3):
            run(drv.session.stop_vring(i), drv.channel.exchange)
        drv.session.want_features = drv.features & ~(1 << FEATURE_BPF_OFFLOAD)
        run(drv.session.set_features(), drv.channel.exchange)
    finally:
        drv.close()
    dev = poll(daemon.show, lambda d: not d["connected"], timeout=30, what="the session ended")
    assert dev["offload"]["device"]["maps"] == [], "the first guest's map outlived its session"
    nxt, client2 = _guest(daemon.sock)
    try:
        with pytest.raises(OffloadRefused) as e:
            client2.map_lookup(handle, b"\0\0\0\0")
        assert e.value.code == Errno.EBADF
        h2 = client2.map_create(MapType.ARRAY, 4, 8, 4, name="mine")  # the next guest works as usual
        assert client2.map_lookup(h2, b"\0\0\0\0") == bytes(8)
    finally:
        nxt.close()


def test_a_program_in_a_prog_array_cannot_be_freed_so_the_kernel_holds_no_more_than_the_quota(daemon):
    """The attack: PROG_LOAD, put it in a prog_array, PROG_FREE, again. Were the free accepted the
    service would forget the program while the kernel's array kept it (44 programs against 16 on
    main); PROG_FREE of a program in a prog_array is refused, naming the array and the index."""
    prefix, quota = _prefix(daemon), Quota().max_progs
    drv, client = _guest(daemon.sock)
    try:
        table = client.map_create(MapType.PROG_ARRAY, 4, 4, 64, name="jt")
        loaded = []
        for i in range(3 * quota):
            try:
                h, _ = client.prog_load(PASS, name=f"p{i}")
            except OffloadRefused as e:
                assert e.code == Errno.ENOSPC and e.rule == "quota.max_progs", str(e)
                break
            loaded.append(h)
            client.map_update(table, U32.pack(i), U32.pack(h))
            with pytest.raises(OffloadRefused) as e:
                client.prog_free(h)
            assert e.value.code == Errno.EBUSY, str(e.value)
            assert f"prog_array handle {table}" in e.value.message and f"index {i}" in e.value.message
        assert len(loaded) == quota
        assert len(prog_names(prefix)) == quota  # the kernel's view: the quota, not more
        # the way out: empty the slot, then the free works and the kernel lets the program go
        client.map_delete(table, U32.pack(0))
        client.prog_free(loaded[0])
        gone = poll(lambda: prog_names(prefix), lambda p: len(p) == quota - 1, timeout=10, what="freed")
        assert len(gone) == quota - 1
        h, _ = client.prog_load(PASS, name="good")  # a good command still works
        client.map_update(table, U32.pack(0), U32.pack(h))
        assert client.map_lookup(table, U32.pack(0)) == U32.pack(h)
    finally:
        drv.close()
    poll(lambda: prog_names(prefix), lambda p: not p, timeout=30, what="the session's programs freed")
