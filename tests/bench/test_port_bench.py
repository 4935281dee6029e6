"""`vxdp.bench.port.threaded_napi`: the benchmark's placement of a veth peer's receive work
(its NAPI in a kernel thread pinned to one CPU) is really in force inside the body, and undone."""

from __future__ import annotations

import os
import subprocess

import pytest

from vxdp.bench import port as bench
from vxdp.bpf.isa import XdpAction, verdict_program
from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.kernel.xdp import XdpMode, attach_xdp, detach_xdp

pytestmark = pytest.mark.privileged


def _threaded(ns: str, ifname: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{ifname}/threaded"], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_threaded_napi_pins_the_peer_thread_and_restores():
    cpu = max(os.sched_getaffinity(0))
    with bench._veth_pair() as (_ns_a, ns_b), \
            KernelProgram.load(verdict_program(XdpAction.DROP), name="t_drop") as drop:
        attach_xdp("vbb", drop.fd, XdpMode.NATIVE, netns=ns_b)  # NAPI exists only with XDP (or GRO)
        try:
            before = bench._napi_threads("vbb")
            with bench.threaded_napi(ns_b, "vbb", cpu):
                assert _threaded(ns_b, "vbb") == "1"
                new = bench._napi_threads("vbb") - before
                assert new, "no napi/vbb-* kernel thread appeared"
                assert all(os.sched_getaffinity(pid) == {cpu} for pid in new)
            assert _threaded(ns_b, "vbb") == "0"
        finally:
            detach_xdp("vbb", XdpMode.NATIVE, netns=ns_b)
