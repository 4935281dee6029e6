"""``vxdp demo``: the offload story in one minute, on a topology it builds and tears down.

    traffic netns --veth-- port  [vxdp host serve]  ==vhost-user==  [vxdp guest run]  tap  guest netns

1. the guest is reachable (ping through backend and driver);
2. the guest offloads xdp1 over its control virtqueue; the host verifies it and
   attaches it to the port;
3. a known mix of frames is sent at the guest: the host drops every one, the
   guest reads the per-protocol counters back through the ctrl vq, and its
   driver received none of them; the host shows the program and its counters;
4. the guest detaches: traffic reaches it again.

Everything it starts (namespaces, veths, both daemons) is removed on the way out,
whatever happens. Addresses are from 198.18.0.0/15.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .. import packets, rpc
from ..testing.daemon import GuestDaemon, HostDaemon
from ..testing.proc import HarnessError, HarnessTimeout, poll
from .objects import SAMPLES_DIR, read_object, sample
from .output import CliError

TRAFFIC_IP, GUEST_IP = "198.18.30.1", "198.18.30.2"
PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}


def add_parser(objects: argparse._SubParsersAction) -> None:
    demo = objects.add_parser("demo", help="offload xdp1 from a guest and show it work (builds its own topology)")
    demo.add_argument("--object", default=None, metavar="FILE.o", help=f"default: {SAMPLES_DIR}/xdp1.o")
    demo.add_argument("--frames", type=int, default=256, metavar="N", help="frames of the traffic mix (256)")
    demo.set_defaults(func=cmd_demo)


def _ping(ns: str, addr: str, count: int = 3) -> int:
    # check=False: ping exits 1 when no reply came back, which is what the demo shows once offloaded
    out = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-W", "1", "-i", "0.3", addr],
                         capture_output=True, text=True, timeout=30, check=False).stdout
    for line in out.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..frames import FrameBatch
    from ..netdev.port import Port
    from ..testing.netns import NetLab

    if args.frames < 1:
        raise CliError("--frames must be at least 1")  # no frames would pass the demo on nothing
    obj = Path(args.object).resolve() if args.object else sample("xdp1.o")
    read_object(obj)  # a bad object is refused before any namespace or daemon is made
    run_dir = Path(tempfile.mkdtemp(prefix="vxdp-demo-"))
    daemons: list[HostDaemon | GuestDaemon] = []
    ok = False
    with NetLab("vxd") as lab:
        try:
            traffic, hostns, guestns = lab.netns(ipv6=False), lab.netns(), lab.netns(ipv6=False)
            lab.veth(traffic, hostns, "vxdt0", "vxdp0", addr_a=f"{TRAFFIC_IP}/24")
            sock = str(run_dir / "vhost.sock")
            print("vxdp demo: XDP offload for virtio-net")
            print(f"  traffic netns {traffic} ({TRAFFIC_IP}) --veth-- port vxdp0 in {hostns}")
            print(f"  host:  vxdp host serve --socket {sock} --port vxdp0 --name demo0")
            print(f"  guest: vxdp guest run --netns {guestns} --tap vxdg0 --addr {GUEST_IP}/24 --name demo")
            print("  waiting for both daemons: each loads its compiled datapath kernels (or compiles them, "
                  "on a first run) before it serves", flush=True)
            host = HostDaemon(sock, "vxdp0", hostns, run_dir, name="demo0", log_file=run_dir / "host.log")
            daemons.append(host)
            guest = GuestDaemon(sock, guestns, "vxdg0", run_dir, name="demo", addr=f"{GUEST_IP}/24",
                                log_file=run_dir / "guest.log")
            daemons.append(guest)
            g = guest.wait_connected()
            print(f"  negotiated: offload {'yes' if g.get('offload') else 'NO'}, ctrl vq {'yes' if g['ctrl_vq'] else 'NO'}, "
                  f"guest MAC {g['mac']}")

            replies = _ping(traffic, GUEST_IP)
            print(f"\n1. ping {GUEST_IP} from the traffic netns: {replies}/3 replies")
            if not replies:
                raise CliError(f"demo: the guest did not answer ping before anything was offloaded: the datapath "
                               f"(port {hostns}/vxdp0 -> backend -> driver -> tap {guestns}/vxdg0) moves no "
                               f"frames; see `vxdp host show` and the daemon logs in {run_dir}")

            doc = guest.call("prog.load", path=str(obj), mode="offload", prog=None)
            (p,) = [p for p in doc["programs"] if p["attached"]]
            print(f"\n2. guest: vxdp prog load {obj.name} --offload --guest demo")
            print(f"   offloaded {p['name']} (guest handle {p['handle']}, tag {p['tag']}, {p['insns']} insns), "
                  f"maps: {', '.join(m['name'] for m in doc['maps'])}")

            before = guest.show()["counters"]["rx_frames"]
            frames = [bytes.fromhex(g["mac"].replace(":", "")) + f[6:] for f in packets.mix(args.frames)]
            sent = _send(traffic, frames, Port, FrameBatch)
            want = {k: v for k, v in packets.mix_protocol_counts(args.frames).items()}
            print(f"\n3. traffic: {sent} frames (TCP, UDP, ICMP over IPv4 and IPv6, VLAN, ARP) sent at the guest")

            def counts() -> dict[int, int]:
                dump = guest.call("map.dump", map="rxcnt")
                got = {int.from_bytes(bytes.fromhex(e["key"]), "little"): int.from_bytes(bytes.fromhex(e["value"]),
                                                                                           "little")
                       for e in dump["entries"]}
                return {k: v for k, v in got.items() if v}

            try:
                got = poll(counts, lambda c: c == want, timeout=10, what="the counters")
            except HarnessTimeout:
                got = counts()
            print("   guest reads rxcnt over the ctrl vq: "
                  + ", ".join(f"{PROTO_NAMES.get(k, k)} {v}" for k, v in sorted(got.items())))
            after = guest.show()["counters"]["rx_frames"]
            print(f"   frames that crossed the virtio ring to the guest meanwhile: {after - before}")
            hs = host.show()
            for hp in hs["offload"]["device"]["programs"]:
                at = hp["attached"]
                print(f"   host: {hp['kernel_name']} (kernel id {hp['kernel_id']}, tag {hp['tag']}) attached to "
                      f"{at['ifname'] if at else '-'}: "
                      + "  ".join(f"{k} {v}" for k, v in hp["actions"].items() if v or k in ("drop", "pass")))
            for hm in hs["offload"]["device"]["maps"]:
                print(f"   host: map {hm['kernel_name']} ({hm['type']}, {hm['memory']} bytes charged to the guest)")
            print(f"   ping {GUEST_IP} now: {_ping(traffic, GUEST_IP)}/3 replies (dropped on the host)")
            shown = subprocess.run([sys.executable, "-m", "vxdp.cli.main", "host", "show", "--name", "demo0"],
                                   capture_output=True, text=True, env=host.env, timeout=30,
                                   check=False).stdout  # shown only: the verdict below is the counters
            print("   $ vxdp host show --name demo0\n" + "".join(f"   {line}\n" for line in shown.splitlines()), end="")

            guest.call("prog.detach", mode=None)
            print(f"\n4. guest: vxdp prog detach --guest demo; ping {GUEST_IP}: {_ping(traffic, GUEST_IP)}/3 replies")
            left = host.show()["offload"]["device"]
            print(f"   host: {len(left['programs'])} programs, {len(left['maps'])} maps left offloaded")
            ok = got == want and after == before
            print("\ndemo " + ("passed: every frame counted on the host, none reached the guest" if ok
                               else f"FAILED: wanted {want}, got {got}; {after - before} frames reached the guest"))
            return 0 if ok else 1
        except (HarnessError, rpc.RpcError) as e:
            raise CliError(f"demo: {e}") from None
        finally:
            for d in reversed(daemons):
                d.stop()
                if not ok:
                    print(f"--- {d.what} (last output; all of it in {d.log_file}):\n{d.output()}", file=sys.stderr)
            print(f"torn down (daemon logs in {run_dir})")


def _send(ns: str, frames: list[bytes], port_cls: Any, batch_cls: Any) -> int:
    """Send ``frames`` out of the traffic veth with an AF_PACKET port (exact, in batches)."""
    sent = 0
    with port_cls("vxdt0", netns=ns) as port:
        batch = batch_cls.allocate(64, 2048)
        for i in range(0, len(frames), 64):
            batch.fill(frames[i : i + 64])
            sent += port.send_batch(batch)
    return sent

