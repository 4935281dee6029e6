"""``vxdp demo`` (what ``make demo`` ends with) runs the whole offload story and cleans up."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pyroute2 import netns


@pytest.mark.privileged
@pytest.mark.slow
def test_demo_passes_and_leaves_nothing_behind(samples_built):
    proc = subprocess.Popen([sys.executable, "-m", "vxdp.cli.main", "demo", "--frames", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "negotiated: offload yes, ctrl vq yes" in out
    assert "None" not in out and "True" not in out and "False" not in out  # words, not Python's values
    assert "guest reads rxcnt over the ctrl vq: ICMP 8, TCP 16, UDP 24, ICMPv6 8" in out
    assert "frames that crossed the virtio ring to the guest meanwhile: 0" in out
    assert "drop 64" in out and "offloaded prog" in out  # the host's own view (vxdp host show)
    assert "demo passed" in out and "torn down" in out
    # the demo's NetLab names its namespaces vxd-<its pid>-...: none of its own is left (other
    # processes' namespaces, e.g. a second demo running at the same time, are not its business)
    assert [n for n in netns.listnetns() if n.startswith(f"vxd-{proc.pid}-")] == []
