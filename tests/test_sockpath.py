"""Socket paths a daemon owns (`vxdp.sockpath`): refused while served, reclaimed when stale, never
removed when another's. Real sockets, real flock, a second process where the rule is about one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from vxdp.sockpath import PathBusy, SocketClaim


def test_a_claimed_path_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "d.sock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from vxdp.sockpath import SocketClaim
        c = SocketClaim.take({str(path)!r}); s = c.listen(4)
        print("ready", flush=True); sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(PathBusy, match=f"already served by pid {holder.pid}") as e:
            SocketClaim.take(path)
        assert e.value.pid == holder.pid
        assert path.is_socket()  # the refused claim removed nothing
    finally:
        holder.kill()
        holder.wait()
    # killed (-9): the kernel dropped its lock; its socket is stale and is replaced
    claim = SocketClaim.take(path)
    s = claim.listen(4)
    try:
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(path))
        c.close()
    finally:
        s.close()
        claim.release()
    assert not path.exists() and not claim.lock_path.exists()


def test_a_foreign_listener_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "qemu.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))  # e.g. QEMU's server=on: listens, holds no vxdp claim
    other.listen(1)
    try:
        with pytest.raises(PathBusy, match=f"pid {os.getpid()}.*left as it is"):
            SocketClaim.take(path)
        assert path.is_socket()
    finally:
        other.close()


def test_release_removes_only_what_is_still_ours(tmp_path):
    path = tmp_path / "d.sock"
    claim = SocketClaim.take(path)
    s = claim.listen(4)
    s.close()
    os.rename(path, tmp_path / "moved.sock")  # ours lives on elsewhere, so the new one has another inode
    replacement = socket.socket(socket.AF_UNIX)
    replacement.bind(str(path))  # someone else's socket now has the name
    try:
        claim.release()
        assert path.is_socket()
    finally:
        replacement.close()
    claim.release()  # idempotent


def test_a_path_that_is_not_a_socket_is_left_alone(tmp_path):
    path = tmp_path / "file"
    path.write_text("data")
    with pytest.raises(OSError, match="not a socket"):
        SocketClaim.take(path)
    assert path.read_text() == "data"
