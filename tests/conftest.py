"""Fixtures shared by the whole suite: where the sample objects are, bpffs mounted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from testpaths import sample_objects


@pytest.fixture(scope="session")
def samples_built() -> list[Path]:
    objs = sample_objects()
    if not objs:
        pytest.fail("no sample objects under samples/build: run `make samples` (make test does)")
    return objs


@pytest.fixture(scope="session", autouse=True)
def bpffs() -> None:
    """Mount bpffs at /sys/fs/bpf when we are root and it is missing (a new machine has none)."""
    if os.geteuid() == 0 and subprocess.run(["mountpoint", "-q", "/sys/fs/bpf"], check=False).returncode != 0:
        subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=False)


@pytest.fixture
def service(request):
    """An `OffloadService`, closed (every device's objects freed) after the test: on the kernel engine,
    or on the one a test asks for with ``parametrize("service", offload_engines.ENGINES, indirect=True)``."""
    from offload_engines import offload_service

    s = offload_service(getattr(request, "param", "kernel"))
    try:
        yield s
    finally:
        s.close()
