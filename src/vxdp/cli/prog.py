"""``vxdp prog …``: disassemble an object, run one of its programs on an engine."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import Any

from ..bpf.isa import XdpAction
from ..engine import DEFAULT_IN_PROCESS, ENGINES, IN_PROCESS
from .daemons import add_target, call

ENGINE_HELP = {
    "interp": "the reference interpreter",
    "jit": "our verifier, then native code through LLVM",
    "kernel": "the host kernel's verifier and JIT (BPF_PROG_TEST_RUN, needs root)",
}
from .objects import check_readable, pick_program, read_object
from .output import CliError, emit_json, print_map, show_tag


def add_parser(objects: argparse._SubParsersAction) -> None:
    prog = objects.add_parser("prog", help="BPF programs: disassemble, run, load (offloaded or native), show, detach")
    cmds = prog.add_subparsers(dest="command", metavar="COMMAND", required=True)

    disasm = cmds.add_parser("disasm", help="disassemble the programs of an object, linked as they load")
    disasm.add_argument("file", metavar="FILE.o")
    disasm.add_argument("--prog", metavar="NAME", help="only this program (default: every program)")
    disasm.add_argument("-j", "--json", action="store_true", help="JSON output")
    disasm.set_defaults(func=cmd_disasm)

    run = cmds.add_parser(
        "run",
        help="load an object on an engine and run one program on packets",
        description="Load FILE.o on an engine (all its maps and programs, prog_arrays filled from "
        "their .values), run one program on each packet, and print the actions, the packets as "
        "they came out and the maps afterwards.",
    )
    run.add_argument("file", metavar="FILE.o")
    run.add_argument("--prog", metavar="NAME", help="the program to run (default: the first in the object)")
    run.add_argument("--engine", choices=ENGINES, default="interp",
                     help="; ".join(f"{e}: {ENGINE_HELP[e]}" for e in ENGINES) + ". Default: interp")
    src = run.add_argument_group("packets (one source; they may be combined)")
    src.add_argument("--packet", metavar="HEX", action="append", default=[], help="a frame in hex; repeatable")
    src.add_argument("--pcap", metavar="FILE", help="every frame of a pcap file")
    src.add_argument("--mix", metavar="N", type=int, help="N frames of the built-in TCP/UDP/ICMP/ARP mix")
    run.add_argument("--repeat", metavar="N", type=int, default=1, help="run each packet N times (default 1)")
    run.add_argument("-v", "--verbose", action="store_true", help="a line per packet however many")
    run.add_argument("-j", "--json", action="store_true", help="JSON output")
    run.set_defaults(func=cmd_run)

    load = cmds.add_parser(
        "load",
        help="load an object into a guest (offloaded to the host, or native in the guest driver)",
        description="Load FILE.o through a guest driver: --offload sends its maps and programs over "
        "the control virtqueue to the host, which verifies them under its policy and attaches the "
        "program to the device's host port; --native runs it in the guest driver on its rx path. "
        "--device loads on the host directly, for a stock guest that cannot (operator path).",
    )
    load.add_argument("file", metavar="FILE.o")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument("--offload", dest="mode", action="store_const", const="offload",
                      help="run on the host (the default, and the only mode, with --device)")
    mode.add_argument("--native", dest="mode", action="store_const", const="native",
                      help="run in the guest (with --guest, give --offload or --native)")
    load.add_argument("--prog", metavar="NAME", help="the program to attach (default: the first)")
    load.add_argument("--engine", choices=IN_PROCESS, metavar="ENGINE",
                      help=f"--native: what runs it in the guest ({', '.join(IN_PROCESS)}; default "
                      f"{DEFAULT_IN_PROCESS}). Offloaded programs run on the engine the host was started with")
    load.add_argument("--replace", action="store_true",
                      help="offloaded: replace the program another loader attached to the device (the guest's, "
                      "for --device; the operator's, for --guest), atomically; without it that is refused "
                      "(EBUSY). The replaced program stays loaded, no longer attached, until its owner frees "
                      "it. A second load through the same --guest or --device replaces its own program "
                      "without --replace.")
    add_target(load)
    load.add_argument("-j", "--json", action="store_true", help="JSON output")
    load.set_defaults(func=cmd_load)

    show = cmds.add_parser("show", help="programs of a guest or a device, with counters; offloaded ones as the "
                           "device records them, whoever loaded them (origin guest, operator, import)")
    add_target(show)
    show.add_argument("-j", "--json", action="store_true", help="JSON output")
    show.set_defaults(func=cmd_show)

    detach = cmds.add_parser(
        "detach",
        help="detach and free programs (and their maps)",
        description="Detach the program attached from each slot (offload, native) and free the object "
        "it came from: all its programs and maps. Offloaded, that is what the device holds as prog show "
        "lists it: with --device (the host's operator) everything, whoever loaded it, so the device is "
        "empty after; with --guest what the guest loaded or imported, leaving what the operator put there. "
        "Prints what it detached and freed; "
        '-j gives the counts {"detached": OBJECTS, "programs": N, "maps": N}. When nothing is loaded it says '
        "so and exits with exit status 0, as `ip link set dev DEV xdp off` does with nothing attached; exit "
        "status 1 only when something loaded could not be detached or freed.",
    )
    detach.add_argument("--mode", choices=("offload", "native"), help="only this one (default: both)")
    add_target(detach)
    detach.add_argument("-j", "--json", action="store_true", help="JSON output")
    detach.set_defaults(func=cmd_detach)


def _packets(args: argparse.Namespace) -> list[bytes]:
    from .. import packets

    frames: list[bytes] = []
    for text in args.packet:
        try:
            frames.append(bytes.fromhex(text.replace(":", "").replace(" ", "")))
        except ValueError:
            raise CliError(f"--packet {text[:40]!r}: not hex") from None
    if args.pcap:
        check_readable(args.pcap)
        try:
            frames.extend(packets.read_pcap(args.pcap))
        except ValueError as e:
            raise CliError(str(e)) from None
    if args.mix is not None:
        if args.mix < 1:
            raise CliError("--mix must be at least 1")
        frames.extend(packets.mix(args.mix))
    if not frames:
        raise CliError("no packets: give --packet HEX, --pcap FILE or --mix N")
    from ..engine.interp.xdp import ETH_HLEN, MAX_LINEAR

    for i, frame in enumerate(frames):  # what both engines' test runs refuse, said before either runs
        if not ETH_HLEN <= len(frame) <= MAX_LINEAR:
            raise CliError(f"packet {i}: {len(frame)} bytes; a frame is {ETH_HLEN} to {MAX_LINEAR} bytes")
    return frames


def action_name(retval: int) -> str:
    try:
        return f"XDP_{XdpAction(retval).name}"
    except ValueError:
        return f"unknown({retval})"


def cmd_run(args: argparse.Namespace) -> int:
    from ..engine import make_engine
    from ..engine.loader import LoadError, load_object
    from ..engine.registry import map_doc
    from ..engine.verifier.errors import VerifierRejected

    if args.repeat < 1:
        raise CliError("--repeat must be at least 1")
    obj = read_object(args.file)
    frames = _packets(args)
    prog_name = pick_program(obj, args.prog)
    engine = make_engine(args.engine)
    try:
        with load_object(engine, obj) as loaded:
            runs = []
            for i, frame in enumerate(frames):
                result = loaded.run(frame, prog=prog_name, repeat=args.repeat)
                runs.append(
                    {
                        "index": i,
                        "action": action_name(result.action),
                        "retval": result.action,
                        "packet": result.packet.hex(),
                        "duration_ns": round(result.duration_ns, 1),
                    }
                )
            maps = [map_doc(name, m, handle=False) for name, m in loaded.maps.items()]
    except LoadError as e:
        raise CliError(str(e)) from None
    except VerifierRejected as e:  # our verifier, before the JIT compiles anything
        raise CliError(f"{args.file}: refused by the verifier at insn {e.insn}: {e.reason}", e.log,
                       log=e.log) from None
    except OSError as e:
        # the kernel engine's refusals carry the verifier log
        log = getattr(e, "log", "") or ""
        first = str(e).partition("\n")[0] if log else str(e)  # the log is the detail, printed once
        raise CliError(f"{args.file}: {first}", log, **({"log": log} if log else {})) from None
    doc = {
        "object": os.path.basename(args.file),
        "program": prog_name,
        "engine": args.engine,
        "repeat": args.repeat,
        "runs": runs,
        "maps": maps,
    }
    if args.json:
        emit_json(doc)
    else:
        _print_run(doc, frames, verbose=args.verbose)
    return 0


def _print_run(doc: dict[str, Any], frames: list[bytes], *, verbose: bool) -> None:
    runs = doc["runs"]
    mean = sum(r["duration_ns"] for r in runs) / len(runs)
    print(
        f"{doc['object']}: program {doc['program']} on engine {doc['engine']}: "
        f"{len(runs)} packets, repeat {doc['repeat']}, {mean:.0f} ns/run"
    )
    tally = Counter(r["action"] for r in runs)
    print("  actions: " + ", ".join(f"{name} {n}" for name, n in sorted(tally.items())))
    if verbose or len(runs) <= 8:
        for r, frame in zip(runs, frames):
            out = bytes.fromhex(r["packet"])
            change = "unchanged" if out == frame else f"changed, {len(out)} bytes out"
            print(f"  packet {r['index']}: {r['action']} ({len(frame)} bytes in, {change})")
    print("maps:")
    for m in doc["maps"]:
        print_map(m)


def cmd_disasm(args: argparse.Namespace) -> int:
    from ..bpf.disasm import format_insn, insn_width
    from ..bpf.link import link

    obj = read_object(args.file)
    names = [pick_program(obj, args.prog)] if args.prog else list(obj.programs)
    docs = []
    for name in names:
        linked = link(obj, name)
        notes = {r.insn: f"map {r.target}" + (f"+{r.offset}" if r.offset else "") for r in linked.map_refs}
        lines = {li.insn: li for li in linked.line_info}
        insns, i, last_src = [], 0, None
        while i < len(linked.insns):
            entry: dict[str, Any] = {"pc": i, "opcode": f"{linked.insns[i].code:02x}"}
            entry["text"] = format_insn(linked.insns, i)
            if i in notes:
                entry["note"] = notes[i]
            li = lines.get(i)
            if li is not None and li.text:
                src = f"{li.text.strip()} [{os.path.basename(li.file)}:{li.line}]"
                if src != last_src:
                    entry["src"] = last_src = src
            insns.append(entry)
            i += insn_width(linked.insns, i)
        docs.append({"name": name, "section": linked.section, "insns": insns})
    if args.json:
        emit_json(docs)
        return 0
    for d in docs:
        print(f"{d['name']}:  section {d['section']}")
        for entry in d["insns"]:
            if "src" in entry:
                print(f"; {entry['src']}")
            note = f"  ; {entry['note']}" if "note" in entry else ""
            print(f"{entry['pc']:4d}: ({entry['opcode']}) {entry['text']}{note}")
        print()
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.file)
    pick_program(read_object(args.file), args.prog)  # a bad object is refused here, before any daemon sees it
    mode = args.mode or ("offload" if args.device else None)
    if mode is None:
        raise CliError("say where the program runs: --offload (on the host) or --native (in the guest)")
    if args.device and mode != "offload":
        raise CliError("--device loads on the host: --native needs --guest")
    if args.engine and mode != "native":
        raise CliError("--engine picks what runs a --native program; an offloaded one runs on the host's engine")
    extra = {"replace": True} if args.replace else {}
    if args.engine:
        extra["engine"] = args.engine
    result = call(args, "prog.load", path=path, mode=mode, prog=args.prog, **extra)
    if args.json:
        emit_json(result)
        return 0
    for p in result["programs"]:
        attached = "  attached" if p.get("attached") else ""
        insns = f"  {p['insns']} insns" if p.get("insns") is not None else ""
        print(f"{p['handle']}: {p['name']}  {mode}  {show_tag(p.get('tag'))}{insns}{attached}")
    for m in result["maps"]:
        print(f"   map {m['handle']}: {m['name']}  {m['type']}  max_entries {m['max_entries']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    result = call(args, "prog.show")
    if args.json:
        emit_json(result)
        return 0
    if not result["programs"]:
        print("no programs loaded")
    for p in result["programs"]:
        where = p.get("attach") or ("attached" if p.get("attached") else "loaded")
        mode = f"{p['mode']} ({p['engine']})" if p["mode"] == "native" and p.get("engine") else p["mode"]
        print(f"{p['handle']}: {p['name']}  {mode}  {show_tag(p.get('tag'))}  {where}")
        counters = p.get("counters") or {}
        if counters:
            print("    " + "  ".join(f"{k} {v}" for k, v in counters.items()))
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    if args.device and args.mode == "native":
        raise CliError("--device runs programs offloaded: --mode native needs --guest")
    before = call(args, "prog.show")  # what is there, to say what was detached and freed
    result = call(args, "prog.detach", mode=args.mode)
    slots = [args.mode] if args.mode else ["offload", "native"]
    # a guest's detach leaves what the host's operator loaded on its device (the daemon does the same)
    kept = {"operator"} if getattr(args, "guest", None) else set()
    freed = {
        mode: ([p for p in before.get("programs", []) if p.get("mode") == mode and p.get("origin") not in kept],
               [m for m in before.get("maps", []) if m.get("mode") == mode and m.get("origin") not in kept])
        for mode in slots
    }
    # what the daemon said it unloaded is the truth; the listing before only names it
    freed = {mode: pm for mode, pm in freed.items() if pm[0] or pm[1]} if result.get("detached") else {}
    doc = {
        "detached": result.get("detached", 0),
        "programs": sum(len(p) for p, _ in freed.values()),
        "maps": sum(len(m) for _, m in freed.values()),
    }
    if args.json:
        emit_json(doc)
        return 0
    if not doc["detached"]:
        print("nothing to detach: no programs loaded" + (f" in the {args.mode} slot" if args.mode else ""))
        return 0
    for mode, (progs, maps) in freed.items():
        attached = [p["name"] for p in progs if p.get("attached")]
        what = f"detached {', '.join(attached)}; " if attached else ""
        map_names = f" ({', '.join(m['name'] for m in maps)})" if maps else ""
        print(f"{mode}: {what}freed {_count(len(progs), 'program')} and {_count(len(maps), 'map')}{map_names}")
    return 0


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
