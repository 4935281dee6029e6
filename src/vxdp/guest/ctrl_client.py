"""The guest driver's control-virtqueue client: one command at a time, synchronous, bounded.

A command is rare (promiscuous mode, the offload class's loads and lookups), so it is
driven by the Python ``DriverQueue`` half, not a compiled kernel. `CtrlClient.command`
takes a `CtrlRequest` and gives back the `CtrlReply` the device wrote: the frames a
class's codec makes and reads travel as they are, and this is where they become bytes in
guest memory and back, once each way. The request goes into the first half of the ctrl area as one
device-readable descriptor, and a device-writable descriptor of ``capacity`` bytes (the
ack and the class's result) follows it. We kick the
ctrl vring and wait for the used entry by polling its call eventfd with a short timeout,
re-reading the used ring each time, so a notification the device chose not to send (or
one lost in a race) costs at most one poll period, and the whole wait is bounded by the
caller's timeout. A device that never answers leaves the chain in flight; the ring is then
unusable (the spec has no way to take a buffer back) and `CtrlTimeout` says so; the
driver's reconnect builds a fresh ring.
"""

from __future__ import annotations

import select
import time

from vxdp.offload.wire import Command
from vxdp.virtio.ctrl_framing import CtrlClass, CtrlError, CtrlReply, CtrlRequest

from .rings import CTRL, GuestRings

# How long a command may take the device, on a slow machine: a PROG_LOAD runs the host kernel's
# verifier (seconds for a large program) and a backend under load answers late. The driver's loop
# waits that long for it at most, so this bounds the datapath stall a command can cause too.
TIMEOUT_S = 10.0


def describe(cls: int, cmd: int) -> str:
    """A command as a log names it: ``class 0x40 (BPF) cmd 0x01 (MAP_CREATE)``."""
    try:
        cname = f" ({CtrlClass(cls).name})"
    except ValueError:
        cname = ""
    mname = ""
    if cls == CtrlClass.BPF:
        try:
            mname = f" ({Command(cmd).name})"
        except ValueError:
            pass
    return f"class {cls:#04x}{cname} cmd {cmd:#04x}{mname}"


class CtrlClientError(Exception):
    """The ctrl queue is not there, the command does not fit, or the device broke the exchange."""


class CtrlTimeout(CtrlClientError):
    """The device did not return the command's chain in time."""


class CtrlClient:
    """Sends control commands on vring 2 of one session's rings."""

    def __init__(self, rings: GuestRings) -> None:
        if CTRL not in rings.queues:
            raise CtrlClientError("the device has no control virtqueue (CTRL_VQ not negotiated)")
        self.rings = rings
        self.dq = rings.queues[CTRL]
        self.broken: str | None = None

    def command(self, request: CtrlRequest, capacity: int = 1, timeout: float = TIMEOUT_S) -> CtrlReply:
        """Send one command; return the reply the device wrote into a ``capacity``-byte area (the ack
        byte included, so at least 1)."""
        if self.broken:
            raise CtrlClientError(f"ctrl queue unusable: {self.broken}")
        cls, cmd = request.cls, request.command
        req = request.encode()
        half = self.rings.ctrl_size // 2
        if len(req) > half or capacity > half or capacity < 1:
            raise CtrlClientError(f"ctrl command of {len(req)} bytes with a {capacity}-byte reply area "
                                  f"does not fit the {half}-byte ctrl buffers")
        mem = self.rings.mem
        req_gpa = self.rings.ctrl_area
        reply_gpa = req_gpa + half
        mem.write(req_gpa, req)
        mem.write(reply_gpa, b"\xff")  # neither OK nor ERR until the device writes it
        head = self.dq.add_buffers(mem, [(req_gpa, len(req), False), (reply_gpa, capacity, True)])
        self.dq.enable_interrupts(mem)
        if self.dq.kick_needed(mem):
            self.rings.kick(CTRL)
        deadline = time.monotonic() + timeout
        call = self.rings.fds[CTRL].call
        while True:
            used = self.dq.get_used(mem)
            if used is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self.broken = (f"ctrl command {describe(cls, cmd)} not answered by the device within "
                               f"{timeout:g} s: is the backend up and serving its ctrl ring (`vxdp host show`, "
                               f"its log)? The ctrl ring stays unusable until the driver reconnects")
                raise CtrlTimeout(self.broken)
            select.select([call], [], [], min(left, 0.05))
            self.rings.drain_call(CTRL)
        got, length = used
        if got != head:
            self.broken = f"device returned chain {got}, expected {head}"
            raise CtrlClientError(self.broken)
        try:
            return CtrlReply.decode(mem.read(reply_gpa, length))
        except CtrlError as e:
            raise CtrlClientError(f"{describe(cls, cmd)}: {e}") from None
