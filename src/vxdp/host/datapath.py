"""The pumps between the host port and the guest's rings: one compiled call per batch.

port -> guest (the "rx" direction, the guest's receive queue 0):
  the port's fd is readable -> ``Port.recv_batch`` fills a `FrameBatch` -> (an offloaded
  program on an engine outside the kernel runs on the batch here: ``rx_program``, which
  keeps the PASS frames and sends TX ones back out of the port) -> one
  ``DeviceRing.deliver`` copies the frames into the guest's rx buffers (header first)
  -> the call eventfd is written when the ring says so (EVENT_IDX aware; without
  EVENT_IDX after every used update unless the driver set NO_INTERRUPT, which is what
  QEMU under TCG needs: it polls the call eventfd).
  Frames that find no rx buffer stay in a backlog of at most ONE batch; while it is
  there the port's fd is not watched, so further frames wait in the kernel's AF_PACKET
  ring and, once that is full, the kernel drops them and counts them (``port.drops``
  in ``device.show``). The backlog is retried when the guest kicks rx (it added
  buffers) and on every tick. Frames the guest cannot take at all (a buffer too
  small without MRG_RXBUF) are dropped and counted (``rx.drops``). With no guest rx
  ring running, frames read from the port are dropped and counted too: the port
  must be drained or its fd would stay readable.

guest -> port (the "tx" direction, the guest's transmit queue 1):
  the tx kick eventfd is readable -> drain it -> ``DeviceRing.collect`` gathers up to
  a batch of frames (header skipped) -> ``Port.send_batch``. What the port refused
  (its device stayed full through the port's retries) is kept, at most one batch, and
  resent before anything new is collected, so back-pressure reaches the guest's tx
  ring instead of dropping; a batch refused for ``TX_HOLD_S`` is dropped and counted.
  A pump does at most ``MAX_ROUNDS`` batches per wake-up and then wakes itself through
  a private eventfd, so one busy direction cannot starve the other or the control
  sockets.

Kicks can be missed by design of the protocol's races (the device's avail_event
store against the driver's idx load), so after a tx round that emptied the ring, and
after an rx delivery that ran out of buffers, the avail idx is read once more (rx:
``notify.rx_rechecks`` counts the kicks that race lost; at 1.3 Mpps a few hundred in
4 M frames, each of which used to stall rx until the 100 ms tick and overflow the
port's ring), and `tick` polls every running ring. ``notify`` also counts the call
eventfd writes and the kicks served each way: frames per call is the batching the
rings achieve.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from vxdp.eventloop import Loop
from vxdp.frames import FrameBatch
from vxdp.netdev.port import Port
from vxdp.virtio import sigbus
from vxdp.virtio.virtqueue import VirtqueueError

from .ctrl_queue import CtrlTable, serve_ctrl
from .net_device import CTRL, RX, TX, NetDevice

log = logging.getLogger("vxdp.host")

BATCH = 256
MAX_ROUNDS = 8
TX_HOLD_S = 1.0


@dataclass
class DirStats:
    frames: int = 0
    bytes: int = 0
    drops: int = 0
    errors: int = 0


@dataclass
class NotifyStats:
    """Notifications each way: frames per call/kick is the batching the rings achieve (EVENT_IDX)."""

    rx_calls: int = 0  # call eventfd writes (interrupts) on the guest's rx ring
    rx_kicks: int = 0  # rx kicks served (the guest added buffers while we waited for them)
    rx_rechecks: int = 0  # buffers found after asking for a kick, served without one (a kick lost to the race)
    tx_calls: int = 0
    tx_kicks: int = 0


def _drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except (BlockingIOError, OSError):
        pass


class Datapath:
    """Moves frames between ``port`` and ``device``'s rings on ``loop``; the device's `RingListener`."""

    def __init__(self, device: NetDevice, port: Port, loop: Loop, ctrl: CtrlTable | None = None,
                 batch: int = BATCH, rx_program: Callable[[FrameBatch], None] | None = None) -> None:
        self.device, self.port, self.loop = device, port, loop
        # an offloaded program run here on each batch from the port, before the guest's ring (an engine
        # outside the kernel: `OffloadService.run_rx`); it leaves the PASS frames in the batch
        self.rx_program = rx_program
        self.ctrl = ctrl or CtrlTable()
        self.rx = DirStats()  # port -> guest
        self.tx = DirStats()  # guest -> port
        self.notify = NotifyStats()
        self._rxb = FrameBatch.allocate(batch)
        self._txb = FrameBatch.allocate(batch)
        self._rx_backlog: tuple[int, int] | None = None  # [start, end) of _rxb still to deliver
        self._tx_left: tuple[int, int] | None = None  # [start, end) of _txb the port refused
        self._tx_left_since = 0.0
        self._port_watched = False
        self._rx_rechecked = -1  # the avail idx of the last lost-kick re-check (see _deliver)
        self._kicks: dict[int, int] = {}  # vring index -> kick fd we watch
        self._faults = sigbus.faults()  # SIGBUS faults absorbed so far (see `_check_memory`)
        self._more = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self._more, self._on_more)
        self.ctrl.wake = self._wake  # a deferred ctrl command (PROG_LOAD) finished on its worker
        device.listener = self
        self._watch_port(True)

    # ------------------------------------------------------------------ RingListener
    def ring_started(self, index: int) -> None:
        fd = self.device.vrings[index].kick
        if fd is not None:
            self._kicks[index] = fd
            self.loop.add_reader(fd, lambda i=index, f=fd: self._on_kick(i, f))
        self._wake()

    def ring_stopped(self, index: int) -> None:
        fd = self._kicks.pop(index, None)
        if fd is not None:
            self.loop.remove_reader(fd)
        if index == RX and self._rx_backlog is not None:
            s, e = self._rx_backlog
            self.rx.drops += e - s
            self._rx_backlog = None
            self._watch_port(True)
        if index == TX and self._tx_left is not None:
            s, e = self._tx_left
            self.tx.drops += e - s
            self._tx_left = None
        if index == CTRL:
            self.ctrl.pending = None  # the ring is gone: its deferred command has no chain to answer

    # ------------------------------------------------------------------ event handlers
    def _watch_port(self, on: bool) -> None:
        if on and not self._port_watched:
            self.loop.add_reader(self.port.fileno(), self._on_port)
        elif not on and self._port_watched:
            self.loop.remove_reader(self.port.fileno())
        self._port_watched = on

    def _wake(self) -> None:
        os.eventfd_write(self._more, 1)

    def _check_memory(self) -> None:
        """After each wake-up: one load says whether a SIGBUS on a peer's memory was absorbed
        (`vxdp.virtio.sigbus`); if so the device stops its rings and the daemon ends the session."""
        n = sigbus.faults()
        if n != self._faults:
            self._faults = n
            self.device.check_memory()

    def _on_more(self) -> None:
        _drain(self._more)
        self.retry_rx()
        self.pump_tx()
        self.pump_ctrl()
        self._check_memory()

    def _on_kick(self, index: int, fd: int) -> None:
        _drain(fd)
        if index == RX:
            self.notify.rx_kicks += 1
            self.retry_rx()
        elif index == TX:
            self.notify.tx_kicks += 1
            self.pump_tx()
        elif index == CTRL:
            self.pump_ctrl()
        self._check_memory()

    def _on_port(self) -> None:
        self.pump_rx()
        self._check_memory()

    def tick(self) -> None:
        """Periodic safety net: retry the rx backlog, poll rings for missed kicks."""
        self.retry_rx()
        self.pump_tx()
        self.pump_ctrl()
        self._check_memory()

    # ------------------------------------------------------------------ port -> guest
    def _rx_ready(self) -> bool:
        vr = self.device.vrings[RX]
        return vr.running and vr.enabled and vr.fast is not None

    def pump_rx(self) -> None:
        for _ in range(MAX_ROUNDS):
            if self._rx_backlog is not None:
                return
            n = self.port.recv_batch(self._rxb)
            if n == 0:
                return
            if self.rx_program is not None:
                self._rxb.count = n
                self.rx_program(self._rxb)
                n = self._rxb.count
                if n == 0:
                    continue
            if not self._rx_ready():
                self.rx.drops += n
                continue
            self._deliver(0, n)

    def retry_rx(self) -> None:
        if self._rx_backlog is None:
            return
        if not self._rx_ready():
            return
        s, e = self._rx_backlog
        self._rx_backlog = None
        self._deliver(s, e)
        if self._rx_backlog is None:
            self._watch_port(True)
            self.pump_rx()

    def _deliver(self, start: int, end: int) -> None:
        vr = self.device.vrings[RX]
        b = self._rxb
        try:
            res = vr.fast.deliver(b.data[start:end], b.lens[start:end], end - start)
        except VirtqueueError as e:
            self._rx_fail(str(e), end - start)
            return
        done = start + res.consumed
        self.rx.frames += res.consumed - res.dropped
        self.rx.drops += res.dropped
        self.rx.bytes += int(np.sum(b.lens[start:done], dtype=np.int64))
        if res.notify:
            self.device.signal(RX)
            self.notify.rx_calls += 1
        if res.error is not None:
            self._rx_fail(vr.state.error if vr.state else res.error.name, end - done)
            return
        if done < end:
            self._rx_backlog = (done, end)
            self._watch_port(False)
            # deliver asked for a kick (avail_event) only after it read the avail idx: a driver that
            # added buffers in between checked the old avail_event and sent none, and the frames
            # would wait for the 100 ms tick (ring drops: up to 0.9 M frames in a 2 s run). The
            # avail_event store is fenced before this load (_device_publish). Once per new avail idx,
            # so a ring with too few buffers for the next frame cannot make us spin.
            avail = vr.state.avail_idx(self.device.mem)
            if avail != vr.state.last_avail_idx and avail != self._rx_rechecked:
                self._rx_rechecked = avail
                self.notify.rx_rechecks += 1
                self._wake()

    def _rx_fail(self, error: str, lost: int) -> None:
        self.rx.errors += 1
        self.rx.drops += lost
        self._rx_backlog = None
        self._watch_port(True)
        self.device.ring_failed(RX, error)

    # ------------------------------------------------------------------ guest -> port
    def pump_tx(self) -> None:
        vr = self.device.vrings[TX]
        if not (vr.running and vr.fast is not None):
            return
        b = self._txb
        for _ in range(MAX_ROUNDS):
            if self._tx_left is not None and not self._send_left():
                self._wake()  # the port is still full: come back soon, collect nothing new
                return
            try:
                res = vr.fast.collect(b.data, b.lens)
            except VirtqueueError as e:
                self.device.ring_failed(TX, str(e))
                self.tx.errors += 1
                return
            self.tx.drops += res.dropped
            if res.notify:
                self.device.signal(TX)
                self.notify.tx_calls += 1
            if res.count:
                self._tx_left = (0, res.count)
                self._tx_left_since = time.monotonic()
                self._send_left()
            if res.error is not None:
                self.tx.errors += 1
                self.device.ring_failed(TX, vr.state.error if vr.state else res.error.name)
                return
            if res.count < b.capacity and vr.state.avail_idx(self.device.mem) == vr.state.last_avail_idx:
                if self._tx_left is not None:
                    self._wake()
                return
        self._wake()  # more to do: yield to the other fds first

    def _send_left(self) -> bool:
        """Resend what the port refused; True when nothing is left."""
        s, e = self._tx_left
        b = self._txb
        sent = self.port.send_batch(FrameBatch(b.data[s:e], b.lens[s:e], e - s))
        self.tx.frames += sent
        self.tx.bytes += int(np.sum(b.lens[s:s + sent], dtype=np.int64))
        if s + sent >= e:
            self._tx_left = None
            return True
        self._tx_left = (s + sent, e)
        if time.monotonic() - self._tx_left_since > TX_HOLD_S:
            self.tx.drops += e - s - sent
            self._tx_left = None
            return True
        return False

    # ------------------------------------------------------------------ ctrl
    def pump_ctrl(self) -> None:
        vr = self.device.vrings[CTRL]
        if not vr.running or self.device.mem is None:
            return
        try:
            _n, notify = serve_ctrl(vr.state, self.device.mem, self.ctrl)
        except VirtqueueError as e:
            self.device.ring_failed(CTRL, str(e))
            return
        if notify:
            self.device.signal(CTRL)

    # ------------------------------------------------------------------ control
    def stats(self) -> dict:
        return {"rx": asdict(self.rx), "tx": asdict(self.tx), "ctrl": asdict(self.ctrl.stats),
                "notify": asdict(self.notify),
                "rx_backlog": 0 if self._rx_backlog is None else self._rx_backlog[1] - self._rx_backlog[0],
                "tx_held": 0 if self._tx_left is None else self._tx_left[1] - self._tx_left[0]}

    def close(self) -> None:
        for index in list(self._kicks):
            self.ring_stopped(index)
        self._watch_port(False)
        self.ctrl.wake = lambda: None
        self.loop.remove_reader(self._more)
        os.close(self._more)
        if self.device.listener is self:
            self.device.listener = None
