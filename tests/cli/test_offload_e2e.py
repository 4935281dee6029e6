"""XDP offload end to end, as a user drives it: ``vxdp prog/map … --guest`` through the guest
driver's ctrl vq to ``vxdp host serve``, which loads into the host kernel and attaches to its port.

Real parts only: namespaces, a veth, bpf(2), both daemons and the CLI as subprocesses. Frames
are injected and captured exactly with a `Port` on the traffic veth end.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest
from offload_topology import DEVICE, GUEST, GUEST_IP, HOST_MAC, TRAFFIC_IP, OffloadTopo, offload_topology, poll
from testpaths import SAMPLES_BUILD

from vxdp import packets
from vxdp.frames import FrameBatch
from vxdp.netdev import Port

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

XDP1 = str(SAMPLES_BUILD / "xdp1.o")
XDP2 = str(SAMPLES_BUILD / "xdp2.o")
XDP_PASS = str(SAMPLES_BUILD / "xdp_pass.o")
TAIL_CALLS = str(SAMPLES_BUILD / "corpus" / "tail_calls.o")
TRAFFIC_MAC_FALLBACK = "02:00:00:00:00:01"


@pytest.fixture
def topo(tmp_path, samples_built):
    yield from offload_topology(tmp_path)


# -- helpers -------------------------------------------------------------------------------------

def retarget(frames: list[bytes], dst_mac: str) -> list[bytes]:
    """The frames with ``dst_mac`` as Ethernet destination (so the guest's tap would take them)."""
    dst = bytes.fromhex(dst_mac.replace(":", ""))
    return [dst + f[6:] for f in frames]


def send(topo: OffloadTopo, frames: list[bytes]) -> None:
    port = Port("vxt0", netns=topo.traffic)
    try:
        batch = FrameBatch.allocate(capacity=len(frames))
        batch.fill(frames)
        assert port.send_batch(batch) == len(frames)
    finally:
        port.close()


def counters(doc: dict) -> dict[int, int]:
    """Non-zero entries of a ``map dump -j`` document of an ARRAY of u64 (summed over CPUs if per-CPU)."""
    out = {}
    for e in doc["entries"]:
        if "values" in e:
            value = sum(int.from_bytes(bytes.fromhex(v["value"]), "little") for v in e["values"])
        else:
            value = int.from_bytes(bytes.fromhex(e["value"]), "little")
        if value:
            out[int.from_bytes(bytes.fromhex(e["key"]), "little")] = value
    return out


def map_counts(topo: OffloadTopo, name: str, *target: str) -> dict[int, int]:
    return counters(topo.ok("map", "dump", name, *target))


def device_offload(topo: OffloadTopo) -> dict:
    (dev,) = [d for d in topo.ok("host", "show") if d.get("name") == DEVICE]
    return dev["offload"]["device"]


def kernel_names(topo: OffloadTopo, what: str) -> list[str]:
    out = subprocess.run(["bpftool", "-j", what, "show"], check=True, capture_output=True, text=True).stdout
    return [o.get("name", "") for o in json.loads(out or "[]")]


def started(topo: OffloadTopo, *host_extra: str):
    """Backend and driver up, connected; returns both (the caller's ``with`` stops them)."""
    host = topo.host(*host_extra)
    try:
        g = topo.guest_proc()
    except BaseException:
        host.stop()
        raise
    return host, g


# -- 1. xdp1 offloaded ----------------------------------------------------------------------------

def test_xdp1_offloaded_counts_and_drops_before_the_guest(topo):
    host, g = started(topo)
    with host, g:
        doc = g.wait_connected()
        frames = retarget(packets.mix(240), HOST_MAC)
        want = dict(packets.mix_protocol_counts(240))
        loaded = topo.ok("prog", "load", XDP1, "--offload", "--guest", GUEST)
        assert [p["name"] for p in loaded["programs"]] == ["xdp_prog1"]
        assert map_counts(topo, "rxcnt", "--guest", GUEST) == {}
        rx_before = g.show()["counters"]["rx_frames"]
        tap_before = topo.link_stat(topo.guest, "vxg0", "rx_packets")

        send(topo, frames)
        got = poll(lambda: map_counts(topo, "rxcnt", "--guest", GUEST), lambda c: c == want, timeout=20,
                   what="xdp1's counters read back through the ctrl vq")
        assert got == want
        # the host kernel dropped them: nothing crossed the virtio ring, nothing reached the tap
        assert g.show()["counters"]["rx_frames"] == rx_before
        assert topo.link_stat(topo.guest, "vxg0", "rx_packets") == tap_before

        dev = device_offload(topo)
        (prog,) = dev["programs"]
        assert prog["attached"]["ifname"] == "vxp0"
        assert prog["actions"].get("drop") == len(frames), prog["actions"]
        assert prog["kernel_name"].startswith(DEVICE)
        assert prog["kernel_name"] in kernel_names(topo, "prog")
        assert doc["connected"]


# -- 2. xdp2 offloaded -----------------------------------------------------------------------------

def test_xdp2_offloaded_sends_frames_back_with_macs_swapped(topo):
    # A veth end takes the XDP_TX frames of its peer only in NAPI mode. Measured on 6.18: `ethtool -K
    # vxt0 gro on` is not enough (the frames vanish, no counter says so); a native XDP program is.
    topo.sh(topo.traffic, "ip", "link", "set", "dev", "vxt0", "xdpdrv", "obj", XDP_PASS, "sec", "xdp")
    topo.sh(topo.traffic, "ethtool", "-K", "vxt0", "rxvlan", "off")  # the capture sees the tag in the frame
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        topo.ok("prog", "load", XDP2, "--offload", "--guest", GUEST)
        frames = retarget([packets.frame(k, sport=2000 + i) for i, k in
                           enumerate(["ipv4/udp", "ipv4/tcp", "ipv4/icmp", "vlan/ipv4/udp"] * 4)], HOST_MAC)
        port = Port("vxt0", netns=topo.traffic)
        try:
            batch = FrameBatch.allocate(capacity=len(frames))
            batch.fill(frames)
            assert port.send_batch(batch) == len(frames)
            back: list[bytes] = []
            rx = FrameBatch.allocate(capacity=256)
            deadline = time.monotonic() + 20
            while len(back) < len(frames) and time.monotonic() < deadline:
                port.recv_batch(rx)
                back += [f for f in rx.frames() if f[:6] == frames[0][6:12]]
                time.sleep(0.05)
        finally:
            port.close()
        swapped = [f[6:12] + f[:6] + f[12:] for f in frames]
        assert sorted(back) == sorted(swapped)
        assert map_counts(topo, "rxcnt", "--guest", GUEST) == {17: 8, 6: 4, 1: 4}
        (prog,) = device_offload(topo)["programs"]
        assert prog["actions"].get("tx") == len(frames), prog["actions"]
