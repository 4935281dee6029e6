"""``vxdp bench engines``: what one program run costs on each engine, on the same frames.

Each engine loads the object through the same loader and runs the program on
every frame of the built-in traffic mix, ``repeat`` times per frame; the figure
is the mean time of one run. The kernel's figure is BPF_PROG_TEST_RUN's own
per-run duration (JIT-compiled code, measured inside the kernel, no syscall
cost); the interpreter's is wall time around its run loop in this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import packets
from ..bpf.elf import load_object as parse_object
from ..engine import make_engine
from ..engine.loader import load_object
from . import report
from .env import environment


@dataclass(frozen=True)
class Plan:
    objects: tuple[str, ...]
    engines: tuple[str, ...]
    frames: int
    repeat: dict[str, int]


def plan(samples_dir: str, *, quick: bool) -> Plan:
    return Plan(
        objects=(f"{samples_dir}/xdp1.o", f"{samples_dir}/xdp2.o"),
        engines=("interp", "kernel", "jit"),
        frames=16 if quick else 64,
        repeat={"interp": 20 if quick else 200, "kernel": 1000 if quick else 100000, "jit": 1000 if quick else 100000},
    )


def run(p: Plan) -> dict[str, Any]:
    frames = packets.mix(p.frames)
    rows = []
    for path in p.objects:
        obj = parse_object(path)
        prog = obj.program().name
        for engine_name in p.engines:
            with load_object(make_engine(engine_name), obj) as loaded:
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
                }
            )
    return {"benchmark": "engines", "environment": environment(), "results": rows}


COLUMNS = [
    ("program", "program"),
    ("engine", "engine"),
    ("frames", "frames"),
    ("repeat", "runs per frame"),
    ("ns_per_packet", "ns/packet"),
    ("mpps", "Mpps (one core)"),
]


def to_markdown(doc: dict[str, Any], command: str) -> str:
    env = doc["environment"]
    return (
        "# Engines: cost of one program run\n\n"
        f"`{command}` on {env['date']}: kernel {env['kernel']}, {env['cpu']} ({env['cpus']} CPUs), "
        f"Python {env['python']}.\n\n"
        "Kernel: BPF_PROG_TEST_RUN's per-run time (JIT, in-kernel). "
        "Interpreter: wall time of its run loop. "
        "JIT: its native batch loop's own time of the runs (clock_gettime around the loop, as the kernel's).\n\n"
        + report.markdown_table(COLUMNS, doc["results"])
    )
