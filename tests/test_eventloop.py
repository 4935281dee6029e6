"""The event loop dispatches readable fds, survives a failing handler, and stops on request."""

from __future__ import annotations

import os
import threading
import time

import pytest

from vxdp.eventloop import Loop


def test_process_events_dispatches_and_survives_a_failing_handler():
    loop = Loop()
    seen: list[str] = []
    errors: list[int] = []
    loop.on_error = lambda fd, e: errors.append(fd)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    loop.add_reader(r1, lambda: seen.append("a"))
    loop.add_reader(r2, lambda: 1 / 0)
    loop.process_events([r2, r1, 999])
    assert seen == ["a"] and errors == [r2]
    loop.close()
    for fd in (r1, w1, r2, w2):
        os.close(fd)


def test_get_events_sees_an_eventfd_and_run_stops():
    loop = Loop()
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    hits = []

    def on_kick():
        os.eventfd_read(efd)
        hits.append(1)
        if len(hits) == 3:
            loop.stop()

    loop.add_reader(efd, on_kick)
    assert loop.get_events(0) == []

    def kicker():
        deadline = time.monotonic() + 10
        for i in range(3):
            os.eventfd_write(efd, 1)
            while len(hits) <= i and time.monotonic() < deadline:
                time.sleep(0.01)
        if len(hits) < 3:
            loop.stop()

    t = threading.Thread(target=kicker)
    t.start()
    loop.run(tick=1.0)
    t.join(10)
    assert hits == [1, 1, 1]
    loop.close()
    os.close(efd)


def test_on_tick_runs_once_per_period_however_busy_the_fds():
    """An fd readable on every wait (never drained) wakes the loop each round; the loop's clock,
    stepped 30 ms a round by hand, says when a 100 ms period is over."""
    now = [0.0]
    loop = Loop(clock=lambda: now[0])
    efd = os.eventfd(1, os.EFD_NONBLOCK)
    rounds: list[float] = []
    ticks: list[float] = []

    def busy():
        rounds.append(now[0])
        now[0] += 0.03
        if len(rounds) == 20:
            loop.stop()

    loop.add_reader(efd, busy)
    loop.run(tick=0.1, on_tick=lambda: ticks.append(now[0]))
    assert len(rounds) == 20
    # the first after the first round, then the first round that ends a period: 5 in 20 rounds, not 20
    assert ticks == pytest.approx([0.03, 0.15, 0.27, 0.39, 0.51])
    loop.close()
    os.close(efd)


def test_on_tick_runs_when_no_fd_wakes_the_loop():
    """With nothing readable the wait ends at the next tick (else this would wait for the watchdog)."""
    loop = Loop()
    ticks: list[int] = []

    def on_tick():
        ticks.append(1)
        if len(ticks) == 3:
            loop.stop()

    watchdog = threading.Timer(10, loop.stop)
    watchdog.start()
    try:
        loop.run(tick=0.01, on_tick=on_tick)
    finally:
        watchdog.cancel()
    assert ticks == [1, 1, 1]
    loop.close()


def test_on_tick_without_a_period_is_refused():
    loop = Loop()
    with pytest.raises(ValueError, match="tick period"):
        loop.run(on_tick=lambda: None)
    loop.close()
