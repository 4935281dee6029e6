"""The ``vxdp`` command: one parser, a subcommand per layer, errors as one clear line.

Conventions follow bpftool and iproute2: ``vxdp OBJECT COMMAND``, ``-j`` for
JSON on stdout, human text otherwise, exit status 0 on success, 1 on an error
the user can act on (the message says what and where), 2 on bad usage. With
``-j`` an error (bad usage too) is a JSON object ``{"error": ...}`` on stdout
(bpftool's form), with its detail (a verifier log, a policy rule) as more
fields; the exit status is the same.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, compile, demo, guest, host, map, offload, prog
from .output import CliError, emit_json, print_error

EPILOG = """exit status: 0 success; 1 an error, one line on stderr saying what and where (with -j: a JSON
object {"error": MESSAGE, ...} on stdout); 2 bad usage (with -j, as JSON too); 130 interrupted."""


class UsageError(Exception):
    """Bad usage, raised instead of argparse's exit so that ``-j`` gets it as JSON too."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """Every parser of the command (subparsers inherit the class) reports bad usage to `main`."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(self, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vxdp",
        description="XDP offload for virtio-net: run a guest's XDP program on the host.",
        epilog=EPILOG,
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
    _exit_status_in_every_help(parser)
    return parser


def _exit_status_in_every_help(parser: argparse.ArgumentParser) -> None:
    """Every ``--help`` ends with the exit status, the same for every command (one place says it)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.epilog = f"{sub.epilog} {EPILOG}" if sub.epilog else EPILOG
                _exit_status_in_every_help(sub)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        if "-j" in argv or "--json" in argv:
            emit_json({"error": f"{e.parser.prog}: {e}"})
        else:
            e.parser.print_usage(sys.stderr)
            print(f"{e.parser.prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except CliError as e:
        print_error(e, as_json=bool(getattr(args, "json", False)))
        return 1
    except BrokenPipeError:
        return 0
    except OSError as e:
        # a file or socket error no command turned into a message: still one line, never a traceback
        where = f"{e.filename}: " if e.filename else ""
        print_error(CliError(f"{where}{e.strerror or e}"), as_json=bool(getattr(args, "json", False)))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
