"""Hostile guests against the real daemon's offload state (issue: "a hostile guest must not ...").

The frontend is our guest driver's own classes, in this process, so a test can do what a stock
driver never would (clear a feature bit it negotiated, then leave) while the BPF commands travel
over a real ctrl virtqueue to a real ``vxdp host serve``. Each test ends with what a good guest
must still get.
"""

from __future__ import annotations

import os
import struct
from contextlib import contextmanager

import pytest
from host_helpers import Daemon, poll, quiet_lab
from testpaths import SAMPLES_BUILD

from vxdp.bpf import elf, link
from vxdp.bpf.isa import EXIT, Insn, XdpAction
from vxdp.bpf.kernel.objects import btf_ids, prog_get_fd_by_id
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.mapspec import MapType
from vxdp.guest.driver import GuestDriver
from vxdp.host.offload.policy import Quota
from vxdp.host.offload.service import kernel_prefix
from vxdp.offload.client import OffloadClient, OffloadRefused
from vxdp.offload.wire import Errno
from vxdp.testing.kobjects import btf_variant, prog_names
from vxdp.testing.netns import NetLab
from vxdp.vhost_user.frontend import run
from vxdp.virtio.features import Experimental, has

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@contextmanager
def _serve(tmp_path, policy: str | None = None):
    """A real ``vxdp host serve`` on a quiet veth pair (with ``policy`` as its TOML policy file)."""
    extra: tuple[str, ...] = ()
    if policy is not None:
        (tmp_path / "policy.toml").write_text(policy)
        extra = ("--policy", str(tmp_path / "policy.toml"))
    with NetLab("vxh") as lab:
        pair = quiet_lab(lab)
        sock = str(tmp_path / "vh.sock")
        with Daemon(tmp_path / "run", sock, "vxp", netns=pair.ns_a, name="hz", extra=extra) as d:
            d.sock = sock
            yield d


@pytest.fixture
def daemon(tmp_path):
    with _serve(tmp_path) as d:
        yield d


U32 = struct.Struct("<I")
PASS = [Insn(0xB7, 0, 0, 0, XdpAction.PASS), Insn(EXIT)]


def _prefix(daemon) -> str:
    """The kernel-name prefix of the daemon's device: how bpftool tells its objects."""
    return kernel_prefix(daemon.show()["offload"]["device"]["name"])


def _guest(sock: str) -> tuple[GuestDriver, OffloadClient]:
    drv = GuestDriver(sock, mem_mb=16, queue_size=256)
    drv.connect(timeout=30)
    return drv, OffloadClient(drv.ctrl.command)


def test_clearing_the_offload_bit_before_leaving_still_frees_the_sessions_objects(daemon):
    drv, client = _guest(daemon.sock)
    try:
        assert has(drv.features, Experimental.NET_BPF_OFFLOAD)
        handle = client.map_create(MapType.ARRAY, 4, 8, 4, name="secret")
        client.map_update(handle, b"\0\0\0\0", (0x5EC2E7).to_bytes(8, "little"))
        # the hostile part: stop every ring, then SET_FEATURES without bit 58, then go away
        for i in range(3):
            run(drv.session.stop_vring(i), drv.channel.exchange)
        drv.session.want_features = drv.features & ~Experimental.NET_BPF_OFFLOAD.bit
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


def _xdp1(client: OffloadClient):
    """xdp1's maps made on the device, and a function loading its program with a given BTF blob."""
    obj = elf.load_object(SAMPLES_BUILD / "xdp1.o")
    linked = link.link(obj, "xdp_prog1")
    maps = {n: client.map_create(m.type, m.key_size, m.value_size, m.max_entries, name=n)
            for n, m in obj.maps.items()}
    insns = link.resolve_maps(linked, maps)

    def load(btf: bytes) -> int:
        return client.prog_load(insns, name="xdp_prog1", btf=btf, func_info=linked.func_info,
                                line_info=linked.line_info)[0]
    return obj.btf_raw, load


def _fds(pid: int) -> list[str]:
    """What the daemon's fds are (``anon_inode:btf``, ``anon_inode:bpf-prog``, ...)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return sorted(out)


def _btf_of(daemon, handle: int) -> int:
    """The kernel's BTF id of the device's program ``handle`` (its kernel id from the daemon's table)."""
    kid = next(p["kernel_id"] for p in daemon.show()["offload"]["device"]["programs"] if p["handle"] == handle)
    with KernelProgram.from_fd(prog_get_fd_by_id(kid)) as p:
        return p.info().btf_id


def test_a_new_btf_blob_on_every_load_leaves_no_btf_object_or_fd_behind(daemon):
    """The attack: a different BTF blob with every PROG_LOAD + PROG_FREE. On main the engine kept each
    one (+300 fds and kernel BTF objects after 300 loads); now a BTF goes with its last program."""
    drv, client = _guest(daemon.sock)
    try:
        raw, load = _xdp1(client)
        client.prog_free(load(btf_variant(raw, 0)))  # warm-up: whatever the daemon opens once is open
        before = _fds(daemon.pid)
        ours = set()
        for n in range(1, 41):
            h = load(btf_variant(raw, n))
            ours.add(_btf_of(daemon, h))
            client.prog_free(h)
        assert 0 not in ours and len(ours) == 40  # each load had its own BTF object in the kernel
        assert poll(lambda: ours & btf_ids(), lambda s: not s, timeout=10, what="our BTF objects gone") == set()
        assert _fds(daemon.pid) == before
        assert "anon_inode:btf" not in before
        client.prog_free(load(raw))  # a good load still works
    finally:
        drv.close()


def test_btf_is_charged_to_map_memory_and_a_blob_over_what_is_left_is_refused_enospc(tmp_path):
    with _serve(tmp_path, "[quota]\nmax_map_memory = 65536\n") as daemon:
        drv, client = _guest(daemon.sock)
        try:
            raw, load = _xdp1(client)

            def used() -> int:
                return daemon.show()["offload"]["device"]["map_memory"]
            maps_only = used()
            h = load(raw)
            assert used() == maps_only + len(raw)  # the blob is charged once...
            h2 = load(raw)
            assert used() == maps_only + len(raw)  # ...however many programs share it
            big = btf_variant(raw, 1, pad=65536 - used() + 1)
            with pytest.raises(OffloadRefused) as e:
                load(big)
            assert e.value.code == Errno.ENOSPC and e.value.rule == "quota.max_map_memory", str(e.value)
            assert "BTF" in e.value.message
            client.prog_free(h)
            client.prog_free(h2)
            assert used() == maps_only  # gone with its last program
            client.prog_free(load(raw))  # a good load still works
        finally:
            drv.close()
