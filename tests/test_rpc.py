"""The control-socket protocol: a real AF_UNIX server polled like a daemon does, and the client."""

from __future__ import annotations

import errno
import socket
import threading

import pytest

from vxdp import rpc
from vxdp.eventloop import Loop


@pytest.fixture
def server(tmp_path):
    def fail(**_):
        raise OSError(errno.ENOENT, "no such map")

    def missing(**_):
        raise KeyError("x.o: no programs")

    srv = rpc.Server(tmp_path / "ctl.sock", {"echo": lambda **p: p, "fail": fail, "refuse": _refuse,
                                             "missing": missing})
    loop = Loop()
    srv.attach(loop)
    t = threading.Thread(target=loop.run, kwargs={"tick": 0.05}, daemon=True)
    t.start()
    yield srv
    loop.stop()
    t.join(5)
    srv.close()
    loop.close()


def _refuse(**_):
    raise rpc.RpcError("EPERM", "policy: helper bpf_fib_lookup is not allowed", data={"rule": "helpers.allow"})


def test_call_returns_result(server):
    assert rpc.call(server.path, "echo", a=1, b=[1, 2]) == {"a": 1, "b": [1, 2]}


def test_errors_carry_code_errno_and_data(server):
    with pytest.raises(rpc.RpcError) as e:
        rpc.call(server.path, "fail")
    assert e.value.code == "ENOENT" and e.value.errno == errno.ENOENT and "no such map" in e.value.message
    with pytest.raises(rpc.RpcError) as e:
        rpc.call(server.path, "refuse")
    assert e.value.code == "EPERM" and e.value.data == {"rule": "helpers.allow"}
    with pytest.raises(rpc.RpcError) as e:
        rpc.call(server.path, "nope")
    assert e.value.code == "EOPNOTSUPP"


def test_a_key_error_is_its_message_without_quotes(server):
    with pytest.raises(rpc.RpcError) as e:
        rpc.call(server.path, "missing")
    assert e.value.message == "x.o: no programs"


def test_garbage_gets_an_error_and_the_server_keeps_serving(server):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(server.path))
        s.sendall(b"this is not json\n[1,2]\n")
        replies = b""
        while replies.count(b"\n") < 2:
            replies += s.recv(4096)
    assert replies.count(b'"EINVAL"') == 2
    assert rpc.call(server.path, "echo", x=1) == {"x": 1}


def test_no_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(rpc.RpcError) as e:
        rpc.call(tmp_path / "absent.sock", "echo")
    assert e.value.code == "ENOENT" and "no daemon listening" in e.value.message


def test_paths_follow_run_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(rpc.RUN_DIR_ENV, str(tmp_path))
    assert rpc.host_socket("dev0") == tmp_path / "host-dev0.sock"
    assert rpc.guest_socket("g1") == tmp_path / "guest-g1.sock"


def test_many_connections_in_a_row_reuse_fds_safely(server):
    # each call opens and closes a connection: fd numbers are reused, and must be served every time
    for i in range(200):
        assert rpc.call(server.path, "echo", i=i, timeout=10) == {"i": i}
