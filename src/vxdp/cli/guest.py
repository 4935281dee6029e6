"""``vxdp guest …``: run the guest driver (a vhost-user frontend bridged to a tap), show its state."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .output import CliError, emit_json


def add_parser(objects: argparse._SubParsersAction) -> None:
    guest = objects.add_parser("guest", help="the guest driver: a virtio-net frontend bridged to a tap in a netns")
    cmds = guest.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = cmds.add_parser(
        "run",
        help="drive a vhost-user device and bridge it to a tap in a network namespace",
        description="Connect to the vhost-user socket (or listen on it with --server), set up a "
        "virtio-net device like DPDK's virtio-user, and bridge it to tap IFNAME in netns NS. The "
        "namespace is created if missing (and then removed on exit). Reconnects when the backend "
        "restarts. Stops on SIGTERM/SIGINT, removing the tap and its sockets.",
    )
    run.add_argument("--socket", required=True, metavar="PATH", help="the vhost-user socket")
    run.add_argument("--netns", required=True, metavar="NS", help="the guest's network namespace")
    run.add_argument("--tap", required=True, metavar="IFNAME", help="the tap to create in NS")
    run.add_argument("--addr", metavar="CIDR", help="IPv4 address of the tap, e.g. 198.18.0.2/24")
    run.add_argument("--name", metavar="GUEST", help="name of the control socket (default: the tap name)")
    run.add_argument("--mtu", type=int, default=1500, metavar="N", help="MTU of the tap (default 1500)")
    run.add_argument("--mac", metavar="MAC", help="the device MAC when the backend reports none")
    run.add_argument("--server", action="store_true", help="listen on PATH; the backend connects")
    run.add_argument("--mem-mb", type=int, default=64, metavar="N", help="guest memory in MiB (default 64)")
    run.add_argument("--queue-size", type=int, metavar="N",
                     help="rx/tx ring size, a power of two (default: the driver's, which `vxdp guest show` "
                          "lists with each ring)")
    run.add_argument("--no-gro", dest="gro", action="store_false",
                     help="write received frames to the tap one by one, not a TCP flow's segments merged "
                          "into GSO super-frames (the default)")
    run.add_argument("-v", "--verbose", action="count", default=0, help="log connections (-vv: debug)")
    run.set_defaults(func=cmd_run)

    show = cmds.add_parser("show", help="a running guest driver's features, rings and counters")
    show.add_argument("--name", metavar="GUEST", help="which guest (default: the only one running)")
    show.add_argument("-j", "--json", action="store_true", help="JSON output")
    show.set_defaults(func=cmd_show)


def cmd_run(args: argparse.Namespace) -> int:
    from ..bench import guest_hooks
    from ..guest.driver import GuestDriverError
    from ..guest.server import GuestDaemon, GuestDaemonError
    from ..virtio.net import NetError, parse_mac

    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="vxdp guest: %(message)s")
    try:
        mac = parse_mac(args.mac) if args.mac else None
    except NetError as e:
        raise CliError(f"--mac: {e}") from None
    sizes = {} if args.queue_size is None else {"queue_size": args.queue_size}  # else the driver's default
    try:
        # the benchmark methods too: `vxdp bench datapath` measures the daemon as users run it
        daemon = GuestDaemon(args.socket, netns=args.netns, tap=args.tap, addr=args.addr, name=args.name,
                             mtu=args.mtu, mac=mac, server=args.server, mem_mb=args.mem_mb, gro=args.gro,
                             extra_methods=guest_hooks.methods, **sizes)
    except (GuestDaemonError, GuestDriverError) as e:
        raise CliError(str(e)) from None
    daemon.run()
    return 0


def _find_name(name: str | None) -> str:
    from .. import rpc

    if name:
        return name
    found = sorted(p.name[len("guest-"):-len(".sock")] for p in rpc.run_dir().glob("guest-*.sock"))
    if len(found) != 1:
        raise CliError(f"{len(found)} guests running under {rpc.run_dir()}: give --name"
                       + (f" ({', '.join(found)})" if found else ""))
    return found[0]


def cmd_show(args: argparse.Namespace) -> int:
    from .. import rpc

    name = _find_name(args.name)
    try:
        doc = rpc.call(rpc.guest_socket(name), "guest.show", timeout=10.0)
    except rpc.RpcError as e:
        raise CliError(f"guest {name}: {e.message}") from None
    if args.json:
        emit_json(doc)
    else:
        _print(doc)
    return 0


def _print(doc: dict[str, Any]) -> None:
    state = "connected" if doc["connected"] else "disconnected"
    print(f"guest {doc['name']}: {state} ({doc['mode']}) on {doc['socket']}, "
          f"tap {doc['tap']} in netns {doc['netns']}, mac {doc['mac']}, mtu {doc['mtu']}")
    if doc["features"]:
        print("  features: " + " ".join(doc["features"]))
    for r in doc["rings"]:
        print(f"  vring {r['index']} ({r['name']}): size {r['num']}, avail {r['avail_idx']}, "
              f"used {r['last_used_idx']}, free {r['free']}")
    c = doc["counters"]
    print(f"  rx {c['rx_frames']} frames {c['rx_bytes']} bytes, dropped {c['rx_dropped']}")
    print(f"  tx {c['tx_frames']} frames {c['tx_bytes']} bytes, dropped {c['tx_dropped']}")
    print(f"  connects {c['connects']}, disconnects {c['disconnects']}")
    if doc.get("last_error"):
        print(f"  last error: {doc['last_error']}")
