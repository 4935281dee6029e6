"""``vxdp demo`` (what ``make demo`` ends with) runs the whole offload story and cleans up."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pyroute2 import netns


@pytest.mark.privileged
@pytest.mark.slow
def test_demo_passes_and_leaves_nothing_behind(samples_built):
    def demo_netns() -> set[str]:  # the demo's NetLab names its namespaces vxd-<pid>-...
        return {n for n in netns.listnetns() if n.startswith("vxd-")}

    before = demo_netns()
    r = subprocess.run([sys.executable, "-m", "vxdp.cli.main", "demo", "--frames", "64"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "negotiated: offload yes" in out
    assert "guest reads rxcnt over the ctrl vq: ICMP 8, TCP 16, UDP 24, ICMPv6 8" in out
    assert "frames that crossed the virtio ring to the guest meanwhile: 0" in out
    assert "drop 64" in out and "offloaded prog" in out  # the host's own view (vxdp host show)
    assert "demo passed" in out and "torn down" in out
    assert demo_netns() == before
