"""Guest-native XDP on an rx batch: verdicts filter the batch, TX frames go back, PASS frames keep edits."""

from __future__ import annotations

from testpaths import SAMPLES_BUILD

from vxdp import packets
from vxdp.bpf.elf import load_object as parse_object
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.loader import load_object
from vxdp.frames import FrameBatch
from vxdp.guest.native import NativeXdp


def _run(obj_name: str, frames: list[bytes], prog: str | None = None):
    loaded = load_object(InterpEngine(), parse_object(str(SAMPLES_BUILD / obj_name)))
    sent: list[list[bytes]] = []
    native = NativeXdp(loaded.engine, loaded.program_handle(prog), lambda b: sent.append(b.frames()) or b.count)
    batch = FrameBatch.allocate(64, 2048)
    batch.fill(frames)
    native(batch)
    return loaded, native, batch, [f for s in sent for f in s]


def test_xdp1_drops_everything_and_counts(samples_built):
    frames = packets.mix(16)
    loaded, native, batch, sent = _run("xdp1.o", frames)
    assert batch.count == 0 and sent == []
    assert native.snapshot() == {"drop": 16}
    counts = {int.from_bytes(k, "little"): int.from_bytes(v, "little") for k, v in loaded.maps["rxcnt"].items()}
    assert {k: v for k, v in counts.items() if v} == dict(packets.mix_protocol_counts(16))


def test_xdp2_sends_frames_back_with_macs_swapped(samples_built):
    frames = packets.mix(8)
    _, native, batch, sent = _run("xdp2.o", frames)
    assert batch.count == 0 and native.snapshot() == {"tx": 8}
    assert sent == [f[6:12] + f[0:6] + f[12:] for f in frames]


def test_pass_keeps_frames_in_order(samples_built):
    # tail_calls passes IPv6 (its slot 1 is empty on purpose); everything it passes stays in order
    frames = [packets.frame("ipv6/udp", payload=bytes([i])) for i in range(5)]
    _, native, batch, sent = _run("corpus/tail_calls.o", frames, "xdp_entry")
    assert native.snapshot().get("pass") == 5 and batch.frames() == frames and sent == []
