"""vxdp's own daemons as subprocesses: started with the run dir in the child's environment only,
reachable on their control socket, stopped (cleanly or killed) with their output kept."""

from __future__ import annotations

import os
import signal

import pytest

from vxdp import rpc
from vxdp.testing.daemon import DaemonError, HostDaemon
from vxdp.testing.netns import NetLab
from vxdp.testing.proc import HarnessTimeout, poll

pytestmark = pytest.mark.privileged


@pytest.fixture
def hostns():
    with NetLab("vxtd") as lab:
        a, b = lab.netns(), lab.netns()
        lab.veth(a, b, "vxdp", "vxdq")
        yield a


def test_host_daemon_answers_and_stops_cleanly(hostns, tmp_path):
    before = os.environ.get(rpc.RUN_DIR_ENV)
    sock = str(tmp_path / "vh.sock")
    run_dir = tmp_path / "run"
    d = HostDaemon(sock, "vxdp", hostns, run_dir, name="td0", log_file=tmp_path / "host.log")
    try:
        assert os.environ.get(rpc.RUN_DIR_ENV) == before  # only the child's environment has it
        assert d.env[rpc.RUN_DIR_ENV] == str(run_dir)
        assert d.control == run_dir / "host-td0.sock" and d.control.exists() and os.path.exists(sock)
        assert d.show()["name"] == "td0"
        assert d.alive() and d.cpu_seconds()[0] >= 0
        with pytest.raises(rpc.RpcError):
            d.call("no.such.method")
    finally:
        rc = d.stop()
    assert rc == 0  # SIGTERM is a clean exit
    assert not d.control.exists()
    assert "td0" in (tmp_path / "host.log").read_text()
    with pytest.raises(DaemonError, match="exited with 0"):
        d.call("device.show")


def test_killed_daemon_reports_its_status(hostns, tmp_path):
    with HostDaemon(str(tmp_path / "vh.sock"), "vxdp", hostns, tmp_path, name="td1") as d:
        assert d.stop(sig=signal.SIGKILL) == -signal.SIGKILL
        assert not d.alive()


def test_daemon_that_cannot_start_fails_with_its_output(hostns, tmp_path):
    with pytest.raises(DaemonError, match="(?s)vxdp host td2.*nosuchport"):
        HostDaemon(str(tmp_path / "vh.sock"), "nosuchport", hostns, tmp_path, name="td2")


def test_poll_returns_the_value_or_times_out_with_it():
    values = iter(range(100))
    assert poll(lambda: next(values), lambda v: v >= 3, timeout=10, what="count") == 3
    with pytest.raises(HarnessTimeout, match="never: still False"):
        poll(lambda: False, timeout=0.1, what="never")
