"""Run a function inside a named network namespace, on a thread of its own.

Why a thread: ``setns(2)`` changes the namespace of the calling *thread* only.
Doing it on a short-lived thread leaves the rest of the process (pytest, the
daemon's event loop) where it was, with no ``popns`` to forget on an error
path; the namespace change dies with the thread. BPF objects are not per
namespace, so fds opened anywhere work there; what *is* per namespace is
ifindex resolution, which is why live-frame test runs (whose ``xdp_md`` names
an ingress ifindex) must be issued from the namespace that holds the device.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def setns_current_thread(name_or_path: str) -> None:
    """Move the calling thread into the network namespace ``name`` (under /run/netns) or at a path."""
    path = name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path!r}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(netns: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call ``fn(*args, **kwargs)`` on a new thread inside ``netns``; return its result or re-raise its error."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            setns_current_thread(netns)
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 -- handed back to the caller's thread, re-raised there
            box["error"] = e

    t = threading.Thread(target=body, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
