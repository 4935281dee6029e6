"""The warm-ups type every kernel exactly as the datapath calls it (`vxdp.jitcache`).

After the port, tap and ring warm-ups have run, a real `Port` on a veth, a real `Tap` and
both ring halves moving real frames must add no typed version to any kernel: one that
did would be compiled (or loaded) in the middle of serving, the stall the warm-ups exist
to avoid. Counting signatures, not compiles, keeps this true whatever the disk cache holds.
"""

from __future__ import annotations

import pytest

from vxdp import jitcache, packets
from vxdp.frames import FrameBatch
from vxdp.netdev import warmup as netdev_warmup
from vxdp.netdev.port import Port
from vxdp.netdev.tap import Tap
from vxdp.testing.netns import NetLab
from vxdp.testing.proc import poll
from vxdp.virtio import warmup as virtio_warmup
from vxdp.virtio.fastring import bench_loopback

pytestmark = pytest.mark.privileged


def test_after_the_warmups_the_real_datapath_adds_no_kernel_version():
    jitcache.run([virtio_warmup.device, virtio_warmup.driver, netdev_warmup.port, netdev_warmup.tap])
    before = jitcache.signatures()
    assert any(before.values()), "the warm-ups typed no kernel"
    frames = packets.mix(16)
    with NetLab("vxw") as lab:
        a, b = lab.netns(ipv6=False), lab.netns(ipv6=False)
        lab.veth(a, b, "vxw0", "vxw1")
        with Port("vxw0", netns=a) as pa, Port("vxw1", netns=b) as pb:
            for gro in (False, True):
                pa.gro = gro
                batch = FrameBatch.allocate(64)
                batch.fill(frames)
                assert pa.send_batch(batch) == len(frames)
                got = FrameBatch.allocate(64)
                poll(lambda got=got: pb.recv_batch(got), lambda n: n > 0, timeout=10, what="frames at the peer port")
        for gro in (False, True):
            with Tap("vxwt0", netns=a, gro=gro) as tap:
                batch = FrameBatch.allocate(8)
                tap.read_batch(batch)
                batch.fill(frames[:2])
                tap.write_batch(batch)
    assert bench_loopback(frames=64, num=64, batch=8) > 0  # both ring halves, real frames through memory
    after = jitcache.signatures()
    grew = {k: after[k] - before.get(k, set()) for k in after if after[k] - before.get(k, set())}
    assert grew == {}, f"compiled loops typed again after the warm-ups: {grew}"
