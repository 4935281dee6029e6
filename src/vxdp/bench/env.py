"""The context a benchmark figure is never quoted without: kernel, CPU, Python, time."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, object]:
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# the tools a figure depends on, and the flag that makes each say its version
TOOLS = {"ip": "-V", "iperf3": "--version", "sockperf": "--version", "clang": "--version"}
PACKAGES = ("vxdp", "numba", "llvmlite", "numpy")


def versions() -> dict[str, str | None]:
    """Our Python packages' versions and each tool's own first line (None: not installed)."""
    out: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    for tool, flag in TOOLS.items():
        if shutil.which(tool) is None:
            out[tool] = None
            continue
        try:
            r = subprocess.run([tool, flag], check=False, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            out[tool] = None
            continue
        lines = (r.stdout or r.stderr).strip().splitlines()
        out[tool] = lines[0].strip() if lines else None
    return out
