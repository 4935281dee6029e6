"""The guest's pumps between its rings and a port (a ``netdev.Tap``): one compiled call per batch.

Never a Python loop per frame:

- port readable → ``read_batch`` (at most as many frames as the tx ring has free
  buffers: backpressure instead of drops) → ``DriverRing.post_tx`` → kick the tx vring
  only when the ring says the device wants one (EVENT_IDX / NO_NOTIFY). With the tx
  ring full the port is not watched until a completion frees buffers.
- rx call eventfd readable → drain it → ``reap_rx`` → ``rx_program`` (the hook where a
  guest-native XDP program runs, `vxdp.engine.xdp_hook`) → ``rx_sink`` (the port's
  ``write_batch``) → ``refill`` → kick if needed.
- tx call eventfd → ``reap_tx`` (and watch the port again if it was paused).

Each wake-up does at most ``MAX_ROUNDS`` batches, so one busy direction cannot starve the
other or the control sockets: rx then signals its own call eventfd to come back, the port
stays readable by itself.

Notification races: after the last reap we have asked for the next interrupt, but a
device can publish between our read of the used index and our store of used_event.
`poll_rx` re-checks the used index after refilling (see `_rx_pending`), and `poll`
(called periodically) reaps both rings, so a notification lost anyway costs at most one
period.

A ring the device broke (``VirtqueueError``) is reported through ``on_broken``: the
whole session must go, which is not this module's to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from vxdp.eventloop import Loop
from vxdp.frames import FrameBatch
from vxdp.virtio.virtqueue import VirtqueueError

from .rings import RX, TX, GuestRings

MAX_ROUNDS = 8  # batches per event before yielding to the other fds
BATCH = 256


@dataclass
class DatapathCounters:
    rx_frames: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0  # bad frames from the device, or the port refusing them
    tx_frames: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0  # frames too big for a tx buffer
    tx_kicks: int = 0
    rx_kicks: int = 0


class GuestDatapath:
    """Frames between one session's rings (`start` .. `stop`) and the port given to `attach`."""

    def __init__(self, buf_size: int, on_broken: Callable[[str], None]) -> None:
        self.buf_size = buf_size
        self.on_broken = on_broken
        self.counters = DatapathCounters()
        self.rx_program: Callable[[FrameBatch], None] | None = None  # guest-native XDP (`XdpHook`)
        # where received frames go (returns how many it took): the port's write_batch, or None (counted only)
        self.rx_sink: Callable[[FrameBatch], int] | None = None
        self.loop: Loop | None = None
        self.port = None  # a Tap (read_batch/write_batch/fileno), or None: frames are counted and dropped
        self.rings: GuestRings | None = None
        self._rxb = FrameBatch.allocate(BATCH, buf_size)
        self._txb = FrameBatch.allocate(BATCH, buf_size)
        self._port_paused = False

    def attach(self, loop: Loop, port=None) -> None:
        self.loop, self.port = loop, port
        self.rx_sink = port.write_batch if port is not None else None
        if self.rings is not None:
            self._watch()

    def start(self, rings: GuestRings) -> None:
        """A session's rings are up: tell the device (it may wait for a kick to see the full rx ring)."""
        self.rings = rings
        self._port_paused = False
        for index in (RX, TX):
            rings.kick(index)
        if self.loop is not None:
            self._watch()

    def stop(self) -> None:
        """The session is going: stop watching its fds (before they are closed)."""
        rings, self.rings = self.rings, None
        if rings is None or self.loop is None:
            return
        self.loop.remove_reader(rings.fds[RX].call)
        self.loop.remove_reader(rings.fds[TX].call)
        if self.port is not None:
            self.loop.remove_reader(self.port.fileno())

    def _watch(self) -> None:
        loop, rings = self.loop, self.rings
        loop.add_reader(rings.fds[RX].call, self._on_rx_call)
        loop.add_reader(rings.fds[TX].call, self._on_tx_call)
        if self.port is not None:
            loop.add_reader(self.port.fileno(), self._on_port)

    # -- event handlers -----------------------------------------------------------------------
    def _on_rx_call(self) -> None:
        self.rings.drain_call(RX)
        self._guarded(self.poll_rx)

    def _on_tx_call(self) -> None:
        self.rings.drain_call(TX)
        self._guarded(self.reap_tx)

    def _on_port(self) -> None:
        self._guarded(self._port_to_device)

    def _guarded(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except VirtqueueError as e:
            self.on_broken(f"device broke a ring: {e}")

    def poll(self) -> None:
        """Both rings, whatever their notifications said (lost ones)."""
        self._guarded(self.poll_rx)
        if self.rings is not None:
            self._guarded(self.reap_tx)

    # -- device → port ------------------------------------------------------------------------
    def poll_rx(self) -> int:
        """Reap received frames (bounded rounds), run ``rx_program``, hand them to ``rx_sink``, refill."""
        rings, b, c, sink = self.rings, self._rxb, self.counters, self.rx_sink
        total = 0
        for _ in range(MAX_ROUNDS):
            n, bad = rings.rx.reap_rx(b.data, b.lens)
            c.rx_dropped += bad
            b.count = n
            if n:
                c.rx_frames += n
                c.rx_bytes += int(b.lens[:n].sum())
                total += n
                if self.rx_program is not None:
                    self.rx_program(b)
                if sink is not None and b.count:
                    c.rx_dropped += b.count - sink(b)
            posted, kick = rings.rx.refill()
            if kick:
                rings.kick(RX)
                c.rx_kicks += 1
            if n < b.capacity and not (posted and self._rx_pending()):
                return total
        os.eventfd_write(rings.fds[RX].call, 1)  # more may be waiting: come back after the other fds
        return total

    def _rx_pending(self) -> bool:
        """Did the device publish more while we reaped? (re-check after asking for the next interrupt)

        ``reap_rx`` stores used_event = the index it stopped at; a device that published past it
        before that store was visible saw the old used_event and sent no interrupt, and never will
        for these entries. A device that fills the ring in microseconds (testpmd) hits that window
        nearly every time, leaving us to the 100 ms tick (~6 kpps measured). ``refill`` publishing
        buffers runs a full fence after that store, so this read of the used index is ordered
        after it (the virtio spec's "enable notifications, then re-check").
        """
        dq = self.rings.queues[RX]
        return int.from_bytes(self.rings.mem.read(dq.used_gpa + 2, 2), "little") != dq.last_used_idx

    # -- port → device ------------------------------------------------------------------------
    def reap_tx(self) -> None:
        """Take back the buffers the device has sent; watch the port again if a full ring paused it."""
        rings = self.rings
        rings.tx.reap_tx()
        if self._port_paused and rings.queues[TX].nfree > 0 and self.loop is not None:
            self._port_paused = False
            self.loop.add_reader(self.port.fileno(), self._on_port)

    def send(self, batch: FrameBatch) -> int:
        """Post ``batch``'s frames on the tx vring (kicking if needed); returns how many were taken."""
        self.rings.tx.reap_tx()
        return self.post(batch.data, batch.lens, batch.count)

    def max_frame(self) -> int:
        """The longest frame a tx buffer takes (a buffer holds the net header too)."""
        return self.rings.buf_size - self.rings.hdr_len

    def post(self, data, lens, n: int) -> int:
        """Post the first ``n`` frames of ``data``/``lens`` as far as the ring has room (counted, kicked
        if the device wants it); returns how many were consumed (too big ones count as dropped)."""
        rings, c = self.rings, self.counters
        consumed, posted, kick = rings.tx.post_tx(data, lens, n)
        if kick:
            rings.kick(TX)
            c.tx_kicks += 1
        c.tx_frames += posted
        sent = lens[:consumed]
        c.tx_bytes += int(sent.sum()) if posted == consumed else int(sent[sent <= self.max_frame()].sum())
        c.tx_dropped += consumed - posted
        return consumed

    def _port_to_device(self) -> None:
        rings, b = self.rings, self._txb
        for _ in range(MAX_ROUNDS):
            rings.tx.reap_tx()
            free = rings.queues[TX].nfree
            if free == 0:
                if self.loop is not None:  # wait for tx completions instead of spinning on the port
                    self._port_paused = True
                    self.loop.remove_reader(self.port.fileno())
                return
            k = min(free, b.capacity)
            sub = FrameBatch(b.data[:k], b.lens[:k])
            n = self.port.read_batch(sub)
            if n == 0:
                return
            self.post(sub.data, sub.lens, n)
            if n < k:
                return
