"""The engines the offload service's tests run on: the host kernel (root: bpf(2), netlink) and the
interpreter with a recorded port (no privilege, no syscall of either kind).

``@pytest.mark.parametrize("service", ENGINES, indirect=True)`` runs a test (or the fixtures it
uses, such as a device on ``lo``) once on each; ``offload_service(engine, ...)`` makes one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from vxdp.engine.interp.engine import InterpEngine
from vxdp.host.offload.policy import Policy
from vxdp.host.offload.port import KernelPort, RecordedPort
from vxdp.host.offload.service import OffloadService, default_engine_factory

ENGINES = [pytest.param("kernel", marks=pytest.mark.privileged), "interp"]


def offload_service(engine: str = "kernel", policy: Policy | None = None, *,
                    clock: Callable[[], float] = time.monotonic) -> OffloadService:
    """An `OffloadService` on ``engine``: ``kernel`` (kernel engine, kernel ports) or ``interp``
    (interpreter, recorded ports)."""
    if engine == "kernel":
        return OffloadService(default_engine_factory, policy, clock=clock, port_factory=KernelPort)
    if engine == "interp":
        return OffloadService(lambda _prefix: InterpEngine(), policy, clock=clock, port_factory=RecordedPort)
    raise ValueError(f"no engine {engine!r}")
