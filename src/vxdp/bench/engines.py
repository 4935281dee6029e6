"""``vxdp bench engines``: what one program run costs on each engine, on the same frames.

Each engine loads the object through the same loader and runs the program on
every frame of the built-in traffic mix, ``repeat`` times per frame; the figure
is the mean time of one run. The kernel's figure is BPF_PROG_TEST_RUN's own
per-run duration (JIT-compiled code, measured inside the kernel, no syscall
cost); the JIT's is its native loop's own clock around the runs (one call runs all
``repeat`` runs of a frame); the interpreter's is wall time around its run loop.

Three programs: xdp1 (parse, count, DROP), xdp2 (the same, MAC swap, TX) and
xdp_flow (a HASH flow table keyed by the 5-tuple and a checksum update: what a
router's fast path does). ``load_ms`` is what loading the object cost on that
engine: creating its maps, verifying and compiling its programs (the kernel's
verifier and JIT; our verifier and LLVM for the JIT; decoding for the interpreter),
after each engine has loaded one object untimed (its first use in a process loads
its own runtime: the JIT's map functions come from the compiled-code cache).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .. import packets
from ..bpf.elf import load_object as parse_object
from ..engine import ENGINES, make_engine
from ..engine.loader import load_object
from . import report
from .env import environment


@dataclass(frozen=True)
class Plan:
    objects: tuple[str, ...]
    engines: tuple[str, ...]
    frames: int
    repeat: dict[str, int]


PROGRAMS = ("xdp1.o", "xdp2.o", "xdp_flow.o")
_REPEAT = {"interp": (20, 200), "kernel": (1000, 100000), "jit": (1000, 100000)}  # (quick, full) per frame


def plan(samples_dir: str, *, quick: bool, engines: tuple[str, ...] = ENGINES) -> Plan:
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine {unknown[0]!r}; choose from {', '.join(ENGINES)}")
    return Plan(
        objects=tuple(f"{samples_dir}/{name}" for name in PROGRAMS),
        engines=engines,
        frames=16 if quick else 64,
        repeat={e: _REPEAT[e][0 if quick else 1] for e in engines},
    )


def run(p: Plan) -> dict[str, Any]:
    frames = packets.mix(p.frames)
    rows = []
    first = parse_object(p.objects[0])
    for engine_name in p.engines:  # untimed: an engine's first use in a process loads its runtime (the JIT's
        with load_object(make_engine(engine_name), first):  # map functions from the compiled-code cache)
            pass
    for path in p.objects:
        obj = parse_object(path)
        prog = obj.program().name
        for engine_name in p.engines:
            start = time.perf_counter()
            with load_object(make_engine(engine_name), obj) as loaded:
                load_ms = (time.perf_counter() - start) * 1e3
                durations = [loaded.run(f, repeat=p.repeat[engine_name]).duration_ns for f in frames]
            ns = sum(durations) / len(durations)
            rows.append(
                {
                    "program": prog,
                    "object": path.rsplit("/", 1)[-1],
                    "engine": engine_name,
                    "frames": len(frames),
                    "repeat": p.repeat[engine_name],
                    "ns_per_packet": round(ns, 1),
                    "mpps": round(1e3 / ns, 3) if ns else None,
                    "load_ms": round(load_ms, 1),
                }
            )
    return {"benchmark": "engines", "environment": environment(), "results": rows, "ratios": ratios(rows)}


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per program, how many times faster than the kernel and the interpreter each other engine ran
    (above 1: faster); only the pairs the run measured."""
    out = []
    for prog in dict.fromkeys(r["program"] for r in rows):
        ns = {r["engine"]: r["ns_per_packet"] for r in rows if r["program"] == prog and r["ns_per_packet"]}
        for engine, mine in ns.items():
            row: dict[str, Any] = {"program": prog, "engine": engine}
            for base in ("kernel", "interp"):
                row[f"vs_{base}"] = float(f"{ns[base] / mine:.3g}") if base in ns and base != engine else None
            if row["vs_kernel"] is not None or row["vs_interp"] is not None:
                out.append(row)
    return out


COLUMNS = [
    ("program", "program"),
    ("engine", "engine"),
    ("frames", "frames"),
    ("repeat", "runs per frame"),
    ("ns_per_packet", "ns/packet"),
    ("mpps", "Mpps (one core)"),
    ("load_ms", "load ms"),
]
RATIO_COLUMNS = [
    ("program", "program"),
    ("engine", "engine"),
    ("vs_kernel", "× the kernel"),
    ("vs_interp", "× the interpreter"),
]


def to_markdown(doc: dict[str, Any], command: str) -> str:
    env = doc["environment"]
    return (
        "# Engines: cost of one program run\n\n"
        f"`{command}` on {env['date']}: kernel {env['kernel']}, {env['cpu']} ({env['cpus']} CPUs), "
        f"Python {env['python']}.\n\n"
        "Kernel: BPF_PROG_TEST_RUN's per-run time (its JIT, in-kernel). JIT: its native batch loop's own "
        "time of the runs (clock_gettime around the loop, as the kernel's). Interpreter: wall time of its run "
        "loop. Load: maps made, programs verified and compiled.\n\n"
        + report.markdown_table(COLUMNS, doc["results"])
        + "\nSpeed against the kernel and the interpreter (ns per packet of theirs over this engine's; "
        "above 1 is faster):\n\n" + report.markdown_table(RATIO_COLUMNS, doc.get("ratios", []))
    )
