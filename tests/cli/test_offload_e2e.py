"""XDP offload end to end, as a user drives it: ``vxdp prog/map … --guest`` through the guest
driver's ctrl vq to ``vxdp host serve``, which loads into the host kernel and attaches to its port,
or (``--engine``, every test runs on each of `OFFLOAD_ENGINES`) runs the program itself on the
port's frames and puts nothing of the guest's in the host kernel.

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
from offload_topology import (
    DEVICE,
    GUEST,
    GUEST_IP,
    HOST_MAC,
    OFFLOAD_ENGINES,
    TRAFFIC_IP,
    OffloadTopo,
    offload_topology,
    poll,
)
from testpaths import SAMPLES_BUILD

from vxdp import packets
from vxdp.engine import DEFAULT_IN_PROCESS
from vxdp.frames import FrameBatch
from vxdp.netdev.port import Port

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

XDP1 = str(SAMPLES_BUILD / "xdp1.o")
XDP2 = str(SAMPLES_BUILD / "xdp2.o")
XDP_PASS = str(SAMPLES_BUILD / "xdp_pass.o")
TAIL_CALLS = str(SAMPLES_BUILD / "corpus" / "tail_calls.o")
RODATA_CONFIG = str(SAMPLES_BUILD / "corpus" / "rodata_config.o")


@pytest.fixture(params=OFFLOAD_ENGINES)
def topo(request, tmp_path, samples_built):
    yield from offload_topology(tmp_path, engine=request.param)


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


def kernel_ids(what: str) -> set[int]:
    out = subprocess.run(["bpftool", "-j", what, "show"], check=True, capture_output=True, text=True).stdout
    return {o["id"] for o in json.loads(out or "[]")}


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
        # the host dropped them: nothing crossed the virtio ring, nothing reached the tap
        assert g.show()["counters"]["rx_frames"] == rx_before
        assert topo.link_stat(topo.guest, "vxg0", "rx_packets") == tap_before

        dev = device_offload(topo)
        (prog,) = dev["programs"]
        assert dev["engine"] == topo.engine
        assert prog["attached"]["ifname"] == "vxp0"
        assert prog["actions"].get("drop") == len(frames), prog["actions"]
        if topo.engine == "kernel":
            assert prog["kernel_name"].startswith(DEVICE)
            assert prog["attached"]["mode"] == "native" and dev["rx_frames"] is None
            assert prog["kernel_name"] in kernel_names(topo, "prog")
        else:  # the daemon ran it on the port's frames; bpftool sees nothing of the device's
            assert prog["attached"]["mode"] == topo.engine
            assert dev["rx_frames"] == {"drop": len(frames)}
            assert not [n for what in ("prog", "map") for n in kernel_names(topo, what) if n.startswith(DEVICE)]
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


# -- 3. a PASS program offloaded -----------------------------------------------------------------

def _iperf3_reverse(topo: OffloadTopo) -> dict:
    """iperf3 TCP for 2 s, data from the traffic netns to the guest (through the offloaded program)."""
    server = subprocess.Popen(["ip", "netns", "exec", topo.traffic, "iperf3", "-s", "-1", "-B", TRAFFIC_IP],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: topo.sh(topo.traffic, "ss", "-ltn"), lambda out: ":5201" in out, timeout=10,
             what="iperf3 server listening")
        client = subprocess.run(["ip", "netns", "exec", topo.guest, "iperf3", "-c", TRAFFIC_IP, "-R", "-t", "2",
                                 "-J"], check=False, capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stdout[-2000:] + client.stderr[-2000:]
        doc = json.loads(client.stdout)
        assert "error" not in doc, doc["error"]
        return doc
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(5)


def test_pass_program_offloaded_keeps_ping_tcp_and_iperf3_working(topo):
    from guest_helpers import ping, tcp_transfer

    host, g = started(topo)
    with host, g:
        g.wait_connected()
        topo.ok("prog", "load", XDP_PASS, "--offload", "--guest", GUEST)
        assert ping(topo.traffic, GUEST_IP, 10) == 10
        assert ping(topo.guest, TRAFFIC_IP, 10) == 10
        data = os.urandom(4 << 20)
        got = tcp_transfer(topo.traffic, topo.guest, GUEST_IP, data)
        assert got == (hashlib.sha256(data).hexdigest(), len(data))
        end = _iperf3_reverse(topo)["end"]
        assert end["sum_received"]["bytes"] > 1 << 20
        counts = map_counts(topo, "rxcnt", "--guest", GUEST)
        assert counts.get(1, 0) >= 20  # the echo requests and replies that came in through the port
        assert counts.get(6, 0) > 0
        (prog,) = device_offload(topo)["programs"]
        assert prog["actions"].get("pass", 0) > 0 and prog["actions"].get("drop", 0) == 0


# -- 4. offloaded and native at once ---------------------------------------------------------------

def test_offloaded_and_native_programs_at_once(topo):
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        topo.ok("prog", "load", XDP_PASS, "--offload", "--guest", GUEST)
        # the native program on the default engine beside a jit host, on the reference beside a kernel one
        native_engine = "interp" if topo.engine == "kernel" else DEFAULT_IN_PROCESS
        chosen = ("--engine", native_engine) if native_engine != DEFAULT_IN_PROCESS else ()
        topo.ok("prog", "load", XDP1, "--native", *chosen, "--guest", GUEST)
        frames = retarget(packets.mix(240), HOST_MAC)
        want = dict(packets.mix_protocol_counts(240))
        rx_before = g.show()["counters"]["rx_frames"]
        tap_before = topo.link_stat(topo.guest, "vxg0", "rx_packets")
        send(topo, frames)
        offloaded = poll(lambda: map_counts(topo, "rxcnt", "--mode", "offload", "--guest", GUEST),
                         lambda c: c == want, timeout=20, what="the offloaded program's counters")
        native = poll(lambda: map_counts(topo, "rxcnt", "--mode", "native", "--guest", GUEST),
                      lambda c: c == want, timeout=20, what="the native program's counters")
        assert offloaded == native == want
        # the host passed every frame to the guest driver; the native program dropped them there
        assert g.show()["counters"]["rx_frames"] - rx_before == len(frames)
        assert topo.link_stat(topo.guest, "vxg0", "rx_packets") == tap_before
        progs = {p["mode"]: p for p in topo.ok("prog", "show", "--guest", GUEST)["programs"] if p["attached"]}
        assert set(progs) == {"offload", "native"}
        assert progs["offload"]["name"] == "xdp_pass" and progs["native"]["name"] == "xdp_prog1"
        assert progs["offload"]["counters"]["pass"] == len(frames)
        assert progs["native"]["counters"].get("drop") == len(frames)
        assert progs["native"]["engine"] == native_engine  # --engine, else the default (the JIT)


# -- 5. refusals through the CLI ---------------------------------------------------------------------

SNIPPETS = {
    "redirect": 'SEC("xdp") int p(struct xdp_md *ctx) { return bpf_redirect(1, 0); }\nchar _l[] SEC("license") = "GPL";\n',
    "fib": '#include <linux/if_ether.h>\nSEC("xdp") int p(struct xdp_md *ctx) { struct bpf_fib_lookup f = {};\n'
           '  f.family = 2; f.ifindex = ctx->ingress_ifindex;\n'
           '  return bpf_fib_lookup(ctx, &f, sizeof(f), 0) ? XDP_DROP : XDP_PASS; }\n'
           'char _l[] SEC("license") = "GPL";\n',
    "devmap": 'struct { __uint(type, BPF_MAP_TYPE_DEVMAP); __type(key, __u32); __type(value, __u32);\n'
              '  __uint(max_entries, 4); } devs SEC(".maps");\n'
              'SEC("xdp") int p(struct xdp_md *ctx) { __u32 k = 0; return bpf_map_lookup_elem(&devs, &k) ? 1 : 2; }\n'
              'char _l[] SEC("license") = "GPL";\n',
    "unsafe": 'SEC("xdp") int p(struct xdp_md *ctx) { unsigned char *d = (void *)(long)ctx->data;\n'
              '  return d[0] & 1 ? XDP_PASS : XDP_DROP; }\nchar _l[] SEC("license") = "GPL";\n',
    "long": 'SEC("xdp") int p(struct xdp_md *ctx) { unsigned char *d = (void *)(long)ctx->data;\n'
            '  if ((void *)(d + 8) > (void *)(long)ctx->data_end) return XDP_PASS;\n'
            '  return (d[0] + d[1] + d[2] + d[3] + d[4] + d[5] + d[6] + d[7]) & 1 ? XDP_PASS : XDP_DROP; }\n'
            'char _l[] SEC("license") = "GPL";\n',
}


def refused(topo: OffloadTopo, path: str, *target: str) -> str:
    """``vxdp prog load PATH --offload`` that must fail: exit 1, and the one-line message."""
    r = topo.vxdp("prog", "load", path, "--offload", *target)
    assert r.code == 1, (r.code, r.out, r.err)
    assert r.out == ""
    first = r.err.splitlines()[0]
    assert first.startswith("vxdp: "), r.err
    return r.err


def test_refusals_name_the_rule(topo, tmp_path):
    from bpf.bpf_cc import compile_bpf

    objs = {name: str(compile_bpf(tmp_path, src, name)) for name, src in SNIPPETS.items()}
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        err = refused(topo, objs["redirect"], "--guest", GUEST)
        assert "policy: helper bpf_redirect (23) is never allowed" in err.splitlines()[0], err
        assert "(rule helpers.never)" in err.splitlines()[0], err
        err = refused(topo, objs["fib"], "--guest", GUEST)
        assert "policy: helper bpf_fib_lookup (69) is never allowed" in err.splitlines()[0], err
        assert "(rule helpers.never)" in err.splitlines()[0], err
        err = refused(topo, objs["devmap"], "--guest", GUEST)
        assert "devmap" in err.splitlines()[0].lower() and "map_types.allow" in err, err
        err = refused(topo, objs["unsafe"], "--guest", GUEST)
        assert "EACCES" in err.splitlines()[0] or "verifier" in err.splitlines()[0], err
        assert "invalid access to packet" in err, err  # the kernel verifier's log is the detail
        # nothing half-loaded stays behind on the device
        dev = device_offload(topo)
        assert dev["programs"] == [] and dev["maps"] == []
        # and the device still works after the refusals
        topo.ok("prog", "load", XDP1, "--offload", "--guest", GUEST)


def test_quota_refusals(topo, tmp_path):
    from bpf.bpf_cc import compile_bpf

    policy = tmp_path / "policy.toml"
    policy.write_text("[quota]\nmax_maps = 0\nmax_insns = 10\n")
    long_prog = str(compile_bpf(tmp_path, SNIPPETS["long"], "long"))
    host, g = started(topo, "--policy", str(policy))
    with host, g:
        g.wait_connected()
        err = refused(topo, XDP1, "--guest", GUEST)
        assert "already has 0 maps" in err.splitlines()[0] and "quota.max_maps" in err, err
        err = refused(topo, long_prog, "--guest", GUEST)
        assert "quota.max_insns" in err and "10" in err.splitlines()[0], err


def test_offload_bit_not_negotiated(topo):
    host, g = started(topo, "--no-offload")
    with host, g:
        doc = g.wait_connected()
        assert "NET_BPF_OFFLOAD" not in doc["features"] and doc["offload"] is False
        err = refused(topo, XDP1, "--guest", GUEST)
        first = err.splitlines()[0]
        assert "feature bit 58 not negotiated" in first, err
        assert "(EOPNOTSUPP)" in first or "(ENOTSUP)" in first, err  # one errno (95) on Linux, two names


# -- 6. the guest killed with a program attached ---------------------------------------------------

def _own(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(DEVICE + "_")]


def test_guest_killed_host_frees_everything(topo):
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        topo.ok("prog", "load", TAIL_CALLS, "--offload", "--guest", GUEST)
        dev = device_offload(topo)
        assert len(dev["programs"]) == 3 and len(dev["maps"]) == 2
        # by kernel id, not name: other runs on this machine may have a device of the same name
        progs, maps = {p["kernel_id"] for p in dev["programs"]}, {m["kernel_id"] for m in dev["maps"]}
        if topo.engine == "kernel":
            assert progs <= kernel_ids("prog") and maps <= kernel_ids("map")
        else:  # in the daemon's engine: nothing in the kernel to free
            assert not [n for what in ("prog", "map") for n in kernel_names(topo, what) if n.startswith(DEVICE)]
            progs, maps = set(), set()
        g.stop(sig=9)
        poll(lambda: device_offload(topo), lambda d: d["programs"] == [] and d["maps"] == [], timeout=20,
             what="the host freeing the killed guest's objects")
        # the kernel frees a prog_array's programs in a deferred work item once its last fd is gone
        poll(lambda: (progs | maps) & (kernel_ids("prog") | kernel_ids("map")), lambda left: not left, timeout=10,
             what="the device's kernel programs and maps (freed by the kernel)")
        assert not topo.xdp_on_port()  # `ip link` prints xdp after mtu: ask its JSON
        assert host.proc.poll() is None


# -- 7. the operator's path --------------------------------------------------------------------------

def test_operator_loads_on_the_device_without_a_guest(topo):
    with topo.host() as host:
        loaded = topo.ok("prog", "load", XDP1, "--device", DEVICE)
        assert [p["name"] for p in loaded["programs"]] == ["xdp_prog1"]
        send(topo, packets.mix(80))
        want = dict(packets.mix_protocol_counts(80))
        got = poll(lambda: map_counts(topo, "rxcnt", "--device", DEVICE), lambda c: c == want, timeout=20,
                   what="counters read on the device")
        assert got == want
        (prog,) = device_offload(topo)["programs"]
        assert prog["actions"].get("drop") == 80
        assert topo.ok("prog", "detach", "--device", DEVICE) == {"detached": 1, "programs": 1, "maps": 1}
        dev = device_offload(topo)
        assert dev["programs"] == [] and dev["maps"] == []
        assert prog["kernel_id"] not in kernel_ids("prog")  # by id: another run may load a same-named one
        assert host.proc.poll() is None


# -- 8. tail calls across offloaded programs ---------------------------------------------------------

def test_tail_calls_across_offloaded_programs(topo):
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        loaded = topo.ok("prog", "load", TAIL_CALLS, "--offload", "--prog", "xdp_entry", "--guest", GUEST)
        handles = {p["name"]: p["handle"] for p in loaded["programs"]}
        assert [p["name"] for p in loaded["programs"] if p["attached"]] == ["xdp_entry"]
        # the prog_array holds guest handles: slot 0 handle_ipv4, slot 2 handle_other, 1 and 3 empty
        table = {int.from_bytes(bytes.fromhex(e["key"]), "little"): int.from_bytes(bytes.fromhex(e["value"]), "little")
                 for e in topo.ok("map", "dump", "jmp_table", "--guest", GUEST)["entries"]}
        assert table == {0: handles["handle_ipv4"], 2: handles["handle_other"]}
        # per 8 frames of the mix: IPv4 TCP/UDP/ICMP and VLAN+IPv4 -> handle_ipv4 (hops[0]);
        # IPv6 x3 -> empty slot 1, falls through (hops[3]); ARP -> handle_other (hops[2])
        send(topo, retarget(packets.mix(80), HOST_MAC))
        want = {0: 40, 3: 30, 2: 10}
        got = poll(lambda: map_counts(topo, "hops", "--guest", GUEST), lambda c: c == want, timeout=20,
                   what="hop counters")
        assert got == want


# -- 9. .rodata frozen on the device; vxdp map freeze ------------------------------------------------

def test_rodata_frozen_offloaded_and_map_freeze(topo):
    """rodata_config verifies only with .rodata frozen: the guest's load freezes it over the ctrl vq
    before PROG_LOAD; then user-space writes are EPERM, and `vxdp map freeze` freezes another map."""
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        loaded = topo.ok("prog", "load", RODATA_CONFIG, "--offload", "--guest", GUEST)
        assert [p["name"] for p in loaded["programs"]] == ["xdp_rodata"]
        frozen = {m["name"]: m["frozen"] for m in device_offload(topo)["maps"]}
        assert frozen == {".rodata": True, "seen": False}
        zero = "hex:" + "00" * 4
        r = topo.vxdp("map", "update", ".rodata", zero, "hex:" + "00" * 12, "--guest", GUEST)
        assert r.code == 1 and "EPERM" in r.err, (r.code, r.err)
        topo.ok("map", "update", "seen", "3", "7", "--guest", GUEST)
        assert topo.ok("map", "freeze", "seen", "--guest", GUEST) == {"map": "seen", "frozen": True}
        r = topo.vxdp("map", "update", "seen", "3", "8", "--guest", GUEST)
        assert r.code == 1 and "EPERM" in r.err, (r.code, r.err)
        assert map_counts(topo, "seen", "--guest", GUEST) == {3: 7}
        assert {m["name"]: m["frozen"] for m in device_offload(topo)["maps"]}["seen"]
        # the guest's own view says so too (`vxdp map show`)
        shown = {m["name"]: m["frozen"] for m in topo.ok("map", "show", "--guest", GUEST)}
        assert shown == {".rodata": True, "seen": True}


# -- 10. state export / import (migration) ---------------------------------------------------------

def _kernel_map(map_id: int) -> dict[int, int]:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)], check=True, capture_output=True,
                         text=True).stdout
    def num(hexes: list[str]) -> int:
        return int.from_bytes(bytes(int(b, 16) for b in hexes), "little")
    return {num(e["key"]): num(e["value"]) for e in json.loads(out) if num(e["value"])}


def test_state_export_and_import_through_guest_and_operator(topo, tmp_path):
    """The guest exports its device's state to a file; a device with objects refuses the import (EBUSY);
    emptied, the device takes the file back: same handles, programs (same tags), map contents, attachment."""
    host, g = started(topo)
    state = tmp_path / "state.bin"
    with host, g:
        g.wait_connected()
        topo.ok("prog", "load", TAIL_CALLS, "--offload", "--prog", "xdp_entry", "--guest", GUEST)
        send(topo, retarget(packets.mix(80), HOST_MAC))
        poll(lambda: map_counts(topo, "hops", "--guest", GUEST), lambda c: c == {0: 40, 3: 30, 2: 10},
             timeout=20, what="hop counters")
        before = device_offload(topo)
        out = topo.ok("offload", "export", "--guest", GUEST, "-o", str(state), "-j")
        assert out["bytes"] == state.stat().st_size > 0 and state.read_bytes().startswith(b"VXDPSTAT")
        r = topo.vxdp("offload", "import", str(state), "--guest", GUEST)
        assert r.code == 1 and "EBUSY" in r.err, (r.code, r.err)
        topo.ok("prog", "detach", "--guest", GUEST)
        assert device_offload(topo)["programs"] == []
        assert topo.ok("offload", "import", str(state), "--device", DEVICE, "-j") == {
            "imported": state.stat().st_size}
        after = device_offload(topo)
        assert [(p["handle"], p["name"], p["tag"]) for p in after["programs"]] == [
            (p["handle"], p["name"], p["tag"]) for p in before["programs"]]
        assert [(m["handle"], m["name"]) for m in after["maps"]] == [(m["handle"], m["name"]) for m in before["maps"]]
        assert after["attached"] == before["attached"] is not None
        # the imported maps hold what was exported (read by bpftool on the kernel, over the device's table
        # on an engine of the daemon), and the recreated programs run: more frames count on
        hops = next(m for m in after["maps"] if m["name"] == "hops")

        def read_hops() -> dict[int, int]:
            if topo.engine == "kernel":
                return _kernel_map(hops["kernel_id"])
            return map_counts(topo, "hops", "--device", DEVICE)

        assert read_hops() == {0: 40, 3: 30, 2: 10}
        send(topo, retarget(packets.mix(8), HOST_MAC))
        poll(read_hops, lambda c: c == {0: 44, 3: 33, 2: 11}, timeout=20, what="hop counters after the import")
