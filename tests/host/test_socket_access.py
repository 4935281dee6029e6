"""Who may reach a daemon: both its sockets are 0600 whatever the umask it started under, and its
control socket checks each peer (SO_PEERCRED) even where the file mode would let it in.

The other user is ``nobody`` (uid 65534), in a forked child of this test that drops to it: the
child tries the request a hostile local user would (``offload.show``, ``prog.load``) and reports
what it got back through a pipe.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest
from host_helpers import Daemon, quiet_lab
from testpaths import SAMPLES_BUILD

from vxdp.testing.netns import NetLab

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

NOBODY = 65534


def as_nobody(control: str, method: str, /, groups: tuple[int, ...] = (), **params) -> str:
    """What user nobody (in ``groups``) gets asking ``method`` on the control socket: a reply line or an error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, ask, report, exit without running any of pytest's code
        try:
            os.close(r)
            os.setgroups(list(groups))
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            try:
                s.connect(control)
                try:
                    s.sendall(json.dumps({"method": method, "params": params}).encode() + b"\n")
                except BrokenPipeError:
                    pass  # a refused peer is answered and closed at once, maybe before it sends
                out = s.recv(65536).decode() or "EOF"
            except OSError as e:
                out = f"OSError {e.errno}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.fixture
def open_dir():
    """A folder anyone may traverse (pytest's tmp_path is 0700), removed after."""
    d = Path(tempfile.mkdtemp(prefix="vxdp-access-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_sockets_are_0600_under_umask_000_and_peers_are_checked(open_dir):
    with NetLab("vxu") as lab:
        pair = quiet_lab(lab)
        sock = str(open_dir / "vh.sock")
        old = os.umask(0)  # the daemon inherits it
        try:
            d = Daemon(open_dir, sock, "vxp", netns=pair.ns_a, name="hu")
        finally:
            os.umask(old)
        with d:
            for path in (sock, str(d.control)):
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
            got = as_nobody(str(d.control), "offload.show")
            assert got == "OSError 13", got  # EACCES: the mode keeps nobody out
            os.chmod(d.control, 0o666)  # a mistake (or a path opened earlier): the peer check still holds
            for method, params in (("offload.show", {}),
                                   ("prog.load", {"path": str(SAMPLES_BUILD / "xdp1.o"), "mode": "offload"})):
                reply = json.loads(as_nobody(str(d.control), method, **params))
                assert reply["error"]["code"] == "EACCES" and f"uid {NOBODY}" in reply["error"]["message"]
            dev = d.show()  # root still may, and nothing was loaded
            assert dev["offload"]["device"]["programs"] == []


def test_an_operator_group_opens_both_sockets_to_its_members_only(open_dir):
    users = grp.getgrnam("users").gr_gid  # a group every Debian system has, that nobody is not in
    with NetLab("vxu") as lab:
        pair = quiet_lab(lab)
        sock = str(open_dir / "vh.sock")
        with Daemon(open_dir, sock, "vxp", netns=pair.ns_a, name="hg", extra=("--group", "users")) as d:
            for path in (sock, str(d.control)):
                st = os.stat(path)
                assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, users), path
            member = json.loads(as_nobody(str(d.control), "offload.show", groups=(users,)))
            assert "result" in member, member
            assert as_nobody(str(d.control), "offload.show") == "OSError 13"  # not a member: kept out
