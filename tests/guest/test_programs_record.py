"""The guest's offload views read the device's record (OBJ_LIST, protocol 1.2) over the ctrl vq, and a
driver facing a 1.1 device falls back to what it loaded itself, saying so.

`GuestPrograms` on a stand-in driver whose ctrl vq is the real device handler (`BpfCommandHandler` of
a real `OffloadService`, loopback port, kernel engine); a 1.1 device is that handler with its CAPS
answering version 1.1, which is all a 1.1 device differs in for a driver.
"""

from __future__ import annotations

import base64
import dataclasses
import errno

import pytest

from vxdp.bpf.mapspec import MapType
from vxdp.guest.programs import GuestPrograms
from vxdp.host.offload.handler import BpfCommandHandler
from vxdp.offload.codec import Reply, decode_reply, encode_reply
from vxdp.offload.wire import Command
from vxdp.virtio.ctrl_framing import CtrlReply, CtrlRequest
from vxdp.virtio.features import Experimental

pytestmark = pytest.mark.privileged

OFFLOADED = Experimental.NET_BPF_OFFLOAD.bit  # the acked features of a frontend that negotiated offload

DEV = "grec0"


class Ctrl:
    """The driver's ctrl-vq client shape (``command(request, capacity) -> reply``) over a device
    handler; ``minor``: what CAPS says the protocol's minor version is (None: as the device)."""

    def __init__(self, handler: BpfCommandHandler, minor: int | None = None):
        self.handler, self.minor, self.commands = handler, minor, []

    def command(self, req: CtrlRequest, capacity: int) -> CtrlReply:
        self.commands.append(req.command)
        out = self.handler.handle(req, capacity)
        if req.command == Command.CAPS and self.minor is not None:
            r = decode_reply(req.command, out)
            out = encode_reply(req.command, Reply(payload=dataclasses.replace(r.payload, version_minor=self.minor)),
                               capacity)
        return out


class Driver:
    connected = True
    features = Experimental.NET_BPF_OFFLOAD.bit
    rings = None
    rx_program = None

    def __init__(self, ctrl: Ctrl):
        self.ctrl = ctrl


@pytest.fixture
def device(service):
    service.add_device(DEV, "lo", acked_features=lambda: OFFLOADED)
    with service.as_operator():  # what the host's operator put on the device, not the guest
        m = service.map_create(DEV, type=MapType.ARRAY, key_size=4, value_size=8, max_entries=4, name="op_stats")
    service.map_update(DEV, m, (2).to_bytes(4, "little"), (9).to_bytes(8, "little"))
    return service, m


def test_the_guest_sees_and_uses_the_operators_objects_and_its_detach_leaves_them(device):
    service, m = device
    ctrl = Ctrl(BpfCommandHandler(service, DEV))
    g = GuestPrograms(Driver(ctrl))
    shown = g.show()
    assert [(x["handle"], x["name"], x["origin"]) for x in shown["maps"]] == [(m, "op_stats", "operator")]
    assert "notes" not in shown and Command.OBJ_LIST in ctrl.commands
    h = g.handlers()
    assert h["map.lookup"](map="op_stats", key="02000000") == {"key": "02000000", "value": (9).to_bytes(8, "little").hex()}
    h["map.update"](map=f"id:{m}", key="01000000", value=(4).to_bytes(8, "little").hex())
    assert service.map_lookup(DEV, m, (1).to_bytes(4, "little")) == (4).to_bytes(8, "little")
    # the guest's detach frees what the guest made; the operator's objects are the operator's to remove
    assert g.detach("offload") == {"detached": 0}
    assert [o["handle"] for o in g.show()["maps"]] == [m] and len(service.objects(DEV)) == 1


def test_a_driver_facing_a_1_1_device_falls_back_to_its_own_slot_and_says_so(device, caplog):
    service, _ = device
    ctrl = Ctrl(BpfCommandHandler(service, DEV), minor=1)
    g = GuestPrograms(Driver(ctrl))
    with caplog.at_level("WARNING"):
        shown = g.show()
    assert shown["programs"] == [] and shown["maps"] == []  # it loaded nothing itself
    (note,) = shown["notes"]
    assert "protocol 1.1" in note and "OBJ_LIST" in note and "what this driver loaded" in note
    assert any("protocol 1.1" in r.getMessage() for r in caplog.records)
    assert Command.OBJ_LIST not in ctrl.commands  # never sent to a device that does not know it


def test_the_guest_carries_state_as_the_operator_does(device):
    """``offload export/import`` with ``--guest``: the same base64 document as the host's operator path
    (one implementation, `OffloadClient.state_export_base64`), over the guest's transport."""
    service, _ = device
    g = GuestPrograms(Driver(Ctrl(BpfCommandHandler(service, DEV))))
    doc = g.handlers()["offload.export"]()
    assert base64.b64decode(doc["state"]) == service.state_export(DEV) and doc["bytes"] > 0
    with pytest.raises(OSError) as e:
        g.handlers()["offload.import"](state="not base64!")
    assert e.value.errno == errno.EINVAL and "not base64" in str(e.value)
