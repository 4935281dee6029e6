"""An XDP program on an rx batch (guest-native XDP, the host's in-process offload): verdicts filter the
batch, TX frames go back, PASS frames keep edits, the rest is counted."""

from __future__ import annotations

import pytest
from testpaths import SAMPLES_BUILD

from vxdp import packets
from vxdp.bpf.elf import load_object as parse_object
from vxdp.engine import IN_PROCESS, make_engine
from vxdp.engine.loader import load_object
from vxdp.engine.xdp_hook import XdpHook
from vxdp.frames import FrameBatch

pytestmark = pytest.mark.parametrize("engine", IN_PROCESS)


def _run(obj_name: str, frames: list[bytes], prog: str | None = None, engine: str = "interp"):
    loaded = load_object(make_engine(engine), parse_object(str(SAMPLES_BUILD / obj_name)))
    sent: list[list[bytes]] = []
    native = XdpHook(loaded.engine, loaded.program_handle(prog), lambda b: sent.append(b.frames()) or b.count)
    batch = FrameBatch.allocate(64, 2048)
    batch.fill(frames)
    native(batch)
    return loaded, native, batch, [f for s in sent for f in s]


def test_xdp1_drops_everything_and_counts(samples_built, engine):
    frames = packets.mix(16)
    loaded, native, batch, sent = _run("xdp1.o", frames, engine=engine)
    assert batch.count == 0 and sent == []
    assert native.snapshot() == {"drop": 16}
    counts = {int.from_bytes(k, "little"): int.from_bytes(v, "little") for k, v in loaded.maps["rxcnt"].items()}
    assert {k: v for k, v in counts.items() if v} == dict(packets.mix_protocol_counts(16))


def test_xdp2_sends_frames_back_with_macs_swapped(samples_built, engine):
    frames = packets.mix(8)
    _, native, batch, sent = _run("xdp2.o", frames, engine=engine)
    assert batch.count == 0 and native.snapshot() == {"tx": 8}
    assert sent == [f[6:12] + f[0:6] + f[12:] for f in frames]


def test_pass_keeps_frames_in_order(samples_built, engine):
    # tail_calls passes IPv6 (its slot 1 is empty on purpose); everything it passes stays in order
    frames = [packets.frame("ipv6/udp", payload=bytes([i])) for i in range(5)]
    _, native, batch, sent = _run("corpus/tail_calls.o", frames, "xdp_entry", engine)
    assert native.snapshot().get("pass") == 5 and batch.frames() == frames and sent == []


def test_a_frame_grown_past_its_slot_is_aborted_and_the_others_go_on(samples_built, engine):
    # adjust.c grows IPv6 frames by 16 bytes (TX) and shrinks long non-IP ones to 60 (PASS): in slots of
    # exactly the frames' size the grown ones cannot fit
    v6 = packets.frame("ipv6/udp", payload=bytes(40))
    other = bytes(6) + bytes(6) + b"\x88\xb5" + bytes(len(v6) - 14)  # a local-experimental EtherType
    loaded = load_object(make_engine(engine), parse_object(str(SAMPLES_BUILD / "corpus/adjust.o")))
    sent: list[bytes] = []
    hook = XdpHook(loaded.engine, loaded.program_handle(None), lambda b: sent.extend(b.frames()) or b.count)
    batch = FrameBatch.allocate(4, len(v6))
    batch.fill([v6, other, v6])
    hook(batch)
    assert hook.snapshot() == {"aborted": 2, "pass": 1} and sent == []
    assert batch.frames() == [other[:60]]


def test_no_program_leaves_the_batch_alone(engine):
    hook = XdpHook(make_engine(engine), None, lambda b: 0)
    batch = FrameBatch.allocate(2)
    batch.fill([b"\x01" * 60, b"\x02" * 60])
    hook(batch)
    assert batch.count == 2 and hook.snapshot() == {}
