"""How offloaded programs are attached, replaced and tied to the daemon, through the CLI on real daemons.

- a second ``prog load`` on the same slot (``--guest`` and ``--device``) leaves the new program
  attached, and a later ``prog detach`` detaches it (issue 8, item 1);
- the operator's ``--device`` load is refused while the guest's program is attached, unless
  ``--replace``; the guest's program then stays loaded, no longer attached (item 5);
- ``kill -9`` of ``vxdp host serve`` takes its program off the port: the program is attached
  through a bpf_link the daemon holds (item 3).

What the port runs is read from the kernel (an XDP query in the port's netns), not from our
own views, so a view that lies cannot make these pass; on an engine of the daemon the kernel must
run nothing there, and the traffic (xdp1 cutting the guest off) says what the daemon runs.
"""

from __future__ import annotations

import os
import signal

import pytest
from offload_topology import DEVICE, GUEST, GUEST_IP, OFFLOAD_ENGINES, OffloadTopo, offload_topology, poll
from test_offload_e2e import XDP1, XDP_PASS, device_offload, started

from vxdp.bpf.kernel.xdp import query_xdp
from vxdp.testing.proc import HarnessTimeout

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

PORT = "vxp0"


@pytest.fixture(params=OFFLOAD_ENGINES)
def topo(request, tmp_path, samples_built):
    yield from offload_topology(tmp_path, prefix="vxa", engine=request.param)


def port_prog_id(topo: OffloadTopo) -> int | None:
    """The id of the program that runs on the host port's frames, ``None`` if none: on the kernel engine
    what the kernel's XDP hook runs (any mode); on an engine of the daemon the kernel's hook runs nothing
    (checked) and the daemon's record says which program it runs."""
    in_kernel = query_xdp(PORT, netns=topo.hostns)
    if topo.engine == "kernel":
        return in_kernel
    assert in_kernel is None, f"engine {topo.engine}: the kernel runs program {in_kernel} on {PORT}"
    return topo.attached_in_daemon()


def kernel_id(topo: OffloadTopo, handle: int) -> int:
    (p,) = [p for p in device_offload(topo)["programs"] if p["handle"] == handle]
    return p["kernel_id"]


def attached_handle(loaded: dict) -> int:
    (p,) = [p for p in loaded["programs"] if p["attached"]]
    return p["handle"]


def load(topo: OffloadTopo, path: str, *target: str) -> int:
    """``vxdp prog load PATH --offload TARGET -j`` that must succeed: the attached program's handle."""
    return attached_handle(topo.ok("prog", "load", path, "--offload", *target))


# -- item 1: a second load on the same slot -----------------------------------------------------

@pytest.mark.parametrize("target", ["guest", "device"])
@pytest.mark.parametrize("second", [XDP_PASS, XDP1], ids=["other_file", "same_file"])
def test_a_second_load_on_the_same_slot_stays_attached_and_detaches(topo, target, second):
    args = ("--guest", GUEST) if target == "guest" else ("--device", DEVICE)
    host, g = started(topo) if target == "guest" else (topo.host(), None)
    try:
        if g is not None:
            g.wait_connected()
        first = load(topo, XDP1, *args)
        assert port_prog_id(topo) == kernel_id(topo, first)

        r = topo.vxdp("prog", "load", second, "--offload", *args, "-j")
        assert r.code == 0, (r.code, r.out, r.err)
        new = attached_handle(r.json())
        assert new != first
        dev = device_offload(topo)
        assert dev["attached"] == new
        assert [p["handle"] for p in dev["programs"]] == [new]  # the replaced object was freed
        (prog,) = dev["programs"]
        assert prog["attached"] is not None and prog["attached"]["ifname"] == PORT
        assert port_prog_id(topo) == prog["kernel_id"]  # the kernel runs the new program

        r = topo.vxdp("prog", "detach", *args, "-j")
        assert r.code == 0, (r.code, r.out, r.err)
        assert r.json() == {"detached": 1, "programs": 1, "maps": 1}
        assert port_prog_id(topo) is None
        dev = device_offload(topo)
        assert dev["attached"] is None and dev["programs"] == []
    finally:
        if g is not None:
            g.stop()
        host.stop()


# -- item 5: the operator and the guest's attached program ---------------------------------------

def test_the_operator_is_refused_over_the_guests_program_unless_replace(topo):
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        guest_h = load(topo, XDP_PASS, "--guest", GUEST)
        guest_id = kernel_id(topo, guest_h)

        r = topo.vxdp("prog", "load", XDP1, "--device", DEVICE)
        assert r.code == 1 and r.out == "", (r.code, r.out, r.err)
        first = r.err.splitlines()[0]
        assert "EBUSY" in first and f"program {guest_h} ('xdp_pass', loaded by the guest)" in first, r.err
        assert "--replace" in first, r.err
        assert port_prog_id(topo) == guest_id
        assert [p["handle"] for p in device_offload(topo)["programs"]] == [guest_h]  # nothing half-loaded

        op_h = load(topo, XDP1, "--device", DEVICE, "--replace")
        dev = device_offload(topo)
        assert dev["attached"] == op_h and port_prog_id(topo) == kernel_id(topo, op_h)
        kept = {p["handle"]: p for p in dev["programs"]}
        assert set(kept) == {guest_h, op_h} and kept[guest_h]["attached"] is None  # kept loaded, not attached

        # the guest sees the truth: the device's record, its own program no longer attached, the operator's
        shown = {p["handle"]: p for p in topo.ok("prog", "show", "--guest", GUEST)["programs"]}
        assert set(shown) == {guest_h, op_h} and shown[op_h]["origin"] == "operator"
        assert not shown[guest_h]["attached"] and shown[op_h]["attached"]
        # the guest's own second load does not take the attach point back without --replace
        r = topo.vxdp("prog", "load", XDP_PASS, "--offload", "--guest", GUEST)
        assert r.code == 1 and "EBUSY" in r.err and f"program {op_h} ('xdp_prog1', loaded by the operator)" in r.err
        # the guest's detach frees its program and leaves the operator's attached
        assert topo.ok("prog", "detach", "--guest", GUEST) == {"detached": 1, "programs": 1, "maps": 1}
        dev = device_offload(topo)
        assert [p["handle"] for p in dev["programs"]] == [op_h] and dev["attached"] == op_h
        assert port_prog_id(topo) == kernel_id(topo, op_h)
        assert topo.ok("prog", "detach", "--device", DEVICE) == {"detached": 1, "programs": 1, "maps": 1}
        assert port_prog_id(topo) is None


def test_the_guests_replace_takes_the_operators_place(topo):
    host, g = started(topo)
    with host, g:
        g.wait_connected()
        op_h = load(topo, XDP1, "--device", DEVICE)
        r = topo.vxdp("prog", "load", XDP_PASS, "--offload", "--guest", GUEST)
        assert r.code == 1 and "EBUSY" in r.err and f"program {op_h} ('xdp_prog1', loaded by the operator)" in r.err
        guest_h = load(topo, XDP_PASS, "--offload", "--guest", GUEST, "--replace")
        assert port_prog_id(topo) == kernel_id(topo, guest_h)
        # the guest's detach leaves the operator's replaced program loaded; the operator's empties the device
        assert topo.ok("prog", "detach", "--guest", GUEST) == {"detached": 1, "programs": 1, "maps": 1}
        assert port_prog_id(topo) is None
        dev = device_offload(topo)
        assert [p["handle"] for p in dev["programs"]] == [op_h] and dev["attached"] is None
        assert topo.ok("prog", "detach", "--device", DEVICE) == {"detached": 1, "programs": 1, "maps": 1}
        assert device_offload(topo)["programs"] == [] and device_offload(topo)["maps"] == []


def test_replace_is_in_the_help(topo):
    r = topo.vxdp("prog", "load", "--help")
    text = " ".join(r.out.split())  # however argparse wraps it
    assert r.code == 0 and "--replace" in text and "EBUSY" in text and "without --replace" in text


# -- item 3: the program does not outlive the daemon ----------------------------------------------

def test_kill_9_of_the_host_daemon_takes_its_program_off_the_port(topo):
    from guest_helpers import ping

    host, g = started(topo)
    with g:
        try:
            g.wait_connected()
            says = "through a bpf_link this daemon holds" if topo.engine == "kernel" else "nothing of the guest's"
            host.log.wait_for(says, timeout=10, proc=host.proc)  # says how its programs run
            load(topo, XDP1, "--device", DEVICE)  # xdp1 drops everything: the guest is cut off
            assert port_prog_id(topo) is not None
            assert ping(topo.traffic, GUEST_IP, 2, timeout=1.0) == 0
            host.stop(sig=signal.SIGKILL)
            assert host.proc.returncode == -signal.SIGKILL
        finally:
            host.stop()
        assert port_prog_id(topo) is None  # the daemon's link fd closed with it: the kernel detached

        # a crashed daemon leaves its socket files; the restarted one must be waited for on new ones
        for path in (topo.sock, topo.run_dir / f"host-{DEVICE}.sock"):
            if os.path.exists(path):
                os.unlink(path)
        with topo.host() as again:
            g.wait_connected(connects=2, timeout=60)
            dev = device_offload(topo)
            assert dev["programs"] == [] and dev["maps"] == [] and dev["attached"] is None
            assert port_prog_id(topo) is None
            try:
                poll(lambda: ping(topo.traffic, GUEST_IP, 1, timeout=1.0), lambda n: n == 1, timeout=30,
                     what="a ping reply from the guest through the restarted daemon")
            except HarnessTimeout as e:
                raise AssertionError(f"{e}\nguest: {g.show()['counters']}\nhost: {again.show()['counters']}\n"
                                     f"neigh: {topo.sh(topo.traffic, 'ip', 'neigh')}\n{again.output(3000)}\n"
                                     f"{g.output(3000)}") from None
            assert again.alive()

