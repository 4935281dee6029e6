"""``vxdp map …``: the maps of programs loaded through a guest, read and written by name.

For an offloaded program every operation travels over the control virtqueue to
the host; for a native one it stays in the guest driver. Keys and values are
given as an integer (written little-endian in the map's key or value size) or
as hex bytes (``hex:06000000``, ``06:00:00:00``), as bpftool takes them.
"""

from __future__ import annotations

import argparse

from ..bpf.mapspec import percpu_value_stride
from .daemons import add_target, call
from .output import CliError, emit_json, print_map, show_bytes


def add_parser(objects: argparse._SubParsersAction) -> None:
    m = objects.add_parser("map", help="maps of loaded programs: show, dump, lookup, update, delete, freeze")
    cmds = m.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, func, help: str, *, key: bool = False, value: bool = False, named: bool = True):
        p = cmds.add_parser(name, help=help)
        if named:
            p.add_argument("map", metavar="MAP", help="the map's name in the object, or id:HANDLE (two maps "
                           "of one name on a device are refused as ambiguous; name one by its handle)")
        if key:
            p.add_argument("key", metavar="KEY", help="an integer, or hex bytes (hex:06000000)")
        if value:
            p.add_argument("value", metavar="VALUE", help="an integer, or hex bytes")
            p.add_argument("--flags", choices=("any", "noexist", "exist"), default="any",
                           help="BPF_ANY, BPF_NOEXIST or BPF_EXIST (default: any)")
        if named:
            p.add_argument("--mode", choices=("offload", "native"),
                           help="the map of this slot when both have one of that name (default: offload first)")
        add_target(p)
        p.add_argument("-j", "--json", action="store_true", help="JSON output")
        p.set_defaults(func=func)

    cmd("show", cmd_show, "every map, its type and sizes", named=False)
    cmd("dump", cmd_dump, "every entry of a map")
    cmd("lookup", cmd_lookup, "one entry", key=True)
    cmd("update", cmd_update, "write one entry", key=True, value=True)
    cmd("delete", cmd_delete, "delete one entry", key=True)
    cmd("freeze", cmd_freeze, "read-only to user space for good (BPF_MAP_FREEZE, as bpftool map freeze)")


def parse_field(text: str, size: int, what: str) -> str:
    """A key or value from the command line, as the hex the daemons take."""
    body = text.lower()
    if body.startswith("hex:") or ":" in body or body.startswith("0x") and len(body) > 2 + 16:
        raw = body.removeprefix("hex:").removeprefix("0x").replace(":", "").replace(" ", "")
        try:
            data = bytes.fromhex(raw)
        except ValueError:
            raise CliError(f"{what} {text!r}: not hex") from None
    else:
        try:
            number = int(body, 0)
        except ValueError:
            raise CliError(f"{what} {text!r}: give an integer or hex:BYTES") from None
        try:
            data = number.to_bytes(size, "little", signed=number < 0)
        except OverflowError:
            raise CliError(f"{what} {number} does not fit in {size} bytes") from None
    if len(data) != size:
        raise CliError(f"{what} of {len(data)} bytes; this map takes {size}")
    return data.hex()


def _mode(args: argparse.Namespace) -> dict:
    return {"mode": args.mode} if args.mode else {}


def _map_info(args: argparse.Namespace) -> dict:
    """The map MAP names, resolved by the daemon as every other map request is (ambiguity refused)."""
    return call(args, "map.info", map=args.map, **_mode(args))


def _show_value(info: dict, value: bytes) -> str:
    """A looked-up value for humans: one field per CPU for a per-CPU map (as ``map dump`` and bpftool
    show them), not the slots of every CPU run together."""
    size = info["value_size"]
    if "percpu" not in info["type"] or len(value) == size:
        return show_bytes(value)
    stride = percpu_value_stride(size)
    return " ".join(f"cpu{i}:{show_bytes(value[off : off + size])}" for i, off in enumerate(range(0, len(value), stride)))


def cmd_show(args: argparse.Namespace) -> int:
    maps = call(args, "map.show")
    if args.json:
        emit_json(maps)
        return 0
    if not maps:
        print("no maps loaded")
    for m in maps:
        print(
            f"{m['handle']}: {m['name']}  {m['type']}  key {m['key_size']}B  value {m['value_size']}B"
            f"  max_entries {m['max_entries']}{'  frozen' if m.get('frozen') else ''}  {m.get('mode', '')}"
        )
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    doc = call(args, "map.dump", map=args.map, **_mode(args))
    if args.json:
        emit_json(doc)
    else:
        print_map(doc, show_zero=True)
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    info = _map_info(args)
    key = parse_field(args.key, info["key_size"], "key")
    doc = call(args, "map.lookup", map=args.map, key=key, **_mode(args))
    if args.json:
        emit_json(doc)
    else:
        print(f"[{show_bytes(bytes.fromhex(doc['key']))}] = {_show_value(info, bytes.fromhex(doc['value']))}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    info = _map_info(args)
    key = parse_field(args.key, info["key_size"], "key")
    value = parse_field(args.value, info["value_bytes"], "value")
    call(args, "map.update", map=args.map, key=key, value=value, flags=args.flags, **_mode(args))
    if args.json:
        emit_json({"map": args.map, "key": key, "value": value})
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    info = _map_info(args)
    key = parse_field(args.key, info["key_size"], "key")
    call(args, "map.delete", map=args.map, key=key, **_mode(args))
    if args.json:
        emit_json({"map": args.map, "key": key, "deleted": True})
    return 0


def cmd_freeze(args: argparse.Namespace) -> int:
    doc = call(args, "map.freeze", map=args.map, **_mode(args))
    if args.json:
        emit_json(doc)
    return 0
