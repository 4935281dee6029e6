"""The operator's path (`DeviceOffload.load`, behind ``vxdp prog load --device``) in process: the same
handler and policy as the guest's ctrl commands, but not the guest's command-rate bucket."""

from __future__ import annotations

import errno
import os

import pytest
from testpaths import SAMPLES_BUILD

from vxdp.host.ctrl_queue import CtrlTable
from vxdp.host.offload.device_offload import DeviceOffload
from vxdp.host.offload.policy import Policy, Quota
from vxdp.host.offload.service import OffloadService
from vxdp.offload.codec import decode_reply, encode_request
from vxdp.offload.messages import CapsRequest
from vxdp.offload.wire import Command, Errno
from vxdp.testing.netns import NetLab
from vxdp.virtio.features import Experimental

pytestmark = pytest.mark.privileged

XDP1 = str(SAMPLES_BUILD / "xdp1.o")


def _caps_from_guest(ctrl: CtrlTable) -> int:
    """One CAPS through the device's ctrl table, as the guest's ctrl vq sends it; the reply code."""
    reply = ctrl.answer(encode_request(CapsRequest()).encode(), 4096)
    return decode_reply(Command.CAPS, reply).code


@pytest.fixture
def device():
    """A device on a veth end with a guest burst of 3 commands and a clock that never refills it."""
    service = OffloadService(policy=Policy(quota=Quota(commands_per_second=1.0, command_burst=3)),
                             clock=lambda: 0.0)
    ctrl = CtrlTable()
    with NetLab("vxo") as lab:
        pair = lab.veth(lab.netns(), lab.netns(), "voa", "vob")
        dev = DeviceOffload(service, f"o{os.getpid() % 1000}", pair.b, pair.ns_b,
                            features=lambda: Experimental.NET_BPF_OFFLOAD.bit, ctrl=ctrl)
        try:
            yield dev, ctrl
        finally:
            dev.close()
            service.close()


def test_operator_load_does_not_spend_the_guest_command_rate(device):
    dev, ctrl = device
    doc = dev.load(XDP1)  # CAPS, MAP_CREATE, PROG_LOAD, PROG_ATTACH, ...: more than the burst of 3
    assert [p["name"] for p in doc["programs"]] == ["xdp_prog1"]
    counters = dev.service.show()[0]["counters"]
    assert counters["commands"] == 0 and counters["operator_commands"] >= 4 and counters["rate_limited"] == 0
    assert dev.detach() == {"detached": 1}
    # the guest's bucket is whole: three commands pass, the fourth is EAGAIN (rule rate)
    assert [_caps_from_guest(ctrl) for _ in range(4)] == [Errno.OK] * 3 + [Errno.EAGAIN]


def test_negotiation_is_the_device_acked_features_for_the_guest_and_host_show():
    """One source: what the frontend acked, read per command; the guest's ctrl class and ``host show``
    agree at every moment, and the operator's path (for stock guests) does not depend on it."""
    service = OffloadService()
    acked = [0]
    ctrl = CtrlTable()
    with NetLab("vxn") as lab:
        pair = lab.veth(lab.netns(), lab.netns(), "vna", "vnb")
        dev = DeviceOffload(service, f"n{os.getpid() % 1000}", pair.b, pair.ns_b, features=lambda: acked[0],
                            ctrl=ctrl)
        try:
            assert _caps_from_guest(ctrl) == Errno.EOPNOTSUPP
            assert dev.show()["device"]["offload_negotiated"] is False
            assert dev.client.caps().max_maps > 0  # the operator's path still answers
            acked[0] = Experimental.NET_BPF_OFFLOAD.bit
            assert _caps_from_guest(ctrl) == Errno.OK
            assert dev.show()["device"]["offload_negotiated"] is True
            assert service.show()[0]["offload_negotiated"] is True
        finally:
            dev.close()
            service.close()


def test_state_travels_as_base64_and_bad_base64_is_einval(device):
    dev, _ctrl = device
    dev.load(XDP1)
    doc = dev.state_export()
    assert doc["bytes"] > 0 and isinstance(doc["state"], str)
    with pytest.raises(OSError) as e:
        dev.state_import("not base64!")
    assert e.value.errno == errno.EINVAL and "not base64" in str(e.value)
    dev.detach()
    assert dev.state_import(doc["state"]) == {"imported": doc["bytes"]}
    assert [p["name"] for p in dev.show()["programs"]] == ["xdp_prog1"]


def test_operator_is_still_bound_by_the_map_quota():
    service = OffloadService(policy=Policy(quota=Quota(max_maps=0)))
    with NetLab("vxq") as lab:
        pair = lab.veth(lab.netns(), lab.netns(), "vqa", "vqb")
        dev = DeviceOffload(service, f"q{os.getpid() % 1000}", pair.b, pair.ns_b,
                            features=lambda: 0, ctrl=CtrlTable())
        try:
            with pytest.raises(OSError) as e:
                dev.load(XDP1)
            assert e.value.errno == errno.ENOSPC and "quota.max_maps" in str(e.value)
        finally:
            dev.close()
            service.close()
