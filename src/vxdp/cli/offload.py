"""``vxdp offload export|import``: move a device's offloaded state (maps with contents, programs,
prog_arrays, the attachment) out to a file and into another, empty device (STATE_EXPORT/IMPORT,
docs/offload-protocol.md §5 "State"), through a guest driver (``--guest``) or, for the operator,
the host device (``--device``). The file holds the device's state blob as is (binary)."""

from __future__ import annotations

import argparse
import base64
import os
import sys

from .daemons import add_target, call
from .objects import file_error, read_file
from .output import emit_json


def add_parser(objects: argparse._SubParsersAction) -> None:
    off = objects.add_parser("offload", help="a device's offloaded state: export to a file, import into a device")
    cmds = off.add_subparsers(dest="command", metavar="COMMAND", required=True)

    exp = cmds.add_parser("export", help="write the device's offloaded state (maps, programs, attachment) to FILE")
    add_target(exp)
    exp.add_argument("-o", "--output", metavar="FILE", required=True, help="where to write the state ('-': stdout)")
    exp.add_argument("-j", "--json", action="store_true", help="JSON output")
    exp.set_defaults(func=cmd_export)

    imp = cmds.add_parser("import", help="recreate a state from FILE in an empty device (all or nothing)")
    imp.add_argument("file", metavar="FILE")
    add_target(imp)
    imp.add_argument("-j", "--json", action="store_true", help="JSON output")
    imp.set_defaults(func=cmd_import)


def cmd_export(args: argparse.Namespace) -> int:
    result = call(args, "offload.export")
    blob = base64.b64decode(result["state"])
    if args.output == "-":
        sys.stdout.buffer.write(blob)
        sys.stdout.flush()
        return 0
    try:
        with open(args.output, "wb") as f:
            f.write(blob)
    except OSError as e:
        raise file_error(args.output, e) from None
    doc = {"file": os.path.abspath(args.output), "bytes": len(blob)}
    if args.json:
        emit_json(doc)
    else:
        print(f"exported {len(blob)} bytes of state to {args.output}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    blob = read_file(args.file)
    result = call(args, "offload.import", state=base64.b64encode(blob).decode("ascii"))
    if args.json:
        emit_json(result)
    else:
        print(f"imported {result.get('imported', len(blob))} bytes of state")
    return 0
