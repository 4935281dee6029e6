"""What the daemons' own commands say is what the host did (issue: "what the commands say").

Each runs the documented CLI against real daemons: a second daemon for a served device or
socket is refused and leaves the first reachable; a dead daemon's device is reported, with a
non-zero exit; a missing netns is named as such; a device without offload says so; a guest
with no backend says it is waiting; feature words are integers in every JSON view.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from offload_topology import DEVICE, GUEST, OffloadTopo, offload_topology
from testpaths import SAMPLES_BUILD

from vxdp.testing.proc import OutputLog, spawn, stop_process

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture
def topo(tmp_path, samples_built):
    yield from offload_topology(tmp_path, prefix="vxk")


def serve(topo: OffloadTopo, *args: str) -> subprocess.CompletedProcess:
    """``vxdp host serve ARGS`` that is expected to refuse at once (bounded)."""
    return subprocess.run([sys.executable, "-m", "vxdp.cli.main", "host", "serve", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=dict(os.environ, VXDP_RUN_DIR=str(topo.run_dir)))


def test_a_second_daemon_for_a_served_device_or_socket_is_refused(topo):
    with topo.host() as host:
        control = topo.run_dir / f"host-{DEVICE}.sock"
        same_name = serve(topo, "--socket", str(topo.run_dir / "other.sock"), "--port", "vxp0", "--netns",
                          topo.hostns, "--name", DEVICE)
        assert same_name.returncode == 1
        assert f"device {DEVICE} is already served by pid {host.pid}" in same_name.stderr
        same_socket = serve(topo, "--socket", topo.sock, "--port", "vxp0", "--netns", topo.hostns, "--name", "od9")
        assert same_socket.returncode == 1
        assert f"{topo.sock} is already served by pid {host.pid}" in same_socket.stderr
        # the first daemon kept both its sockets and answers as before
        assert control.is_socket() and os.path.exists(topo.sock)
        assert topo.ok("host", "show", "--name", DEVICE)[0]["pid"] == host.pid
        assert not (topo.run_dir / "host-od9.sock").exists()


def test_a_dead_daemons_device_is_reported_and_its_paths_reclaimed(topo):
    host = topo.host()
    host.stop(sig=signal.SIGKILL)
    r = topo.vxdp("host", "show")
    assert r.code == 1 and f"{DEVICE}: not running" in r.out
    r = topo.vxdp("host", "show", "--name", DEVICE)
    assert r.code == 1 and "not running" in r.err
    r = topo.vxdp("host", "show", "-j")
    assert r.code == 1 and "not running" in r.json()[0]["error"]
    with topo.host() as again:  # the stale sockets of the killed daemon are replaced, not refused
        assert topo.ok("host", "show", "--name", DEVICE)[0]["pid"] == again.pid


def test_host_serve_names_a_missing_netns(topo):
    r = serve(topo, "--socket", topo.sock, "--port", "vxp0", "--netns", "vxk-no-such-ns", "--name", "od8")
    assert r.returncode == 1
    assert "--netns vxk-no-such-ns: no such network namespace" in r.stderr and "AF_PACKET" not in r.stderr


def test_operator_load_on_a_device_without_offload_says_so(topo):
    with topo.host("--no-offload"):
        r = topo.vxdp("prog", "load", str(SAMPLES_BUILD / "xdp1.o"), "--device", DEVICE)
        assert r.code == 1
        assert "does not offer XDP offload (it was started with --no-offload)" in r.err
        assert "unknown method" not in r.err


def test_a_guest_with_no_backend_says_it_waits(topo):
    # no -v: what a user sees by default
    argv = [sys.executable, "-m", "vxdp.cli.main", "guest", "run", "--socket", str(topo.run_dir / "nobody.sock"),
            "--netns", topo.guest, "--tap", "vxg0", "--name", GUEST]
    proc = spawn(argv, env=dict(os.environ, VXDP_RUN_DIR=str(topo.run_dir)))
    log = OutputLog([proc.stdout, proc.stderr], "vxdp guest")
    try:
        log.wait_for("no backend on", timeout=120)
    finally:
        stop_process(proc, grace=10)
        log.join()
    assert f"no backend on {topo.run_dir / 'nobody.sock'} yet" in log.text


def test_a_second_guest_of_the_same_name_is_refused(topo):
    with topo.host(), topo.guest_proc() as g:
        g.wait_connected()
        r = subprocess.run([sys.executable, "-m", "vxdp.cli.main", "guest", "run", "--socket", topo.sock,
                            "--netns", topo.guest, "--tap", "vxg9", "--name", GUEST], capture_output=True, text=True,
                           timeout=60, check=False, env=dict(os.environ, VXDP_RUN_DIR=str(topo.run_dir)))
        assert r.returncode == 1 and f"guest {GUEST} is already served by pid {g.pid}" in r.stderr
        assert g.show()["connected"]


def test_feature_words_are_integers_in_every_json_view(topo):
    with topo.host(), topo.guest_proc() as g:
        g.wait_connected()
        (dev,) = topo.ok("host", "show", "--name", DEVICE)
        guest = topo.ok("guest", "show", "--name", GUEST)
        for doc, key in ((dev, "protocol_features"), (dev, "features"), (dev, "features_offered"),
                         (guest, "protocol_features")):
            assert isinstance(doc[key], int) and doc[key] > 0, (key, doc[key])
        assert dev["protocol_features"] == guest["protocol_features"]
        shown = topo.vxdp("host", "show", "--name", DEVICE).out
        assert f"features {dev['features']:#x}" in shown
