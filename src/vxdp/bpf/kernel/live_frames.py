"""A traffic generator with no pktgen: XDP live frames (BPF_PROG_TEST_RUN, BPF_F_TEST_XDP_LIVE_FRAMES).

How it works (kernel ``bpf_test_run_xdp_live``): the kernel builds ``count``
copies of ``frame`` in page-pool pages, ``batch_size`` at a time, runs the
program on each as if it had arrived on ``ingress_ifindex``, and really acts on
the verdict: ``XDP_TX`` transmits the frame out of that device (for a veth:
into its peer), ``XDP_REDIRECT`` follows the redirect, anything else frees it.
The call returns when all ``count`` frames have been run, so a generator that
always answers TX has sent exactly ``count`` frames when it returns — which
makes counting on the receiving side deterministic.

Facts the caller must respect (measured on kernel 6.18):
- ``ctx_in`` is a 24-byte ``struct xdp_md`` whose ``ingress_ifindex`` is
  resolved in the network namespace of the *calling thread*: call from the
  namespace that holds the device (`send_live_frames_in` does it on a thread,
  or use ``pyroute2.netns.pushns/popns`` yourself).
- No ``data_out``/``ctx_out`` (the kernel refuses them), repeat = frames.
- A veth peer drops frames silently unless it has NAPI: an XDP program attached
  to it, or GRO on.
"""

from __future__ import annotations

import struct

from .netns import run_in_netns
from .prog import BPF_F_TEST_XDP_LIVE_FRAMES, KernelProgram, TestRunResult

XDP_MD = struct.Struct("<6I")  # data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
ETH_HLEN = 14
MAX_LIVE_FRAME = 4096 - 256 - 320  # PAGE_SIZE - XDP_PACKET_HEADROOM - skb_shared_info, roughly; the kernel checks exactly
MAX_BATCH = 256  # the kernel's upper bound for batch_size


class LiveFramesError(ValueError):
    """Arguments the kernel would refuse, caught before the syscall with a clearer message."""


def xdp_md(frame_len: int, ifindex: int, rx_queue: int = 0) -> bytes:
    """The 24-byte ``struct xdp_md`` a live-frames run needs: data 0, data_end = len, the ingress device."""
    return XDP_MD.pack(0, frame_len, 0, ifindex, rx_queue, 0)


def send_live_frames(prog: KernelProgram, frame: bytes, *, ifindex: int, count: int,
                     batch_size: int = 64, rx_queue: int = 0) -> TestRunResult:
    """Run ``prog`` on ``count`` live copies of ``frame`` arriving on ``ifindex`` (in the caller's netns).

    With a program that returns XDP_TX, ``count`` frames leave ``ifindex`` before this returns.
    """
    if count <= 0:
        raise LiveFramesError(f"live frames: count must be positive, not {count}")
    if not 0 < batch_size <= MAX_BATCH:
        raise LiveFramesError(f"live frames: batch_size must be in 1..{MAX_BATCH}, not {batch_size}")
    if len(frame) < ETH_HLEN:
        raise LiveFramesError(f"live frames: frame of {len(frame)} bytes is shorter than an Ethernet header")
    if ifindex <= 0:
        raise LiveFramesError(f"live frames: ifindex must be a device index, not {ifindex}")
    return prog.test_run(frame, repeat=count, ctx_in=xdp_md(len(frame), ifindex, rx_queue),
                         flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=batch_size)


def send_live_frames_in(netns: str, prog: KernelProgram, frame: bytes, *, ifindex: int, count: int,
                        batch_size: int = 64, rx_queue: int = 0) -> TestRunResult:
    """`send_live_frames` issued from a thread inside ``netns`` (the namespace that holds ``ifindex``)."""
    return run_in_netns(netns, send_live_frames, prog, frame, ifindex=ifindex, count=count,
                        batch_size=batch_size, rx_queue=rx_queue)
