"""The guest's libbpf-like Python API against a running guest driver and backend (offload and native)."""

from __future__ import annotations

import errno

import pytest
from guest_helpers import GuestProc, HostProc, poll
from testpaths import SAMPLES_BUILD

from vxdp import packets, rpc
from vxdp.frames import FrameBatch
from vxdp.guest import api
from vxdp.netdev.port import Port
from vxdp.testing.netns import NetLab

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture
def stack(tmp_path, monkeypatch, samples_built):
    monkeypatch.setenv(rpc.RUN_DIR_ENV, str(tmp_path))
    with NetLab("vxa") as lab:
        traffic, hostns, guestns = lab.netns(ipv6=False), lab.netns(), lab.netns(ipv6=False)
        lab.veth(traffic, hostns, "vxat0", "vxap0", addr_a="198.18.40.1/24")
        sock = str(tmp_path / "vh.sock")
        with HostProc(sock, "vxap0", hostns, tmp_path, name="apidev"), \
                GuestProc(sock, guestns, "vxag0", tmp_path, addr="198.18.40.2/24", name="apig") as g:
            doc = g.wait_connected()
            yield traffic, doc["mac"]


def _send(ns: str, frames: list[bytes]) -> None:
    with Port("vxat0", netns=ns) as port:
        batch = FrameBatch.allocate(64, 2048)
        for i in range(0, len(frames), 64):
            batch.fill(frames[i : i + 64])
            assert port.send_batch(batch) == batch.count


@pytest.mark.parametrize("mode", ["offload", "native"])
def test_open_load_and_read_maps_by_name(stack, mode):
    traffic, mac = stack
    obj = api.open(SAMPLES_BUILD / "xdp1.o")
    assert obj.programs == ["xdp_prog1"] and obj.maps["rxcnt"].max_entries == 256
    with obj.load(guest="apig", mode=mode) as loaded:
        assert loaded.attached["name"] == "xdp_prog1"
        rxcnt = loaded.maps["rxcnt"]
        rxcnt[200] = 41  # user space writes too
        assert rxcnt[200] == 41 and rxcnt.lookup((200).to_bytes(4, "little")) == (41).to_bytes(8, "little")
        with pytest.raises(OSError) as e:
            rxcnt.delete((1).to_bytes(4, "little"))
        assert e.value.errno == errno.EINVAL  # arrays refuse delete, offloaded or not
        frames = [bytes.fromhex(mac.replace(":", "")) + f[6:] for f in packets.mix(64)]
        _send(traffic, frames)
        want = dict(packets.mix_protocol_counts(64))
        want[200] = 41
        got = poll(lambda: {int.from_bytes(k, "little"): int.from_bytes(v, "little")
                            for k, v in rxcnt.items() if any(v)},
                   lambda g: g == want, timeout=20, what=f"{mode} counters")
        assert got == want
        assert loaded.counters().get("drop") == 64
    assert rpc.call(rpc.guest_socket("apig"), "prog.show")["programs"] == []  # detached on exit
