"""A device's XDP offload: the BPF ctrl class on its ctrl vq, and the operator's path.

One `OffloadService` per daemon holds the policy, the handle tables and the
kernel objects. Each device registers there and gets:

- the BPF class plugged into its ctrl-vq table (`BpfCommandHandler.answer`),
  refusing every command unless the frontend acked the offload bit (QEMU, which
  does not know it, never does). The service's record of the device reads the
  device's acked features for that (``features``, given here), the one answer
  the handler and ``host show`` both use;
- the operator's path for a stock guest that cannot speak the class: ``vxdp
  prog load FILE.o --device DEV`` reaches the daemon's control socket and loads
  through an `OffloadEngine` whose transport is the same handler, in process.
  So both paths run the same commands under the same policy and quotas, except
  the command rate: that bucket is the guest's, and the operator's commands
  (through a handler of their own, ``operator=True``) take nothing from it.
  That transport hands the client's `CtrlRequest` to the handler and its
  `CtrlReply` back, the same frames the ctrl vq carries, never encoded.

Views: ``prog show``, ``map …`` and ``prog detach`` with ``--device`` read the
device's record (`OffloadRecord` over OBJ_LIST through the operator's handler),
the same table ``host show`` lists and the guest's own views read, so they
agree whoever loaded an object: the guest, the operator, a state import.

Lifetimes: a frontend that negotiated offload and then went away (or reset the
device) takes everything offloaded with it, as a device reset does; a frontend
that never negotiated it (a stock guest) leaves the operator's program in place,
so a guest reboot does not undo what the operator set up.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

from vxdp.engine.registry import ProgramRegistry, RegistryError
from vxdp.offload.client import OffloadClient
from vxdp.offload.device_record import OffloadRecord
from vxdp.offload.remote import OffloadEngine
from vxdp.virtio.ctrl_framing import CtrlClass, CtrlReply, CtrlRequest

from ..ctrl_queue import CtrlTable
from .handler import BpfCommandHandler
from .service import OffloadService

log = logging.getLogger("vxdp.host")


class DeviceOffload:
    def __init__(self, service: OffloadService, name: str, port: str, netns: str | None,
                 features: Callable[[], int], ctrl: CtrlTable) -> None:
        self.service = service
        self.name = name
        service.add_device(name, port, netns=netns, acked_features=features)
        self.handler = BpfCommandHandler(service, name)
        self.operator_handler = BpfCommandHandler(service, name, operator=True)
        ctrl.register(CtrlClass.BPF, self.handler.answer)
        self.client = OffloadClient(self._transport)
        record = OffloadRecord(self.client)
        self.registry = ProgramRegistry(record=lambda mode: record if mode == "offload" else None)

    def session_ended(self, negotiated: bool) -> None:
        """The frontend went away; ``negotiated``: it had acked the offload bit."""
        if not negotiated:
            return
        log.info("%s: the guest's offloaded programs and maps are freed with its session", self.name)
        self.service.reset(self.name)
        self.registry.forget("offload")

    # -- the operator's path ---------------------------------------------------------------
    def _transport(self, request: CtrlRequest, capacity: int) -> CtrlReply:
        return self.operator_handler.handle(request, capacity)

    def load(self, path: str, mode: str = "offload", prog: str | None = None, replace: bool = False) -> dict[str, Any]:
        if mode != "offload":
            raise RegistryError(errno.EINVAL, "a device runs programs offloaded; --native needs --guest")
        engine = OffloadEngine(OffloadClient(self._transport))
        return self.registry.load("offload", engine, path, prog=prog, attach=lambda _, h: engine.attachment(
            h, replace=replace, replaces=self.registry.attached_handle("offload")))

    def state_export(self) -> dict[str, Any]:
        """The device's offloaded state (STATE_EXPORT through the operator's handler), base64."""
        return self.client.state_export_base64()

    def state_import(self, state: str) -> dict[str, Any]:
        """Recreate a state in the (empty) device; the views (``prog show``, ``map …``) read it from the
        device's record, and ``prog detach`` frees it."""
        return self.client.state_import_base64(state)

    def show(self) -> dict[str, Any]:
        """The operator's view: the device's record (the operator's files named), and the device as
        ``host show`` describes it."""
        doc = self.registry.show()
        (dev,) = [d for d in self.service.show() if d.get("name") == self.name] or [{}]
        doc["device"] = dev
        return doc

    def detach(self, mode: str | None = None) -> dict[str, Any]:
        return {"detached": self.registry.detach(mode)}

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "prog.load": self.load,
            "prog.show": self.show,
            "prog.detach": self.detach,
            **self.registry.map_handlers(),
            "offload.show": lambda: self.service.show(),
            "offload.export": self.state_export,
            "offload.import": self.state_import,
        }

    def close(self) -> None:
        try:
            self.registry.unload()
        except Exception as e:  # noqa: BLE001 - shutdown goes on
            log.warning("%s: unloading at exit: %s", self.name, e)
        self.service.remove_device(self.name)
