"""The guest's program requests: load offloaded (over the ctrl vq) or native (on the rx path).

These are the control-socket methods behind ``vxdp prog …`` and ``vxdp map …``
with ``--guest``: the guest's "user programs" ask its "kernel" (the driver).

- ``offload``: the object goes to the device through `OffloadEngine` (maps,
  programs with guest handles, prog_arrays filled with program handles) and its
  program is attached on the host's port. If the device was not offered the
  offload feature, every request is refused there with EOPNOTSUPP.
- ``native``: the object runs in the driver on an engine of ours (``engine``: `DEFAULT_IN_PROCESS` by
  default, ``interp`` the reference), hooked on the rx path (`vxdp.engine.xdp_hook.XdpHook`: one
  `Engine.run_batch` per rx batch), after whatever the host passed.

A backend that goes away resets the device, which frees everything offloaded:
the driver forgets its offload slot then (`on_disconnect`), so ``prog show``
never lists programs the host no longer has.

The offload slot's views (``prog show``, ``map …``, ``prog detach``) read the
device's record of its objects over the ctrl vq (OBJ_LIST, protocol 1.2), so
the guest sees what an import recreated and what the host's operator put there,
not only what it loaded itself. A device of protocol 1.1 cannot list: the driver
then shows what it loaded, and ``prog show`` says so in ``notes``.

Every request reaches the device through the driver's ctrl client, which takes the
`OffloadClient`'s `CtrlRequest` and gives back the device's `CtrlReply` as they are.
``offload export`` / ``offload import`` carry the device's state as base64 JSON
(`OffloadClient.state_export_base64`), the document the host's operator path uses too.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

from ..engine import DEFAULT_IN_PROCESS, IN_PROCESS, make_engine
from ..engine.loader import LoadedObject
from ..engine.registry import ProgramRegistry, RegistryError
from ..engine.xdp_hook import XdpHook
from ..offload.client import OffloadClient
from ..offload.device_record import OffloadRecord
from ..offload.remote import OffloadEngine
from ..virtio.ctrl_framing import CtrlReply, CtrlRequest
from ..virtio.features import Experimental, has

log = logging.getLogger(__name__)

MODES = ("offload", "native")


class GuestPrograms:
    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.registry = ProgramRegistry(record=self._record)
        self._lister: OffloadClient | None = None  # the device's record is read through it; per connection

    # -- engines ---------------------------------------------------------------------------
    def _transport(self, request: CtrlRequest, capacity: int) -> CtrlReply:
        ctrl = getattr(self.driver, "ctrl", None)
        if ctrl is None or not self.driver.connected:
            raise RegistryError(errno.ENOTCONN, "the driver has no device (not connected, or no ctrl vq)")
        return ctrl.command(request, capacity)

    def _offload(self, path: str, prog: str | None, replace: bool = False) -> dict[str, Any]:
        if self.driver.connected and not has(self.driver.features, Experimental.NET_BPF_OFFLOAD):
            # a device without the bit has no BPF class: its ctrl vq would answer a bare ERR
            raise RegistryError(errno.EOPNOTSUPP, f"the device does not offer XDP offload (feature bit "
                                                  f"{int(Experimental.NET_BPF_OFFLOAD)} not negotiated)")
        engine = OffloadEngine(OffloadClient(self._transport))
        return self.registry.load("offload", engine, path, prog=prog, attach=lambda _, h: engine.attachment(
            h, replace=replace, replaces=self.registry.attached_handle("offload")))

    def _record(self, mode: str) -> OffloadRecord | str | None:
        """The device's record for the offload slot (`ProgramRegistry`'s ``record``); None without a
        device that offloads (nothing is offloaded then), the reason for a device that cannot list."""
        if mode != "offload" or not self.driver.connected or not has(self.driver.features, Experimental.NET_BPF_OFFLOAD):
            return None
        if self._lister is None:
            self._lister = self._state_client()
        if not self._lister.can_list():
            caps = self._lister.caps()
            return (f"the device speaks offload protocol {caps.version_major}.{caps.version_minor}, which cannot "
                    "list its objects (OBJ_LIST is 1.2): showing what this driver loaded, not the device's record")
        # the guest's detach leaves what the host's operator put on the device: that is the operator's to remove
        return OffloadRecord(self._lister, keeps=frozenset({"operator"}))

    def _state_client(self) -> OffloadClient:
        if self.driver.connected and not has(self.driver.features, Experimental.NET_BPF_OFFLOAD):
            raise RegistryError(errno.EOPNOTSUPP, f"the device does not offer XDP offload (feature bit "
                                                  f"{int(Experimental.NET_BPF_OFFLOAD)} not negotiated)")
        rings = getattr(self.driver, "rings", None)
        half = getattr(rings, "ctrl_size", 0) // 2
        return OffloadClient(self._transport, max_capacity=half or None)

    def state_export(self) -> dict[str, Any]:
        """The device's offloaded state (STATE_EXPORT), base64 for the JSON control socket."""
        return self._state_client().state_export_base64()

    def state_import(self, state: str) -> dict[str, Any]:
        """Recreate a state from `state_export` in the (empty) device. The objects are the device's:
        ``prog show`` and ``map …`` reach them through its record, ``prog detach`` frees them."""
        return self._state_client().state_import_base64(state)

    def _native(self, path: str, prog: str | None, engine_name: str) -> dict[str, Any]:
        if engine_name not in IN_PROCESS:
            raise RegistryError(errno.EINVAL, f"engine {engine_name!r}: a native program runs on "
                                f"{' or '.join(IN_PROCESS)}")
        engine = make_engine(engine_name)

        def attach(loaded: LoadedObject, handle: int) -> tuple[Callable[[], None], Callable[[], dict[str, int]]]:
            hook = XdpHook(engine, handle, self._send_back)
            self.driver.rx_program = hook

            def detach() -> None:
                if self.driver.rx_program is hook:
                    self.driver.rx_program = None

            return detach, hook.snapshot

        return self.registry.load("native", engine, path, prog=prog, attach=attach)

    def _send_back(self, batch) -> int:
        return self.driver.send(batch) if self.driver.connected else 0

    def on_disconnect(self) -> None:
        self.registry.forget("offload")
        self._lister = None

    # -- control-socket methods ------------------------------------------------------------
    def load(self, path: str, mode: str, prog: str | None = None, replace: bool = False,
             engine: str | None = None) -> dict[str, Any]:
        if mode not in MODES:
            raise RegistryError(errno.EINVAL, f"mode {mode!r}: one of {', '.join(MODES)}")
        if mode == "offload":
            if engine is not None:
                raise RegistryError(errno.EINVAL, "an offloaded program runs on the engine the host chose "
                                    "(vxdp host serve --engine); engine is for native loads")
            return self._offload(path, prog, replace)
        return self._native(path, prog, engine or DEFAULT_IN_PROCESS)

    def show(self) -> dict[str, Any]:
        return self.registry.show()

    def detach(self, mode: str | None = None) -> dict[str, Any]:
        if mode is not None and mode not in MODES:
            raise RegistryError(errno.EINVAL, f"mode {mode!r}: one of {', '.join(MODES)}")
        return {"detached": self.registry.detach(mode)}

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "prog.load": self.load,
            "prog.show": self.show,
            "prog.detach": self.detach,
            "offload.export": self.state_export,
            "offload.import": self.state_import,
            **self.registry.map_handlers(),
        }

    def close(self) -> None:
        """Detach and free everything at exit; a device already gone is no reason to stop closing."""
        for mode in list(self.registry.slots):
            try:
                self.registry.unload(mode)
            except Exception as e:  # noqa: BLE001 - exit goes on
                log.warning("guest programs: unloading %s at exit: %s", mode, e)
