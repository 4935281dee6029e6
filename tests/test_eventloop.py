"""The event loop dispatches readable fds, survives a failing handler, and stops on request."""

from __future__ import annotations

import os
import threading
import time

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
