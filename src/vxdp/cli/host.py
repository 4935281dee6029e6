"""``vxdp host …``: the vhost-user backend daemon (``serve``) and what it is doing (``show``)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ..engine import ENGINES
from .output import CliError, emit_json


def add_parser(objects: argparse._SubParsersAction) -> None:
    host = objects.add_parser("host", help="the host side: the vhost-user virtio-net backend")
    cmds = host.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = cmds.add_parser(
        "serve", help="serve a virtio-net device over vhost-user, bridged to a host netdev",
        description="Run the vhost-user backend (the device) of one virtio-net NIC whose frames go to "
        "and come from the netdev IFNAME. Serves one frontend (QEMU, DPDK virtio_user, vxdp guest) at a "
        "time and waits for the next when it goes away. Stops on SIGTERM/SIGINT.")
    serve.add_argument("--socket", required=True, metavar="PATH", help="the vhost-user socket")
    serve.add_argument("--port", required=True, metavar="IFNAME", help="the host netdev (e.g. one end of a veth)")
    serve.add_argument("--name", default="vxdp0", metavar="DEV", help="device name (default: vxdp0)")
    serve.add_argument("--client", action="store_true",
                       help="connect to PATH (the frontend listens; reconnect when it goes away)")
    serve.add_argument("--netns", metavar="NS", help="the namespace IFNAME lives in (default: the current one)")
    serve.add_argument("--mac", default="52:54:00:12:34:56", help="MAC address in the config space")
    serve.add_argument("--mtu", type=int, default=1500, help="MTU in the config space (default 1500)")
    serve.add_argument("--policy", metavar="FILE", help="offload policy (TOML; default: the safe built-in one)")
    serve.add_argument("--engine", choices=ENGINES,
                       help="what runs offloaded programs: kernel (the host kernel's verifier and JIT on the "
                       "port's XDP hook), or an engine of this daemon that keeps every guest program and map "
                       "out of the host kernel and runs them on each batch of the port's frames: "
                       + ", ".join(e for e in ENGINES if e != "kernel")
                       + ". Default: the policy's engine.name, else kernel")
    serve.add_argument("--no-offload", dest="offload", action="store_false",
                       help="plain virtio-net: do not offer XDP offload (feature bit 58)")
    serve.add_argument("--group", metavar="GROUP",
                       help="operator group: both sockets 0660 and owned by GROUP, whose members may use the "
                            "control socket (default: both 0600, root and this daemon's user only)")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    serve.set_defaults(func=cmd_serve)

    show = cmds.add_parser("show", help="devices served on this host, with their counters",
                           description="Every device served on this host (each host-DEV.sock in the run "
                           "directory), or only --name DEV. Exit status 1 if a device did not answer.")
    show.add_argument("--name", metavar="DEV", help="only this device (default: every host-*.sock)")
    show.add_argument("-j", "--json", action="store_true", help="JSON output")
    show.set_defaults(func=cmd_show)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..netdev.errors import NetdevError
    from ..virtio.net import NetError, parse_mac

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="vxdp host: %(levelname)s %(message)s")
    try:
        mac = parse_mac(args.mac)
    except NetError as e:
        raise CliError(str(e)) from None
    if not 68 <= args.mtu <= 65535:
        raise CliError(f"--mtu {args.mtu} outside 68..65535")
    from ..host.offload.policy import PolicyError
    from ..host.server import HostDaemon, ServeConfig, ServeError

    cfg = ServeConfig(socket_path=args.socket, port=args.port, name=args.name, netns=args.netns,
                      client=args.client, mac=mac, mtu=args.mtu, offload=args.offload, policy=args.policy,
                      group=args.group, engine=args.engine)
    try:
        daemon = HostDaemon(cfg)
    except (NetdevError, PolicyError, ServeError) as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{args.socket}: {e.strerror or e}") from None
    try:
        daemon.run()
    finally:
        daemon.close()
    return 0


def _devices(name: str | None) -> list[tuple[str, Any]]:
    from .. import rpc

    if name:
        paths = [rpc.host_socket(name)]
    else:
        d = rpc.run_dir()
        paths = sorted(d.glob("host-*.sock")) if d.is_dir() else []
    out = []
    for p in paths:
        dev = p.name[len("host-"):-len(".sock")]
        try:
            out.append((dev, rpc.call(p, "device.show", timeout=10.0)))
        except rpc.RpcError as e:
            why = e.message
            if e.code == "ENOENT":
                why = (f"not running: nobody serves {p} (a daemon that died left it; the next "
                       f"`vxdp host serve --name {dev}` replaces it)" if p.exists() else f"not running (no {p})")
            if name:
                raise CliError(f"device {name}: {why}") from None
            out.append((dev, {"name": dev, "error": why}))
    return out


def cmd_show(args: argparse.Namespace) -> int:
    """Every device (or ``--name DEV``); exit status 1 when one of them did not answer, as ``ip`` does
    when it cannot show what it was asked for (with ``-j`` the device's entry says why)."""
    devs = _devices(args.name)
    failed = any("error" in d for _, d in devs)
    if args.json:
        emit_json([doc for _, doc in devs])
        return 1 if failed else 0
    if not devs:
        print("no devices")
    for dev, d in devs:
        if "error" in d:
            print(f"{dev}: {d['error']}")
            continue
        port = d["port"]
        conn = "connected" if d["connected"] else "waiting for a frontend"
        print(f"{dev}: {d['socket']} ({d['mode']}), port {port['ifname']}"
              f"{' netns ' + port['netns'] if port['netns'] else ''}, {conn}, sessions {d['sessions']}")
        print(f"  mac {d['mac']} mtu {d['mtu']} features {d['features']:#x} "
              f"({' '.join(d['features_negotiated']) or 'none'})")
        for vr in d["vrings"]:
            state = "broken: " + vr["error"] if vr["error"] else ("running" if vr["running"] else "stopped")
            print(f"  vring {vr['index']} {vr['name']}: size {vr['size']} {state}")
        c = d["counters"]
        for direction, what in (("rx", "port->guest"), ("tx", "guest->port")):
            s = c[direction]
            print(f"  {direction} ({what}): {s['frames']} frames {s['bytes']} bytes "
                  f"{s['drops']} drops {s['errors']} errors")
        print(f"  port: {port['packets']} received, {port['drops']} dropped by the kernel, "
              f"{port['oversize']} oversize; {port['gso_frames']} GSO super-frames cut into "
              f"{port['gso_segments']} frames, {port['gso_refused']} refused; {port['tx_gro_frames']} "
              f"GRO super-frames sent of {port['tx_gro_segments']} frames")
        _print_offload(d.get("offload"))
    return 1 if failed else 0


def _print_offload(doc: dict | None) -> None:
    """The device's offloaded programs and maps, as the host sees them."""
    if doc is None:
        print("  offload: off")
        return
    dev = doc.get("device") or {}
    engine = dev.get("engine", "kernel")
    progs, maps = dev.get("programs", []), dev.get("maps", [])
    where_run = ("the host kernel" if engine == "kernel" else
                 f"this daemon ({engine}); nothing of the guest's in the host kernel")
    print(f"  offload: engine {engine}: programs run in {where_run}")
    frames = dev.get("rx_frames")
    if frames:
        print("    port frames run: " + "  ".join(f"{k} {v}" for k, v in frames.items()))
    if not progs and not maps:
        print("  offload: nothing offloaded")
        return
    own = "kernel" if engine == "kernel" else engine
    for p in progs:
        at = p.get("attached")
        where = f"attached to {at['ifname']} ({at['mode']} XDP)" if at else "loaded"
        print(f"  offloaded prog {p['handle']}: {p['name']}  tag {p['tag']}  {p['insns']} insns  {where}"
              f"  ({own}: {p['kernel_name']} id {p['kernel_id']})")
        actions = p.get("actions") or {}
        if actions:
            print("    " + "  ".join(f"{k} {v}" for k, v in actions.items()))
    for m in maps:
        print(f"  offloaded map {m['handle']}: {m['name']}  {m['type']}  key {m['key_size']}B  "
              f"value {m['value_size']}B  max_entries {m['max_entries']}  memory {m['memory']}B"
              f"{'  frozen' if m.get('frozen') else ''}"
              f"  ({own}: {m['kernel_name']} id {m['kernel_id']})")
