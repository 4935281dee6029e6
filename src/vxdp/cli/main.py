"""The ``vxdp`` command: one parser, a subcommand per layer, errors as one clear line.

Conventions follow bpftool and iproute2: ``vxdp OBJECT COMMAND``, ``-j`` for
JSON on stdout, human text otherwise, exit status 0 on success, 1 on an error
the user can act on (the message says what and where), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, compile, demo, guest, host, map, offload, prog
from .output import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vxdp",
        description="XDP offload for virtio-net: run a guest's XDP program on the host.",
    )
    objects = parser.add_subparsers(dest="object", metavar="OBJECT", required=True)
    prog.add_parser(objects)
    map.add_parser(objects)
    bench.add_parser(objects)
    demo.add_parser(objects)
    host.add_parser(objects)
    guest.add_parser(objects)
    offload.add_parser(objects)
    compile.add_parser(objects)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except CliError as e:
        print(f"vxdp: {e}", file=sys.stderr)
        if e.detail:
            print(e.detail.rstrip(), file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
