"""A first run, as on a fresh clone: both daemons start from an empty compiled-code cache.

What broke the first ``make demo``: the daemons said they were ready, then compiled their numba
datapath loops on the first frame, so the first pings were lost and the first ctrl command timed out.
Here numba's cache is an empty folder; the daemons must compile before they answer (the harness
waits for their control sockets), and then serve the demo's first ping and first offload command
with the normal timeouts, compiling nothing more while they serve.
"""

from __future__ import annotations

import pytest
from offload_topology import GUEST_IP, HOST_MAC, offload_topology, ping
from testpaths import SAMPLES_BUILD

from vxdp.testing.daemon import GuestDaemon, HostDaemon

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture
def topo(tmp_path, samples_built):
    yield from offload_topology(tmp_path, prefix="vxc")


def test_daemons_from_an_empty_cache_compile_before_they_serve(topo, tmp_path):
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    env = {"NUMBA_CACHE_DIR": str(cache)}
    with HostDaemon(topo.sock, "vxp0", topo.hostns, topo.run_dir, name="cold0", mac=HOST_MAC, extra=("-v",),
                    env=env) as host, \
         GuestDaemon(topo.sock, topo.guest, "vxg0", topo.run_dir, name="coldg", addr=f"{GUEST_IP}/24",
                     extra=("-v",), env=env) as guest:
        guest.wait_connected()
        # the demo's first ping: three echo requests, a second each
        replies = ping(topo.traffic, GUEST_IP, count=3, timeout=1.0)
        # the demo's first offload command, with the driver's normal ctrl timeout
        doc = guest.call("prog.load", path=str(SAMPLES_BUILD / "xdp1.o"), mode="offload", prog=None)
        host_log, guest_log = host.output(100_000), guest.output(100_000)
    assert replies >= 1, f"0/3 replies to the first ping\n{host_log}\n{guest_log}"
    assert [p["name"] for p in doc["programs"] if p["attached"]] == ["xdp_prog1"]
    # both compiled from the empty cache, before they made a socket or a tap ...
    assert "functions compiled" in host_log and "functions compiled" in guest_log, host_log + guest_log
    assert host_log.index("functions compiled") < host_log.index("serving virtio-net"), host_log
    assert list(cache.rglob("*.nbi")), "nothing was written to NUMBA_CACHE_DIR"
    # ... and nothing after: a kernel compiled while serving means the warm-up missed its types
    assert "while serving" not in host_log + guest_log, host_log + guest_log
