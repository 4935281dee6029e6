"""The interpreter and the JIT against the oracle: every sample program, the same packets, the same answers.

For each program of each compiled sample object, and of one program of our own
(``ctx_fields``, compiled here, that reads every ``xdp_md`` field a test run may
set), hypothesis draws at least `FLOOR` (1,000) frames, each with a context; each
frame runs once in the host kernel (BPF_PROG_TEST_RUN on the object loaded through
our own loader and the kernel's verifier), once in the interpreter and once as the
JIT's native code, on engines that have seen the same frames before it. After every frame the action, the packet
that came out and the contents of every map must be equal. Maps named ``nondet_*``
hold ktime/prandom values by the corpus's convention and are compared by key only.
The test pins itself to CPU 0 so that per-CPU maps are written in the same slot on
every side.

The context (`XdpMd`, BPF_PROG_TEST_RUN's ctx_in) is drawn from what the kernel
accepts: ``ingress_ifindex`` 0 (the default device) or a real device of a
namespace made for the test (its loopback, or a veth with several rx queues, the
kernel resolving the index in the calling thread's namespace, so the kernel side
runs on a thread inside it), an ``rx_queue_index`` that device has, and 0 to 216
bytes of metadata in steps of 4 (ctx_in's ``data``; the kernel refuses more). What the kernel refuses
whatever its devices (a non-zero ``egress_ifindex``, a queue without a device,
metadata of another size) our engines must refuse: `test_contexts_the_kernel_refuses`.

The number of examples: ``VXDP_DIFF_EXAMPLES`` may raise it. Below the floor the
test refuses to run (it fails, saying so) unless ``VXDP_DIFF_BELOW_FLOOR=1`` is
also set, and then it warns in the report that it checked fewer than the floor:
a quick local run can never pass for the differential test without saying so.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import socket
import struct
import subprocess
import warnings
from pathlib import Path

import pytest
from bpf.bpf_cc import compile_bpf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packet_strategies import frames
from testpaths import sample_objects

from vxdp.bpf.elf import load_object as parse_object
from vxdp.bpf.kernel.netns import setns_current_thread
from vxdp.bpf.kernel.syscall import BpfError
from vxdp.bpf.mapspec import MapType
from vxdp.engine.base import XdpMd
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.interp.xdp import META_CTX_MAX, XdpContextError
from vxdp.engine.jit.engine import JitEngine
from vxdp.engine.kernel import KernelEngine
from vxdp.engine.loader import LoadedObject, load_object
from vxdp.testing.netns import NetLab

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

FLOOR = 1000
EXAMPLES = int(os.environ.get("VXDP_DIFF_EXAMPLES", str(FLOOR)))
BELOW_FLOOR = os.environ.get("VXDP_DIFF_BELOW_FLOOR") == "1"

# Reads every xdp_md field a test run may set, stores them in a map and returns a mix of them; the
# first metadata word reaches the packet, so the metadata's place and contents are compared too.
CTX_FIELDS = r"""
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __u64);
} seen SEC(".maps");

static __always_inline void put(__u32 k, __u64 x)
{
    __u64 *v = bpf_map_lookup_elem(&seen, &k);
    if (v)
        *v = x;
}

SEC("xdp") int ctx_fields(struct xdp_md *ctx)
{
    void *meta = (void *)(long)ctx->data_meta, *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u64 ifindex = ctx->ingress_ifindex, rxq = ctx->rx_queue_index, metalen = data - meta;

    put(0, ifindex);
    put(1, rxq);
    put(2, metalen);
    if (meta + 4 <= data && data + 4 <= end)
        *(__u32 *)data ^= *(__u32 *)meta;
    return (ifindex * 3 + rxq + metalen / 4) & 3;
}
char LICENSE[] SEC("license") = "GPL";
"""
OWN = Path("ctx_fields.o")  # stands for the object compiled by the ctx_object fixture


def _cases() -> list:
    cases = [
        pytest.param(path, name, id=f"{path.stem}:{name}")
        for path in sample_objects()
        for name in parse_object(str(path)).programs
    ]
    if not cases:
        return [pytest.param(None, None, id="no-samples-built")]
    return [*cases, pytest.param(OWN, "ctx_fields", id="ctx_fields")]


@pytest.fixture(scope="module")
def ctx_object(tmp_path_factory) -> Path:
    return compile_bpf(tmp_path_factory.mktemp("diff"), CTX_FIELDS, "ctx_fields")


class CtxLab:
    """A namespace with a veth pair of 4 and 2 rx queues, and one thread inside it for the kernel's
    test runs (ctx_in's ingress_ifindex is looked up in the calling thread's namespace)."""

    def __init__(self, lab: NetLab) -> None:
        self.ns = lab.netns(ipv6=False)
        subprocess.run(["ip", "-n", self.ns, "link", "add", "vxd0", "numrxqueues", "4", "type", "veth",
                        "peer", "name", "vxd1", "numrxqueues", "2"], check=True, capture_output=True, timeout=30)
        links = json.loads(subprocess.run(["ip", "-n", self.ns, "-d", "-j", "link", "show"], check=True,
                                          capture_output=True, text=True, timeout=30).stdout)
        self.queues = {link["ifindex"]: link.get("num_rx_queues", 1) for link in links}  # lo, vxd0, vxd1
        assert sorted(self.queues.values()) == [1, 2, 4], links
        self._pool = concurrent.futures.ThreadPoolExecutor(1, initializer=setns_current_thread, initargs=(self.ns,))

    def run(self, fn, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs).result(timeout=60)

    def contexts(self) -> st.SearchStrategy[XdpMd]:
        """What the kernel accepts: the default device, or a device here with one of its queues."""
        def on(ifindex: int) -> st.SearchStrategy[XdpMd]:
            rxq = st.just(0) if ifindex == 0 else st.integers(0, self.queues[ifindex] - 1)
            return st.builds(XdpMd, ingress_ifindex=st.just(ifindex), rx_queue_index=rxq,
                             meta_len=st.sampled_from(range(0, META_CTX_MAX + 1, 4)))
        return st.sampled_from([0, *sorted(self.queues)]).flatmap(on)

    def close(self) -> None:
        self._pool.shutdown()


@pytest.fixture(scope="module")
def ctx_lab(on_cpu0):
    """After on_cpu0: the kernel's thread inherits the pinning when the pool starts it."""
    with NetLab("vxd") as lab:
        c = CtxLab(lab)
        try:
            yield c
        finally:
            c.close()


def _examples() -> int:
    """`EXAMPLES`, refused below `FLOOR` unless VXDP_DIFF_BELOW_FLOOR=1, and then announced."""
    if EXAMPLES < FLOOR:
        assert BELOW_FLOOR, (f"VXDP_DIFF_EXAMPLES={EXAMPLES} is below the differential test's floor of {FLOOR}; "
                             f"set VXDP_DIFF_BELOW_FLOOR=1 too to run it anyway (it then warns)")
        warnings.warn(f"differential test checked only {EXAMPLES} examples per program, below its floor of "
                      f"{FLOOR} (VXDP_DIFF_BELOW_FLOOR=1): this run does not count as the differential test",
                      stacklevel=2)
    return EXAMPLES


@pytest.fixture(scope="module")
def on_cpu0():
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    yield
    os.sched_setaffinity(0, before)


_loads: dict[str, tuple[LoadedObject, LoadedObject, LoadedObject]] = {}

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
    """One kernel, one interpreter and one JIT load per object, shared by that object's programs."""

    def get(path) -> tuple[LoadedObject, LoadedObject, LoadedObject]:
        key = str(path)
        if key not in _loads:
            obj = parse_object(key)
            kernel = load_object(KernelEngine(), obj)
            interp = load_object(InterpEngine(cpu=0), obj)
            jit = load_object(JitEngine(cpu=0), obj)
            for loaded in (kernel, interp, jit):
                SETUP.get(path.stem, lambda _: None)(loaded)
            _loads[key] = (kernel, interp, jit)
        return _loads[key]

    yield get
    for loads in _loads.values():
        for loaded in loads:
            loaded.close()
    _loads.clear()


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
def test_engines_match_kernel(engines, ctx_lab, ctx_object, path, prog):
    assert path is not None, "no sample objects under samples/build: run `make samples`"
    kernel, interp, jit = engines(ctx_object if path == OWN else path)
    examples = _examples()
    seen = {"n": 0, "ctx": set()}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(frame=frames(), ctx=ctx_lab.contexts(), meta=st.binary(min_size=META_CTX_MAX, max_size=META_CTX_MAX))
    def check(frame: bytes, ctx: XdpMd, meta: bytes) -> None:
        seen["n"] += 1
        seen["ctx"].add((ctx.ingress_ifindex, ctx.rx_queue_index, ctx.meta_len))
        packet = meta[: ctx.meta_len] + frame  # the metadata comes first in data_in
        want = ctx_lab.run(kernel.run, packet, prog=prog, ctx=ctx)
        where = f"{packet.hex()} with {ctx}"
        kernel_maps = map_state(kernel)
        for ours in (interp, jit):
            got = ours.run(packet, prog=prog, ctx=ctx)
            fault = getattr(ours.engine, "last_fault", None)
            side = ours.engine.name
            assert got.action == want.action, f"{side}: action differs on {where} (fault: {fault})"
            assert got.packet == want.packet, f"{side}: output packet differs on {where}"
            assert map_state(ours) == kernel_maps, f"{side}: maps differ after {where}"

    check()
    assert seen["n"] >= examples
    assert len(seen["ctx"]) >= min(50, examples // 5), len(seen["ctx"])  # the contexts did vary (8 x 55 valid)


@pytest.mark.parametrize(("ctx", "size"), [
    (XdpMd(egress_ifindex=1), 60),
    (XdpMd(ingress_ifindex=0, rx_queue_index=1), 60),
    (XdpMd(meta_len=2), 60),
    (XdpMd(meta_len=META_CTX_MAX + 4), 300),
    (XdpMd(meta_len=16), 14),
], ids=["egress", "queue-without-device", "meta-unaligned", "meta-220", "meta-past-data-end"])
def test_contexts_the_kernel_refuses(engines, ctx_lab, ctx_object, ctx, size):
    """Refused alike, whatever the devices: the kernel with EINVAL, our engines with XdpContextError."""
    kernel, interp, jit = engines(ctx_object)
    packet = bytes(size)
    with pytest.raises(BpfError) as k:
        ctx_lab.run(kernel.run, packet, prog="ctx_fields", ctx=ctx)
    assert k.value.errno == errno.EINVAL
    for ours in (interp, jit):
        with pytest.raises(XdpContextError):
            ours.run(packet, prog="ctx_fields", ctx=ctx)


def test_ctx_fields_program_sees_the_device_and_queue(engines, ctx_lab, ctx_object):
    """The fields are really read (not constant): both engines store the given ones, and the
    loopback's index when the context names no device."""
    kernel, interp, jit = engines(ctx_object)
    veth = max(ctx_lab.queues, key=ctx_lab.queues.get)  # the 4-queue end
    for ctx, stored in ((XdpMd(ingress_ifindex=veth, rx_queue_index=3, meta_len=8), (veth, 3, 8)),
                        (XdpMd(ingress_ifindex=0, rx_queue_index=0), (1, 0, 0))):
        for loaded, run in ((kernel, lambda p, c: ctx_lab.run(kernel.run, p, prog="ctx_fields", ctx=c)),
                            (interp, lambda p, c: interp.run(p, prog="ctx_fields", ctx=c)),
                            (jit, lambda p, c: jit.run(p, prog="ctx_fields", ctx=c))):
            run(bytes(8) + bytes(60), ctx)
            values = dict(loaded.maps["seen"].items())
            assert [int.from_bytes(values[U32.pack(i)], "little") for i in range(3)] == list(stored), loaded.engine
