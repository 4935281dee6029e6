"""The daemons' event loop: epoll over a handful of fds, waiting kept apart from processing.

Kernel facts this relies on:
- eventfds (vring kick/call), AF_PACKET sockets, taps, unix sockets all report
  readiness through epoll; level-triggered is what we use, so a handler that
  leaves work behind (a batch cap reached) is called again on the next wait
  without any bookkeeping of ours.
- A kick eventfd must be read (drained) by its handler, or it stays readable.
- ``signal.set_wakeup_fd`` turns SIGTERM/SIGINT into a readable fd, so a
  signal ends the wait at once and is handled in the loop, not in a handler
  that runs between two bytecodes of a batch.

`get_events` only waits; `process_events` only dispatches, so a test can feed
it fds by hand. Handlers are plain callables of no arguments; one that raises
is reported by the loop's ``on_error`` and the loop goes on serving the others
(one guest's garbage must not stop another's traffic).

The periodic work (``run``'s ``on_tick``: polls for lost kicks, reconnects,
deadlines) runs once per tick period, whether the fds are busy or idle: a wait
never outlasts the time left to the next tick, and a busy loop that wakes far
more often calls it no more often. Its callers need no throttle of their own.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Handler = Callable[[], None]


class Loop:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # what tick periods are measured with (a test may step it by hand)
        self._sel = selectors.EpollSelector() if hasattr(selectors, "EpollSelector") else selectors.DefaultSelector()
        self._handlers: dict[int, Handler] = {}
        self._stopping = False
        self._wake_r = self._wake_w = -1
        self.on_error: Callable[[int, BaseException], None] = self._log_error

    # -- registration --------------------------------------------------------------------
    def add_reader(self, fd: int, handler: Handler) -> None:
        if fd in self._handlers:
            self._sel.modify(fd, selectors.EVENT_READ)
        else:
            self._sel.register(fd, selectors.EVENT_READ)
        self._handlers[fd] = handler

    def remove_reader(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def readers(self) -> set[int]:
        return set(self._handlers)

    # -- waiting and processing ----------------------------------------------------------
    def get_events(self, timeout: float | None) -> list[int]:
        """The fds readable now, waiting up to ``timeout`` seconds (None: until one is)."""
        try:
            return [key.fd for key, _ in self._sel.select(timeout)]
        except InterruptedError:
            return []

    def process_events(self, fds: list[int]) -> None:
        for fd in fds:
            handler = self._handlers.get(fd)
            if handler is None:
                continue  # removed by an earlier handler of this round
            try:
                handler()
            except Exception as e:  # noqa: BLE001 - keep serving the other fds
                self.on_error(fd, e)

    def run(self, *, tick: float | None = None, on_tick: Handler | None = None) -> None:
        """Serve until `stop()` or SIGTERM/SIGINT. ``on_tick`` runs after the first round of
        events, then once every ``tick`` seconds: never twice within one period however often
        the fds wake the loop, and no later than the first round after a period is over (the
        wait ends then)."""
        if on_tick is not None and not (tick and tick > 0):
            raise ValueError("on_tick needs a tick period (seconds > 0)")
        self._install_signals()
        due = self.clock()
        try:
            while not self._stopping:
                timeout = None if on_tick is None else max(0.0, due - self.clock())
                self.process_events(self.get_events(timeout))
                if on_tick is not None and not self._stopping:
                    now = self.clock()
                    if now >= due:
                        due = now + tick  # type: ignore[operator]
                        on_tick()
        finally:
            self._remove_signals()

    def stop(self) -> None:
        self._stopping = True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    def close(self) -> None:
        self._sel.close()
        self._handlers.clear()

    # -- signals -------------------------------------------------------------------------
    def _install_signals(self) -> None:
        if self._wake_r >= 0:
            return
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.add_reader(self._wake_r, self._drain_wakeup)
        try:
            signal.set_wakeup_fd(self._wake_w)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        except ValueError:  # not the main thread: stop() still wakes us through the pipe
            pass

    def _remove_signals(self) -> None:
        if self._wake_r < 0:
            return
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        self.remove_reader(self._wake_r)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    @staticmethod
    def _log_error(fd: int, e: BaseException) -> None:
        log.error("handler for fd %d failed: %s: %s", fd, type(e).__name__, e)
