"""Writing benchmark results: one JSON file and one Markdown table per benchmark, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def markdown_table(columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    """``columns`` are (key, heading) pairs; floats print with 3 significant figures, big ones whole;
    a figure not measured (None) prints as ``-``, never as Python's ``None``."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write(out_dir: str | Path, name: str, doc: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path
