"""`vxdp host serve` under a real QEMU guest (TCG, Debian's stock kernel and virtio_net driver).

Topology: guest eth0 (198.18.1.2) = virtio-net over vhost-user = our daemon = veth ``vxp``
(in the port netns) <-> ``vxq`` (198.18.1.1, in the traffic netns). QEMU keeps the ctrl vq:
the daemon sees only rx and tx. Offloads are off on the veths (quiet_lab) because neither
AF_PACKET nor the guest (no CSUM/GSO features offered) takes partial checksums or GSO frames.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys

import pytest
from host_helpers import Daemon, poll, quiet_lab

from vxdp.rpc import RpcError
from vxdp.testing.netns import NetLab
from vxdp.testing.vm import Vm, build_image

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

GUEST = "198.18.1.2"
PEER = "198.18.1.1"


@pytest.fixture(scope="module")
def vm_image():
    return build_image()


@pytest.fixture
def lab():
    with NetLab(prefix="vxq") as lab:
        yield lab, quiet_lab(lab, addr_peer=f"{PEER}/24")


def _ns(ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=False, capture_output=True, text=True,
                          timeout=timeout)


def _pings(vm: Vm, traffic_ns: str) -> None:
    # First reachability, bounded: right after boot a TCG guest may still be bringing eth0 up and
    # resolving ARP when the first echo leaves (seen under load: 1 of 3 lost). Then the count is exact.
    for _ in range(10):
        if vm.run(f"ping -c 1 -W 3 {PEER}", timeout=30)[0] == 0:
            break
    rc, out = vm.run(f"ping -c 3 -W 5 {PEER}", timeout=60)
    assert rc == 0 and "3 packets received" in out, out
    r = _ns(traffic_ns, "busybox", "ping", "-c", "3", "-W", "5", GUEST)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr


def _fetch_from_guest(traffic_ns: str, url: str) -> str:
    code = ("import hashlib,sys,urllib.request;"
            f"print(hashlib.sha256(urllib.request.urlopen({url!r}, timeout=60).read()).hexdigest())")
    r = _ns(traffic_ns, sys.executable, "-c", code, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_qemu_guest_ping_and_checked_transfers(vm_image, lab, tmp_path):
    """QEMU connects to our listening daemon (QEMU in client mode)."""
    _, pair = lab
    sock = str(tmp_path / "vh.sock")
    www = tmp_path / "www"
    www.mkdir()
    blob = os.urandom(4 << 20)
    (www / "blob").write_bytes(blob)
    with Daemon(tmp_path / "run", sock, "vxp", netns=pair.ns_a) as d:
        with Vm(sock, image=vm_image, addr=f"{GUEST}/24", server=False) as vm:
            vm.wait_ready(timeout=120)
            _pings(vm, pair.ns_b)
            # guest -> host: 4 MiB served by the guest's busybox httpd, checked on the host side
            digest = vm.serve_random_file("blob", 4096)
            assert _fetch_from_guest(pair.ns_b, f"http://{GUEST}:8080/blob") == digest
            # host -> guest: 4 MiB served in the traffic netns, checked in the guest
            srv = subprocess.Popen(["ip", "netns", "exec", pair.ns_b, sys.executable, "-m", "http.server", "8000",
                                    "--bind", PEER, "--directory", str(www)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                poll(lambda: _ns(pair.ns_b, "ss", "-ltn").stdout, until=lambda o: ":8000" in o, what="http.server")
                got, size = vm.fetch_sha256(f"http://{PEER}:8000/blob", timeout=120)
            finally:
                srv.terminate()
                srv.wait(10)
            assert (got, size) == (hashlib.sha256(blob).hexdigest(), len(blob))
            show = d.show()
            assert show["connected"] and [v["running"] for v in show["vrings"]] == [True, True, False]
            c = show["counters"]
            assert c["rx"]["bytes"] > len(blob) and c["tx"]["bytes"] > len(blob)
            assert c["rx"]["errors"] == c["tx"]["errors"] == 0
            # the peer's veth keeps TSO on: its TCP super-frames reached the guest cut, none dropped
            assert show["port"]["gso_frames"] > 0, show["port"]
            assert show["port"]["oversize"] == show["port"]["gso_refused"] == 0, show["port"]
        poll(lambda: d.show()["connected"], until=lambda x: not x, what="session end after QEMU died")
        assert d.alive()


def _carrier(vm: Vm) -> str:
    """What the guest's stock virtio_net says of its link: QEMU sets it down when the backend goes."""
    return vm.run("cat /sys/class/net/eth0/carrier", timeout=30)[1].strip()


def _show_once_up(d: Daemon) -> dict:
    """The new daemon's ``device.show`` once it answers: after a kill -9 the old control socket is
    still on disk (nobody unlinked it), so the path alone does not say the new daemon is up."""
    def get() -> dict | None:
        try:
            return d.show()
        except RpcError as e:
            if not e.message.startswith("no daemon listening"):
                raise
            return None
    return poll(get, until=lambda doc: doc is not None and doc["connected"], timeout=30,
                what="the restarted daemon connected to QEMU")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_backend_restarted_qemu_server_mode_reconnects(vm_image, lab, tmp_path, sig):
    """QEMU listens (server=on); the daemon runs with --client. The daemon is killed (SIGKILL: no
    clean-up at all) or stopped (SIGTERM: a clean exit); either way the guest sees its link go down,
    and once a new daemon runs, the link come back and traffic flow both ways, without touching QEMU."""
    _, pair = lab
    sock = str(tmp_path / "vh.sock")
    run = tmp_path / "run"
    with Vm(sock, image=vm_image, addr=f"{GUEST}/24", server=True) as vm:
        vm.wait_socket()
        d1 = Daemon(run, sock, "vxp", netns=pair.ns_a, client=True)
        try:
            vm.wait_ready(timeout=120)
            _pings(vm, pair.ns_b)
            pid1 = d1.show()["pid"]
            assert _carrier(vm) == "1"
        finally:
            rc = d1.stop(sig=sig)
        assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
        # a killed daemon leaves its control socket behind; a stopped one removes it
        assert (run / "host-t0.sock").exists() == (sig == signal.SIGKILL)
        poll(lambda: _carrier(vm), until=lambda c: c == "0", timeout=60, what="guest link down after the backend went")
        assert vm.run(f"ping -c 1 -W 2 {PEER}", timeout=30)[0] != 0  # nothing answers meanwhile
        with Daemon(run, sock, "vxp", netns=pair.ns_a, client=True) as d2:
            show = _show_once_up(d2)
            assert show["pid"] != pid1 and d2.alive()
            poll(lambda: _carrier(vm), until=lambda c: c == "1", timeout=60, what="guest link up again")
            # The first pings may race the guest's link coming back: retry the first one, bounded.
            poll(lambda: vm.run(f"ping -c 1 -W 2 {PEER}", timeout=30)[0], until=lambda rc: rc == 0, timeout=60,
                 what="guest ping after the backend restarted")
            _pings(vm, pair.ns_b)
            c = d2.show()["counters"]  # the guest's traffic went through the new daemon
            assert c["rx"]["frames"] > 0 and c["tx"]["frames"] > 0 and c["rx"]["errors"] == c["tx"]["errors"] == 0
