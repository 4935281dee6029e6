"""The interpreter against the oracle: every sample program, the same packets, the same answers.

For each program of each compiled sample object, hypothesis draws at least
1,000 frames; each frame runs once in the host kernel (BPF_PROG_TEST_RUN on the
object loaded through our own loader and the kernel's verifier) and once in
the interpreter, on engines that have seen the same frames before it. After
every frame the action, the packet that came out and the contents of every map
must be equal. Maps named ``nondet_*`` hold ktime/prandom values by the
corpus's convention and are compared by key only. The test pins itself to
CPU 0 so that per-CPU maps are written in the same slot on both sides.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from packet_strategies import frames
from testpaths import sample_objects

from vxdp.bpf.elf import load_object as parse_object
from vxdp.bpf.mapspec import MapType
from vxdp.engine.interp import InterpEngine
from vxdp.engine.kernel import KernelEngine
from vxdp.engine.loader import LoadedObject, load_object

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

EXAMPLES = int(os.environ.get("VXDP_DIFF_EXAMPLES", "1000"))


def _cases() -> list:
    cases = [
        pytest.param(path, name, id=f"{path.stem}:{name}")
        for path in sample_objects()
        for name in parse_object(str(path)).programs
    ]
    return cases or [pytest.param(None, None, id="no-samples-built")]


@pytest.fixture(scope="module")
def on_cpu0():
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    yield
    os.sched_setaffinity(0, before)


_pairs: dict[str, tuple[LoadedObject, LoadedObject]] = {}

U32 = struct.Struct("<I")


def _fill_tail_chain(loaded: LoadedObject) -> None:
    """tail_chain's legacy prog_array has no .values: user space fills it (samples/README.md)."""
    for slot, name in {0: "l4_tcp", 1: "l4_udp", 2: "l4_icmp", 3: "finish_tx"}.items():
        loaded.maps["progs"].update(U32.pack(slot), U32.pack(loaded.programs[name]))


def _fill_blocklist(loaded: LoadedObject) -> None:
    """hash_maps drops sources on its blocklist; list addresses the strategies draw often."""
    for addr in ("0.0.0.0", "255.255.255.255", "198.18.0.1"):
        loaded.maps["blocklist"].update(socket.inet_aton(addr), U32.pack(0))


# What user space does to an object before traffic, as samples/README.md says.
SETUP = {"tail_chain": _fill_tail_chain, "hash_maps": _fill_blocklist}


@pytest.fixture(scope="module")
def engines(on_cpu0):
    """One kernel and one interpreter load per object, shared by that object's programs."""

    def get(path) -> tuple[LoadedObject, LoadedObject]:
        key = str(path)
        if key not in _pairs:
            obj = parse_object(key)
            kernel = load_object(KernelEngine(), obj)
            interp_engine = InterpEngine()
            interp_engine.cpu = 0
            interp = load_object(interp_engine, obj)
            for loaded in (kernel, interp):
                SETUP.get(path.stem, lambda _: None)(loaded)
            _pairs[key] = (kernel, interp)
        return _pairs[key]

    yield get
    for kernel, interp in _pairs.values():
        kernel.close()
        interp.close()
    _pairs.clear()


def _prog_names_by_value(loaded: LoadedObject) -> dict[int, str]:
    """What a prog_array's user-space value means on this engine: a program's id."""
    if isinstance(loaded.engine, KernelEngine):
        return {loaded.engine.program(h).info().id: name for name, h in loaded.programs.items()}
    return {h: name for name, h in loaded.programs.items()}


def map_state(loaded: LoadedObject) -> dict[str, object]:
    state: dict[str, object] = {}
    for name, m in loaded.maps.items():
        items = dict(m.items())
        if name.startswith("nondet_"):
            state[name] = sorted(items)
        elif m.spec.type is MapType.PROG_ARRAY:
            names = _prog_names_by_value(loaded)
            state[name] = {k: names.get(int.from_bytes(v, "little"), v) for k, v in items.items()}
        else:
            state[name] = items
    return state


@pytest.mark.parametrize(("path", "prog"), _cases())
def test_interpreter_matches_kernel(engines, path, prog):
    assert path is not None, "no sample objects under samples/build: run `make samples`"
    kernel, interp = engines(path)
    seen = {"n": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(frame=frames())
    def check(frame: bytes) -> None:
        seen["n"] += 1
        want = kernel.run(frame, prog=prog)
        got = interp.run(frame, prog=prog)
        fault = getattr(interp.engine, "last_fault", None)
        assert got.action == want.action, f"action differs on {frame.hex()} (interp fault: {fault})"
        assert got.packet == want.packet, f"output packet differs on {frame.hex()}"
        assert map_state(interp) == map_state(kernel), f"maps differ after {frame.hex()}"

    check()
    assert seen["n"] >= min(EXAMPLES, 1000)
