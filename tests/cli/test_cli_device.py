"""What ``vxdp prog|map … --device/--guest`` print against the real daemons, off the happy path:
what ``prog detach`` did, bad keys and values, unknown maps, ``-j`` errors, never ``None``.

Real parts only, as in test_offload_e2e.py (whose topology and helpers these reuse): namespaces,
a veth, bpf(2), ``vxdp host serve`` (and ``vxdp guest run``) and the CLI as subprocesses.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from offload_topology import DEVICE, GUEST, OFFLOAD_ENGINES, offload_topology, poll
from test_offload_e2e import SNIPPETS, XDP1, device_offload, started

pytestmark = [pytest.mark.privileged]


@pytest.fixture(params=OFFLOAD_ENGINES)
def topo(request, tmp_path, samples_built):
    yield from offload_topology(tmp_path, prefix="vxc", engine=request.param)


def failed(r) -> str:
    """The one line of a command that failed as it must (exit 1, nothing on stdout)."""
    assert r.code == 1 and r.out == "" and "Traceback" not in r.err, (r.code, r.out, r.err)
    (line,) = r.err.splitlines()
    assert line.startswith("vxdp: ")
    return line.removeprefix("vxdp: ")


def kernel_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def nothing_on_the_port(topo) -> bool:
    dev = device_offload(topo)
    return dev["programs"] == [] and dev["maps"] == [] and " xdp" not in topo.sh(topo.hostns, "ip", "link",
                                                                                "show", "vxp0")


def test_detach_says_what_it_detached_and_freed(topo):
    with topo.host():
        # nothing loaded: said, and exit 0, as `ip link set dev DEV xdp off` with nothing attached
        r = topo.vxdp("prog", "detach", "--device", DEVICE)
        assert (r.code, r.out, r.err) == (0, "nothing to detach: no programs loaded\n", "")
        assert topo.ok("prog", "detach", "--device", DEVICE) == {"detached": 0, "programs": 0, "maps": 0}
        topo.ok("prog", "load", XDP1, "--device", DEVICE)
        r = topo.vxdp("prog", "detach", "--device", DEVICE)
        assert (r.code, r.err) == (0, "")
        assert r.out == "offload: detached xdp_prog1; freed 1 program and 1 map (rxcnt)\n"
        assert nothing_on_the_port(topo)
        topo.ok("prog", "load", XDP1, "--device", DEVICE)
        assert topo.ok("prog", "detach", "--device", DEVICE) == {"detached": 1, "programs": 1, "maps": 1}
        assert nothing_on_the_port(topo)


def test_detach_after_a_second_load_exits_0_and_frees_everything(topo):
    """The second load replaced the first; detaching frees what is there and says so, exit 0."""
    with topo.host():
        topo.ok("prog", "load", XDP1, "--device", DEVICE)
        second = topo.ok("prog", "load", XDP1, "--device", DEVICE)
        ids = {p["kernel_id"] for p in device_offload(topo)["programs"]}
        assert ids and [p["name"] for p in second["programs"]] == ["xdp_prog1"]
        r = topo.vxdp("prog", "detach", "--device", DEVICE)
        assert (r.code, r.err) == (0, ""), r
        assert r.out == "offload: detached xdp_prog1; freed 1 program and 1 map (rxcnt)\n", r
        assert nothing_on_the_port(topo), device_offload(topo)
        # ids, not names: other tests on the machine may name their programs alike; bounded wait, as
        # a bpftool running elsewhere holds a program (by id) a moment longer
        poll(kernel_prog_ids, lambda live: not ids & live, timeout=10, what=f"programs {ids} freed")


def test_map_commands_refuse_bad_keys_values_and_names(topo):
    with topo.host():
        r = topo.vxdp("map", "show", "--device", DEVICE)
        assert (r.code, r.out) == (0, "no maps loaded\n")
        topo.ok("prog", "load", XDP1, "--device", DEVICE)
        target = ("--device", DEVICE)
        assert failed(topo.vxdp("map", "lookup", "rxcnt", "hex:zz", *target)) == "key 'hex:zz': not hex"
        assert failed(topo.vxdp("map", "lookup", "rxcnt", "12:3", *target)) == "key '12:3': not hex"
        assert failed(topo.vxdp("map", "lookup", "rxcnt", "six", *target)) == \
            "key 'six': give an integer or hex:BYTES"
        assert failed(topo.vxdp("map", "lookup", "rxcnt", "hex:0102", *target)) == \
            "key of 2 bytes; this map takes 4"
        assert failed(topo.vxdp("map", "lookup", "rxcnt", str(1 << 40), *target)) == \
            f"key {1 << 40} does not fit in 4 bytes"
        (rxcnt,) = topo.ok("map", "show", *target)
        err = failed(topo.vxdp("map", "update", "rxcnt", "6", "hex:01", *target))
        assert err == f"value of 1 bytes; this map takes {rxcnt['value_bytes']}"
        # and good ones do what they say
        r = topo.vxdp("map", "update", "rxcnt", "6", "41", *target)
        assert (r.code, r.out, r.err) == (0, "", "")
        assert topo.vxdp("map", "lookup", "rxcnt", "hex:06000000", *target).out == "[6] = 41\n"
        for cmd in (("dump",), ("lookup", "1"), ("update", "1", "1"), ("delete", "1"), ("freeze",)):
            err = failed(topo.vxdp("map", cmd[0], "nomap", *cmd[1:], *target))
            assert "no map named 'nomap'" in err, (cmd, err)
        assert failed(topo.vxdp("map", "lookup", "rxcnt", "6", "--mode", "native", *target)) == \
            f"device {DEVICE}: no map named 'rxcnt' is loaded in the native slot (ENOENT)"
        # the same refusals with -j: one JSON object on stdout, exit 1
        r = topo.vxdp("map", "lookup", "nomap", "1", *target, "-j")
        assert (r.code, r.err) == (1, "") and r.json() == {"error": f"device {DEVICE}: no map named 'nomap' is loaded (ENOENT)",
                                                    "errno": "ENOENT"}
        r = topo.vxdp("map", "dump", "nomap", *target, "-j")
        assert (r.code, r.err) == (1, "")
        assert r.json() == {"error": f"device {DEVICE}: no map named 'nomap' is loaded (ENOENT)", "errno": "ENOENT"}


def test_json_refusal_names_the_policy_rule(topo, tmp_path):
    from bpf.bpf_cc import compile_bpf

    redirect = str(compile_bpf(tmp_path, SNIPPETS["redirect"], "redirect"))
    with topo.host():
        text = failed(topo.vxdp("prog", "load", redirect, "--device", DEVICE))
        r = topo.vxdp("prog", "load", redirect, "--device", DEVICE, "-j")
        assert (r.code, r.err) == (1, "")
        doc = r.json()
        assert doc["error"] == text and doc["rule"] == "helpers.never" and doc["errno"] in ("EPERM", "EACCES")


PERCPU = """
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __type(key, __u32); __type(value, __u32); __uint(max_entries, 4); }
hits SEC(".maps");
SEC("xdp") int p(struct xdp_md *ctx) { __u32 k = 0; __u32 *v = bpf_map_lookup_elem(&hits, &k); if (v) *v += 1;
  return XDP_PASS; }
char _l[] SEC("license") = "GPL";
"""


def test_native_program_text_never_says_none(topo, tmp_path):
    """The interpreter computes no tag: text says `tag unknown`, never Python's None."""
    from bpf.bpf_cc import compile_bpf

    percpu = str(compile_bpf(tmp_path, PERCPU, "percpu"))
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        target = ("--guest", GUEST)
        load = topo.vxdp("prog", "load", XDP1, "--native", *target)
        assert load.code == 0, load.err
        assert "None" not in load.out and load.out.startswith("1: xdp_prog1  native  tag unknown  "), load.out
        show = topo.vxdp("prog", "show", *target)
        assert show.code == 0 and "None" not in show.out and "tag unknown" in show.out, show.out
        maps = topo.vxdp("map", "show", *target)
        assert maps.code == 0 and "None" not in maps.out and "rxcnt" in maps.out, maps.out
        r = topo.vxdp("prog", "detach", "--mode", "native", *target)
        assert (r.code, r.out) == (0, "native: detached xdp_prog1; freed 1 program and 1 map (rxcnt)\n"), r
        r = topo.vxdp("prog", "detach", "--mode", "native", *target)
        assert (r.code, r.out) == (0, "nothing to detach: no programs loaded in the native slot\n"), r
        # a per-CPU value reads one field per CPU, as map dump and bpftool show it
        assert topo.vxdp("prog", "load", percpu, "--native", *target).code == 0
        (hits,) = topo.ok("map", "show", *target)
        ncpus = hits["value_bytes"] // 8
        value = b"".join(int.to_bytes(cpu + 1, 8, "little") for cpu in range(ncpus))
        assert topo.vxdp("map", "update", "hits", "0", f"hex:{value.hex()}", *target).code == 0
        r = topo.vxdp("map", "lookup", "hits", "0", *target)
        assert r.out == "[0] = " + " ".join(f"cpu{cpu}:{cpu + 1}" for cpu in range(ncpus)) + "\n", r
        # a device has no native slot
        r = topo.vxdp("prog", "detach", "--mode", "native", "--device", DEVICE)
        assert failed(r) == "--device runs programs offloaded: --mode native needs --guest"
