"""One record, many views, end to end through the CLI on the real daemons: whoever loaded or imported
a device's objects, ``prog show``, ``map …`` and ``prog detach`` with ``--device`` (the operator) or
``--guest`` (over the ctrl vq, OBJ_LIST) read and act on the device's table, the one ``host show``
lists; and ``host show`` says the guest negotiated offload when it did.

Same topology and helpers as tests/cli/test_offload_e2e.py (real namespaces, veth, bpf(2), both
daemons and the CLI as subprocesses).
"""

from __future__ import annotations

import pytest
from offload_topology import DEVICE, GUEST, HOST_MAC, OFFLOAD_ENGINES, OffloadTopo, offload_topology, poll
from test_offload_e2e import (
    TAIL_CALLS,
    device_offload,
    kernel_ids,
    map_counts,
    retarget,
    send,
    started,
)

from vxdp import packets

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

HOPS_AFTER_80 = {0: 40, 3: 30, 2: 10}  # tail_calls' hop counters after 80 frames of the mix


@pytest.fixture(params=OFFLOAD_ENGINES)
def topo(request, tmp_path, samples_built):
    yield from offload_topology(tmp_path, "vxv", engine=request.param)


def _u(hexed: str) -> int:
    return int.from_bytes(bytes.fromhex(hexed), "little")


def _progs(topo: OffloadTopo, *target: str) -> list[tuple[int, str, str, bool]]:
    return [(p["handle"], p["name"], p["origin"], p["attached"]) for p in topo.ok("prog", "show", *target)["programs"]]


def _device_kernel_progs(topo: OffloadTopo) -> set[int]:
    """The kernel ids of the device's programs now (ids, not names: another run may use the same device name)."""
    return {p["kernel_id"] for p in device_offload(topo)["programs"]}


def _still_in_kernel(ids: set[int]) -> set[int]:
    return ids & kernel_ids("prog")


def test_the_operator_sees_the_guests_program_and_its_maps(topo):
    """Item 7: ``prog show --device`` lists what ``host show`` lists, the guest's program included, and
    the guest's maps answer by name on the device (dump, lookup, update, delete)."""
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        topo.ok("prog", "load", TAIL_CALLS, "--offload", "--prog", "xdp_entry", "--guest", GUEST)
        dev = device_offload(topo)
        shown = _progs(topo, "--device", DEVICE)
        assert shown == [(p["handle"], p["name"], "guest", p["attached"] is not None) for p in dev["programs"]]
        assert [name for _, name, _, attached in shown if attached] == ["xdp_entry"]
        assert sorted(m["name"] for m in topo.ok("map", "show", "--device", DEVICE)) == ["hops", "jmp_table"]
        text = topo.vxdp("prog", "show", "--device", DEVICE)
        assert text.code == 0 and "no programs loaded" not in text.out and "xdp_entry" in text.out, text
        send(topo, retarget(packets.mix(80), HOST_MAC))
        poll(lambda: map_counts(topo, "hops", "--device", DEVICE), lambda c: c == HOPS_AFTER_80, timeout=20,
             what="the guest's hop counters read by the operator")
        assert _u(topo.ok("map", "lookup", "hops", "0", "--device", DEVICE)["value"]) == 40
        # the prog_array holds guest program handles; delete a slot on the device, the guest sees it gone
        handles = {name: h for h, name, _, _ in shown}
        jmp = next(m for m in dev["maps"] if m["name"] == "jmp_table")["handle"]
        assert _u(topo.ok("map", "lookup", f"id:{jmp}", "2", "--device", DEVICE)["value"]) == handles["handle_other"]
        assert topo.ok("map", "delete", "jmp_table", "2", "--device", DEVICE) == {
            "map": "jmp_table", "key": "02000000", "deleted": True}
        r = topo.vxdp("map", "lookup", "jmp_table", "2", "--guest", GUEST)
        assert r.code == 1 and "ENOENT" in r.err, (r.code, r.err)


def test_imported_state_is_seen_used_detached_and_imported_again(topo, tmp_path):
    """Item 6: after ``offload import --device D`` the operator's and the guest's views show the imported
    programs (attached) and map values, ``map lookup/update/delete`` work on them, ``prog detach
    --device D`` detaches and frees them and their maps, and a second import then works."""
    host, g = started(topo)
    state = tmp_path / "state.bin"
    with host, g:
        g.wait_connected()
        topo.ok("prog", "load", TAIL_CALLS, "--offload", "--prog", "xdp_entry", "--guest", GUEST)
        send(topo, retarget(packets.mix(80), HOST_MAC))
        poll(lambda: map_counts(topo, "hops", "--guest", GUEST), lambda c: c == HOPS_AFTER_80, timeout=20,
             what="hop counters")
        before = [(h, n) for h, n, _, _ in _progs(topo, "--device", DEVICE)]
        out = topo.ok("offload", "export", "--device", DEVICE, "-o", str(state))
        assert out["bytes"] == state.stat().st_size > 0 and state.read_bytes().startswith(b"VXDPSTAT")

        # detach on the device frees the guest's objects too: the device is empty, the port bare
        ids = _device_kernel_progs(topo)
        assert topo.ok("prog", "detach", "--device", DEVICE) == {"detached": 1, "programs": 3, "maps": 2}
        dev = device_offload(topo)
        assert dev["programs"] == [] and dev["maps"] == [] and dev["attached"] is None
        assert not topo.xdp_on_port()
        poll(lambda: _still_in_kernel(ids), lambda left: not left, timeout=10, what="the kernel freeing them")
        assert topo.ok("prog", "show", "--guest", GUEST)["programs"] == []

        for round_ in (1, 2):
            assert topo.ok("offload", "import", str(state), "--device", DEVICE) == {"imported": state.stat().st_size}
            for target in (("--device", DEVICE), ("--guest", GUEST)):
                shown = _progs(topo, *target)
                assert [(h, n) for h, n, _, _ in shown] == before, (round_, target)
                assert {o for _, _, o, _ in shown} == {"import"}
                assert [n for _, n, _, attached in shown if attached] == ["xdp_entry"]
                assert map_counts(topo, "hops", *target) == HOPS_AFTER_80
            assert topo.xdp_on_port()
            assert _u(topo.ok("map", "lookup", "hops", "3", "--device", DEVICE)["value"]) == 30
            topo.ok("map", "update", "hops", "1", "77", "--device", DEVICE)
            assert _u(topo.ok("map", "lookup", "hops", "1", "--guest", GUEST)["value"]) == 77
            topo.ok("map", "delete", "jmp_table", "0", "--device", DEVICE)
            r = topo.vxdp("map", "lookup", "jmp_table", "0", "--device", DEVICE)
            assert r.code == 1 and "ENOENT" in r.err, (r.code, r.err)
            # the imported programs run: IPv6 frames fall through the empty slot 1 into hops[3]
            send(topo, retarget([f for f in packets.mix(8) if f[12:14] == b"\x86\xdd"], HOST_MAC))
            poll(lambda: map_counts(topo, "hops", "--device", DEVICE).get(3), lambda n: n == 33, timeout=20,
                 what="hop counters of the imported programs")
            ids = _device_kernel_progs(topo)
            assert topo.ok("prog", "detach", "--device", DEVICE) == {"detached": 1, "programs": 3, "maps": 2}
            dev = device_offload(topo)
            assert dev["programs"] == [] and dev["maps"] == [] and not topo.xdp_on_port()
            poll(lambda ids=ids: _still_in_kernel(ids), lambda left: not left, timeout=10, what="the kernel freeing them")
            assert topo.ok("prog", "show", "--device", DEVICE)["programs"] == []


def test_host_show_says_the_guest_negotiated_offload(topo):
    """Item 4: ``offload_negotiated`` is the device's negotiated features, not a flag only tests set."""
    with topo.host() as host:
        (dev,) = [d for d in topo.ok("host", "show") if d.get("name") == DEVICE]
        assert dev["offload"]["device"]["offload_negotiated"] is False  # no frontend yet
        g = topo.guest_proc()
        with g:
            g.wait_connected()
            (dev,) = [d for d in topo.ok("host", "show") if d.get("name") == DEVICE]
            assert "NET_BPF_OFFLOAD" in dev["features_negotiated"]
            assert dev["offload"]["device"]["offload_negotiated"] is True
        assert host.proc.poll() is None
