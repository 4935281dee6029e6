"""XDP live frames as a generator: frames sent from one netns are counted exactly in the other."""

from __future__ import annotations

import struct

import pytest
from kernel_asm import count_and_return_insns, marked_frame, ret_insns

from vxdp.bpf.isa import XdpAction
from vxdp.bpf.kernel.live_frames import LiveFramesError, send_live_frames, send_live_frames_in
from vxdp.bpf.kernel.maps import KernelMap
from vxdp.bpf.kernel.netns import run_in_netns
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.kernel.xdp import XdpMode, attach_xdp, detach_xdp
from vxdp.bpf.mapspec import MapSpec, MapType

pytestmark = pytest.mark.privileged


def _count(m: KernelMap) -> int:
    return struct.unpack("<Q", m.lookup(bytes(4)))[0]


@pytest.mark.parametrize("n", [1, 64, 1000, 20000])
def test_generated_frames_arrive_exactly(veth_pair_two_ns, n):
    pair = veth_pair_two_ns
    with KernelMap.create(MapSpec("rx_count", MapType.ARRAY, 4, 8, 1)) as counter, \
            KernelProgram.load(count_and_return_insns(counter.fd, XdpAction.DROP), name="rx_count") as rx, \
            KernelProgram.load(ret_insns(XdpAction.TX), name="gen_tx") as gen:
        attach_xdp(pair.b, rx.fd, XdpMode.NATIVE, netns=pair.ns_b)  # gives the peer NAPI, and counts
        try:
            send_live_frames_in(pair.ns_a, gen, marked_frame(64), ifindex=pair.a_index, count=n)
            # the kernel runs all n frames before returning, and the peer's NAPI runs as the
            # generator re-enables bottom halves, so the count is complete now
            assert _count(counter) == n
            send_live_frames_in(pair.ns_a, gen, marked_frame(128), ifindex=pair.a_index, count=n,
                                batch_size=16)
            assert _count(counter) == 2 * n
        finally:
            detach_xdp(pair.b, XdpMode.NATIVE, netns=pair.ns_b)


def test_frames_the_generator_drops_never_arrive(veth_pair_two_ns):
    pair = veth_pair_two_ns
    with KernelMap.create(MapSpec("rx_count", MapType.ARRAY, 4, 8, 1)) as counter, \
            KernelProgram.load(count_and_return_insns(counter.fd, XdpAction.DROP), name="rx_count") as rx, \
            KernelProgram.load(ret_insns(XdpAction.DROP), name="gen_drop") as gen:
        attach_xdp(pair.b, rx.fd, XdpMode.NATIVE, netns=pair.ns_b)
        try:
            send_live_frames_in(pair.ns_a, gen, marked_frame(), ifindex=pair.a_index, count=100)
            assert _count(counter) == 0
        finally:
            detach_xdp(pair.b, XdpMode.NATIVE, netns=pair.ns_b)


def test_pushns_style_call_from_inside_the_netns(veth_pair_two_ns):
    """`send_live_frames` itself runs in the caller's netns; here the caller enters it (on a thread)."""
    pair = veth_pair_two_ns
    with KernelMap.create(MapSpec("rx_count", MapType.ARRAY, 4, 8, 1)) as counter, \
            KernelProgram.load(count_and_return_insns(counter.fd, XdpAction.DROP), name="rx_count") as rx, \
            KernelProgram.load(ret_insns(XdpAction.TX), name="gen_tx") as gen:
        attach_xdp(pair.b, rx.fd, XdpMode.NATIVE, netns=pair.ns_b)
        try:
            run_in_netns(pair.ns_a, send_live_frames, gen, marked_frame(), ifindex=pair.a_index, count=10)
            assert _count(counter) == 10
        finally:
            detach_xdp(pair.b, XdpMode.NATIVE, netns=pair.ns_b)


def test_bad_arguments_are_caught():
    with KernelProgram.load(ret_insns(XdpAction.TX), name="gen_tx") as gen:
        with pytest.raises(LiveFramesError, match="count"):
            send_live_frames(gen, marked_frame(), ifindex=1, count=0)
        with pytest.raises(LiveFramesError, match="Ethernet"):
            send_live_frames(gen, b"\0" * 4, ifindex=1, count=1)
        with pytest.raises(LiveFramesError, match="batch_size"):
            send_live_frames(gen, marked_frame(), ifindex=1, count=1, batch_size=1000)
