"""``vxdp bench seed``'s files: the RFC's table shape in Markdown (its figures beside ours) and a chart.

The Markdown keeps the RFC's layout, a table per case with xdp1 and xdp2 as rows, and adds
the columns the RFC lacked: each engine's offload, the guest-kernel baseline and the limit
(the same program on the port with no virtio at all). The chart is grouped bars per program
and column, one panel per case, the limit drawn as a line over each group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import report
from .seed import COLUMNS, DRIVER_JIT, GUEST_KERNEL, LIMIT, OFFLOAD_JIT, OFFLOAD_KERNEL, PROGRAMS, RFC_MPPS

CASE_TITLES = {1: "Case 1: frames straight at the device's port", 2: "Case 2: frames through a Linux bridge on the host"}
HEADINGS = {
    DRIVER_JIT: "non-offload: our driver's JIT",
    GUEST_KERNEL: "non-offload: guest kernel (tap XDP)",
    OFFLOAD_KERNEL: "offload: kernel engine",
    OFFLOAD_JIT: "offload: JIT engine",
    LIMIT: "limit (ip link, no vxdp)",
}
ACTIONS = {"xdp1": "DROP", "xdp2": "TX"}


def _case_rows(doc: dict[str, Any], case: int) -> list[dict[str, Any]]:
    out = []
    summary = {(s["case"], s["program"]): s for s in doc.get("summary", [])}
    for program in PROGRAMS:
        got = {r["column"]: r for r in doc["results"] if r["case"] == case and r["program"] == program}
        if not got:
            continue
        rfc = RFC_MPPS[(case, program)]
        s = summary.get((case, program), {})
        row: dict[str, Any] = {"program": f"{program} ({ACTIONS[program]})", "rfc_non": rfc[0], "rfc_off": rfc[1],
                               "rfc_x": s.get("rfc_x"), "x": s.get("offload_kernel_x"),
                               "of_limit": _pct(s.get("offload_kernel_of_limit"))}
        for col in COLUMNS:
            r = got.get(col)
            row[col] = None if r is None else f"{r['mpps']:.3g} {_spread(r['spread_pct']) or ''}".strip()
        out.append(row)
    return out


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{v * 100:.0f}%"


MPPS_COLUMNS = [("program", "program"), ("rfc_non", "RFC non-offload"), ("rfc_off", "RFC offload"),
                ("rfc_x", "RFC ×")] + [(c, HEADINGS[c]) for c in COLUMNS] + [
                ("x", "ours × (offload kernel ÷ best non-offload)"), ("of_limit", "offload kernel ÷ limit")]
REGRESSION_COLUMNS = [("test", "test"), ("unit", "unit"), ("off", "offload off"), ("off_spread", "off: spread"),
                      ("on", "offload on"), ("on_spread", "on: spread"), ("delta_pct", "Δ %")]


def _regression_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r | {"off_spread": _spread(r.get("off_spread_pct")), "on_spread": _spread(r.get("on_spread_pct"))}
            for r in doc["regression"]]


def _spread(pct: float | None) -> str | None:
    return None if pct is None else f"±{pct:.0f}%"


def to_markdown(doc: dict[str, Any], command: str, chart: str | None = "seed.png") -> str:
    env, p = doc["environment"], doc["plan"]
    v = env.get("versions", {})
    parts = [
        "# The seed's tables: XDP offload against XDP in the guest, and the limit\n\n",
        (f"`{command}` on {env['date']}: kernel {env['kernel']}, {env['cpu']} ({env['cpus']} CPUs), Python "
        f"{env['python']}, numba {v.get('numba')}, llvmlite {v.get('llvmlite')}, {v.get('ip')}, "
        f"{v.get('iperf3')}, {v.get('sockperf')}; {env['placement']}.\n\n"),
        (f"Mpps of {p['frame_bytes']}-byte UDP frames handled (counted where they end: xdp1's own count, xdp2's "
        f"frames back in the traffic netns), median of {p['runs']} runs of {p['seconds']:g} s after a "
        f"{p['warm_seconds']:g} s warm-up, ± the spread (max − min) of the runs. The RFC's figures are from its "
        "cover letter (another machine, kernel vhost-net and a real guest): compare ratios, not Mpps.\n"),
    ]
    if p.get("quick"):
        parts.append("\n**--quick: a functional check; these figures mean nothing.**\n")
    for case in (1, 2):
        rows = _case_rows(doc, case)
        if rows:
            parts.append(f"\n## {CASE_TITLES[case]}\n\n" + report.markdown_table(MPPS_COLUMNS, rows))
    if doc.get("regression"):
        parts.append("\n## Regression: offload support off and on, no program loaded\n\n"
                     "Between the traffic netns and the guest netns through our backend and driver; iperf3 "
                     "streams (received rate) and sockperf ping-pong (answers per second), "
                     f"{p['regression_seconds']} s each, median of {p['runs']} runs alternating off and on. "
                     "The RFC (netperf): every figure within ±2%.\n\n"
                     + report.markdown_table(REGRESSION_COLUMNS, _regression_rows(doc)))
    if chart:
        parts.append(f"\n![Case 1 and Case 2, Mpps per program and column]({chart})\n")
    return "".join(parts)


def write_chart(doc: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars per program and column, a panel per case, the limit as a line over each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [c for c in COLUMNS if c != LIMIT]
    cases = sorted({r["case"] for r in doc["results"]}) or [1]
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.2), squeeze=False)
    width = 0.8 / len(bars)
    for ax, case in zip(axes[0], cases):
        got = {(r["program"], r["column"]): r["mpps"] for r in doc["results"] if r["case"] == case}
        programs = [prog for prog in PROGRAMS if any(k[0] == prog for k in got)]
        for i, col in enumerate(bars):
            xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(programs))]
            ax.bar(xs, [got.get((prog, col), 0) for prog in programs], width, label=HEADINGS[col])
        for j, prog in enumerate(programs):
            if (prog, LIMIT) in got:
                ax.hlines(got[(prog, LIMIT)], j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                          label=HEADINGS[LIMIT] if j == 0 else None)
        ax.set_xticks(range(len(programs)), [f"{prog} ({ACTIONS[prog]})" for prog in programs])
        ax.set_ylabel("Mpps (64-byte frames)")
        ax.set_title(CASE_TITLES[case], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper right")
    env = doc["environment"]
    fig.suptitle(f"vxdp bench seed: {env['cpu']}, kernel {env['kernel']}, {env['date']}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
