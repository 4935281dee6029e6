"""``vxdp bench …``: benchmarks that print their figures with the environment and write them to files."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..engine import ENGINES
from .objects import SAMPLES_DIR, read_object, sample
from .output import CliError, emit_json


def add_parser(objects: argparse._SubParsersAction) -> None:
    bench = objects.add_parser("bench", help="benchmarks (results to JSON and Markdown)")
    cmds = bench.add_subparsers(dest="command", metavar="COMMAND", required=True)
    engines = cmds.add_parser("engines", help="ns per program run of xdp1, xdp2 and xdp_flow on each engine")
    engines.add_argument("--samples", metavar="DIR",
                         help=f"where xdp1.o, xdp2.o and xdp_flow.o are (default: {SAMPLES_DIR})")
    engines.add_argument("--engine", action="append", choices=ENGINES, metavar="ENGINE",
                         help=f"only this engine (repeatable; one of {', '.join(ENGINES)}; default: all)")
    engines.add_argument("--quick", action="store_true", help="fewer frames and runs")
    engines.add_argument("--out", default="bench-results", metavar="DIR", help="default: bench-results")
    engines.add_argument("-j", "--json", action="store_true", help="JSON output")
    engines.set_defaults(func=cmd_engines)
    dp = cmds.add_parser("datapath", help="Mpps each way (64-byte frames) and TCP Gbps, beside testpmd's",
                         description="Builds its own namespaces (198.18.0.0/15), runs vxdp host serve, "
                         "vxdp guest run and DPDK testpmd in every combination, and stops them all.")
    dp.add_argument("--quick", action="store_true", help="short runs (a functional check, not figures)")
    dp.add_argument("--out", default="bench-results", metavar="DIR", help="default: bench-results")
    dp.add_argument("--profile", metavar="DIR", help="py-spy both daemons during our own runs (raw stacks)")
    dp.add_argument("-j", "--json", action="store_true", help="JSON output")
    dp.set_defaults(func=cmd_datapath)
    seed = cmds.add_parser(
        "seed", help="the RFC's tables: xdp1/xdp2 Mpps offload vs non-offload vs the limit, and the regression check",
        description="Builds its own namespaces (198.18.0.0/15) and a host bridge for Case 2, runs vxdp host serve "
        "and vxdp guest run, measures xdp1 (DROP) and xdp2 (TX) with the program in our driver's JIT, in the "
        "guest kernel (tap XDP), offloaded on the kernel and the JIT engine, and attached by ip link with no vxdp "
        "(the limit); then iperf3 and sockperf with offload support off and on. Writes DIR/seed.json, seed.md "
        "and seed.png; progress goes to stderr.")
    seed.add_argument("--quick", action="store_true", help="one short run per point (a functional check, not figures)")
    seed.add_argument("--runs", type=int, metavar="N", help="runs per point and per regression test (default: 3)")
    seed.add_argument("--seconds", type=float, metavar="S", help="seconds per Mpps run (default: 3)")
    seed.add_argument("--case", type=int, action="append", choices=(1, 2), help="only this case (repeatable)")
    seed.add_argument("--program", action="append", choices=("xdp1", "xdp2"), help="only this program (repeatable)")
    seed.add_argument("--no-regression", dest="regression", action="store_false", help="skip iperf3/sockperf")
    seed.add_argument("--samples", metavar="DIR", help=f"where xdp1.o and xdp2.o are (default: {SAMPLES_DIR})")
    seed.add_argument("--profile", metavar="DIR", help="py-spy both daemons and perf the machine during each "
                      "point's first run (raw stacks, perf report by symbol)")
    seed.add_argument("--out", default="bench-results", metavar="DIR", help="default: bench-results")
    seed.add_argument("-j", "--json", action="store_true", help="JSON output")
    seed.set_defaults(func=cmd_seed)


def _write(args: argparse.Namespace, name: str, doc: dict, md: str) -> int:
    """Write ``name``.json and .md under ``--out``; print the JSON (``-j``) or the Markdown and where it went."""
    from ..bench import report

    json_path, md_path = report.write(args.out, name, doc, md)
    if args.json:
        emit_json(doc)
    else:
        print(md, end="")
        print(f"\nwritten: {json_path} {md_path}")
    return 0


def _check_out(out: str) -> None:
    """Refuse an ``--out`` that cannot be a directory before the benchmark runs, not after."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CliError(f"--out {out}: not a directory")


def cmd_engines(args: argparse.Namespace) -> int:
    from ..bench import engines

    _check_out(args.out)
    plan = engines.plan(str(args.samples or SAMPLES_DIR), quick=args.quick,
                        engines=tuple(args.engine) if args.engine else ENGINES)
    for path in plan.objects:  # each one there and an object, or one clear line before any run
        read_object(sample(os.path.basename(path), args.samples))
    doc = engines.run(plan)
    command = "vxdp " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return _write(args, "engines", doc, engines.to_markdown(doc, command))


def cmd_datapath(args: argparse.Namespace) -> int:
    from ..bench import datapath

    _check_out(args.out)

    doc = datapath.run(datapath.plan(quick=args.quick, profile_dir=args.profile))
    command = "vxdp " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    doc["command"] = command
    return _write(args, "datapath", doc, datapath.to_markdown(doc, command))


def cmd_seed(args: argparse.Namespace) -> int:
    from ..bench import seed, seed_report

    _check_out(args.out)
    for name in ("xdp1.o", "xdp2.o"):  # each one there and an object, or one clear line before any run
        read_object(sample(name, args.samples))
    samples = os.path.dirname(os.path.abspath(sample("xdp1.o", args.samples)))
    try:
        plan = seed.plan(samples, quick=args.quick, runs=args.runs, seconds=args.seconds,
                         cases=tuple(args.case or seed.CASES), programs=tuple(args.program or seed.PROGRAMS),
                         regression=args.regression, profile_dir=args.profile)
    except ValueError as e:
        raise CliError(str(e)) from None
    try:
        doc = seed.run(plan)
    except seed.SeedBenchError as e:
        raise CliError(f"bench seed: {e}") from None
    command = "vxdp " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    doc["command"] = command
    os.makedirs(args.out, exist_ok=True)
    chart = seed_report.write_chart(doc, os.path.join(args.out, "seed.png"))
    doc["files"] = {"chart": str(chart)}
    rc = _write(args, "seed", doc, seed_report.to_markdown(doc, command, chart.name))
    if not args.json:
        print(f"chart: {chart}")
    return rc
