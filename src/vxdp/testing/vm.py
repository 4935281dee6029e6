"""A real guest for tests and demos: QEMU (TCG) booting Debian's stock kernel, whose stock
virtio_net driver talks vhost-user to whatever backend owns the socket.

The image comes from ``tools/vm/build.sh`` (kernel + busybox initramfs; see docs/real-peers.md).
Its ``/init`` brings eth0 up from ``vxdp.addr=``/``vxdp.gw=`` on the kernel command line, prints
``VXDP-VM-READY`` and then runs one shell line at a time from the serial console, printing
``VXDP-RC=<status>`` after each. :meth:`Vm.run` prefixes every line with a numbered
``echo VXDP-BEGIN-<n>`` so that a command that timed out cannot be mistaken for the next one.

Facts this module relies on (measured here, QEMU 7.2 from Debian 12):
- KVM cannot boot a stock kernel on these machines, so ``-accel tcg``; boot takes ~6-8 s.
- vhost-user needs guest memory the backend can map: a shared memfd memory backend bound
  to the NUMA node (``-numa node,memdev=mem``).
- QEMU 7.2 under TCG segfaults at DRIVER_OK on a vhost-user virtio-net-pci device with MSI-X;
  ``vectors=0`` (INTx) avoids it.
- ``server=on`` on the chardev: QEMU listens on the socket and does not start the guest until
  a backend connects. Without it QEMU connects to a listening backend at start-up and fails
  if nobody listens (``reconnect=N`` makes it retry every N seconds instead).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from .proc import HarnessError, HarnessTimeout, OutputLog, close_pipes, spawn, stop_process, wait_for_path

READY_MARKER = "VXDP-VM-READY"
QEMU = "qemu-system-x86_64"
DEFAULT_MAC = "52:54:00:12:34:56"


class VmError(HarnessError):
    """The VM could not be built or started, died, or a command could not be run."""


@dataclass(frozen=True)
class VmImage:
    """A bootable kernel and initramfs (paths on the host)."""

    kernel: Path
    initrd: Path


def repo_root() -> Path:
    """The checkout this package runs from (src/vxdp/testing/vm.py → three levels up)."""
    return Path(__file__).resolve().parents[3]


def build_image(out_dir: str | Path | None = None, *, timeout: float = 900.0) -> VmImage:
    """Run tools/vm/build.sh (cached and idempotent: fast after the first time) and return the image."""
    script = repo_root() / "tools" / "vm" / "build.sh"
    if not script.exists():
        raise VmError(f"{script} not found: build_image needs a source checkout")
    argv = [str(script)] + ([str(out_dir)] if out_dir is not None else [])
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise VmError(f"{script} took longer than {timeout:g} s") from e
    if res.returncode != 0:
        raise VmError(f"{script} failed (status {res.returncode}):\n{res.stderr[-2000:]}")
    lines = res.stdout.split()
    if len(lines) != 2:
        raise VmError(f"{script} printed {res.stdout!r}, expected the kernel and initrd paths")
    return VmImage(Path(lines[0]), Path(lines[1]))


def qemu_argv(image: VmImage, socket_path: str, *, mem_mb: int, addr: str | None, gw: str | None,
              mac: str, server: bool, mtu: int | None = None, reconnect: int | None = None,
              qemu: str = QEMU) -> list[str]:
    """The QEMU command line (public so that docs and benchmarks show exactly what ran)."""
    append = ["console=ttyS0", "quiet", "panic=-1"]
    if addr:
        append.append(f"vxdp.addr={addr}")
    if gw:
        append.append(f"vxdp.gw={gw}")
    if mtu:
        append.append(f"vxdp.mtu={mtu}")
    chardev = f"socket,id=chr0,path={socket_path}"
    if server:
        chardev += ",server=on"
    elif reconnect:
        chardev += f",reconnect={reconnect}"
    return [
        qemu, "-accel", "tcg", "-machine", "pc", "-m", str(mem_mb), "-smp", "1",
        "-object", f"memory-backend-memfd,id=mem,size={mem_mb}M,share=on", "-numa", "node,memdev=mem",
        "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", " ".join(append),
        "-chardev", chardev, "-netdev", "vhost-user,id=net0,chardev=chr0",
        "-device", f"virtio-net-pci,netdev=net0,mac={mac},vectors=0",
    ]


class Vm:
    """One QEMU guest on a vhost-user socket; a context manager that always kills QEMU.

    QEMU starts in the constructor. In server mode (``server=True``) it creates ``socket_path``
    and waits for the backend to connect (:meth:`wait_socket` tells when it listens); in client
    mode the backend must already listen there. :meth:`wait_ready` (called by :meth:`run` if
    needed) waits until the guest's command loop is up.
    """

    def __init__(self, socket_path: str | Path, *, image: VmImage | None = None, mem_mb: int = 512,
                 addr: str | None = "198.18.1.2/24", gw: str | None = None, mac: str = DEFAULT_MAC,
                 server: bool = True, mtu: int | None = None, reconnect: int | None = None,
                 qemu: str = QEMU, die_with_parent: bool = True):
        if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac):
            raise VmError(f"bad MAC address {mac!r}")
        if mem_mb < 128:
            raise VmError(f"mem_mb={mem_mb}: the guest needs at least 128 MB")
        self.socket_path = str(socket_path)
        self.server = server
        self.image = image if image is not None else build_image()
        if server and os.path.exists(self.socket_path):
            os.unlink(self.socket_path)  # a stale socket from an earlier run; QEMU would fail to bind
        self.argv = qemu_argv(self.image, self.socket_path, mem_mb=mem_mb, addr=addr, gw=gw, mac=mac,
                              server=server, mtu=mtu, reconnect=reconnect, qemu=qemu)
        self._lock = threading.Lock()
        self._seq = 0
        self._ready = False
        self._proc = spawn(self.argv, die_with_parent=die_with_parent)
        self.console = OutputLog([self._proc.stdout], "vm console")
        self.stderr = OutputLog([self._proc.stderr], "qemu stderr")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def wait_socket(self, timeout: float = 10.0) -> None:
        """Server mode: wait until QEMU has created its listening socket."""
        try:
            wait_for_path(self.socket_path, timeout=timeout, proc=self._proc, what="QEMU's vhost-user socket")
        except HarnessError as e:
            raise VmError(f"{e}; qemu stderr:\n{self.stderr.tail()}") from e

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait for the guest's ``VXDP-VM-READY`` (the boot is done and eth0 configured)."""
        if self._ready:
            return
        try:
            self.console.wait_for(re.escape(READY_MARKER), timeout=timeout, proc=self._proc)
        except HarnessError as e:
            raise VmError(f"guest not ready: {e}\nqemu stderr:\n{self.stderr.tail()}") from e
        errors = re.findall(r"^VXDP-VM-ERROR .*$", self.console.text, re.MULTILINE)
        if errors:
            raise VmError(f"guest init reported: {'; '.join(errors)}")
        self._ready = True

    def run(self, cmd: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run one shell line in the guest; return (exit status, its output).

        Bound the command itself too (``ping -c 3 -W 2``, ``timeout 10 nc ...``): on a timeout the
        guest is still busy with it and later commands queue behind it.
        """
        if "\n" in cmd or "\r" in cmd:
            raise VmError(f"one line per command, got {cmd!r}")
        self.wait_ready()
        with self._lock:
            self._seq += 1
            begin = f"VXDP-BEGIN-{self._seq}"
            start = len(self.console)
            try:
                self._proc.stdin.write(f"echo {begin}; {cmd}\n".encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError) as e:
                raise VmError(f"the VM is gone (status {self._proc.poll()})") from e
            try:
                m_begin = self.console.wait_for(rf"^{begin}\n", start=start, timeout=timeout, proc=self._proc)
                m_rc = self.console.wait_for(r"^VXDP-RC=(\d+)\n", start=m_begin.end(), timeout=timeout,
                                             proc=self._proc)
            except HarnessTimeout as e:
                raise VmError(f"guest command {cmd!r} did not finish within {timeout:g} s: {e}") from e
            except HarnessError as e:
                raise VmError(f"guest command {cmd!r}: {e}") from e
            return int(m_rc.group(1)), self.console.text[m_begin.end():m_rc.start()]

    def check(self, cmd: str, timeout: float = 30.0) -> str:
        """:meth:`run`, raising VmError with the output when the status is not 0."""
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise VmError(f"guest command {cmd!r} exited {rc}:\n{out}")
        return out

    # A checksummed transfer with busybox tools. httpd/wget rather than nc: busybox's small nc
    # in listen mode quits when its own stdin reaches EOF, truncating what it receives.

    def serve_random_file(self, name: str, size_kib: int, *, port: int = 8080) -> str:
        """Write ``size_kib`` KiB of random bytes to /tmp/www/NAME, serve /tmp/www over HTTP on
        ``port`` (busybox httpd, started once per port) and return the file's sha256 hex digest."""
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or not 0 < size_kib <= 256 * 1024:
            raise VmError(f"bad file {name!r} or size {size_kib} KiB")
        out = self.check(f"mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/{name} bs=1024 "
                         f"count={size_kib} 2>/dev/null && sha256sum /tmp/www/{name}", timeout=60)
        self.check(f"[ -e /tmp/httpd.{port} ] || {{ httpd -p {port} -h /tmp/www && touch /tmp/httpd.{port}; }}")
        return out.split()[0]

    def fetch_sha256(self, url: str, *, timeout: float = 60.0) -> tuple[str, int]:
        """wget ``url`` into the guest's /tmp and return (sha256 hex digest, size in bytes)."""
        if not re.fullmatch(r"http://[A-Za-z0-9.:\[\]/_-]+", url):
            raise VmError(f"bad URL {url!r}")
        t = max(1, int(timeout))
        out = self.check(f"rm -f /tmp/fetched && timeout {t} wget -q -O /tmp/fetched {url} && "
                         "sha256sum /tmp/fetched && wc -c < /tmp/fetched", timeout=timeout + 10)
        digest, _, size = out.split()
        return digest, int(size)

    def close(self) -> None:
        """Kill QEMU (the guest has nothing to save) and reap it; safe to call twice."""
        stop_process(self._proc, grace=5.0)
        self.console.join()
        self.stderr.join()
        close_pipes(self._proc)
        if self.server:
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
