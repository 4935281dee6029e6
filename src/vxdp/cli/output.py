"""Output shared by every subcommand: JSON like bpftool's ``-j``, value formatting, errors."""

from __future__ import annotations

import json
import sys
from typing import Any


class CliError(Exception):
    """An error the user can act on: one line, plus an optional detail block (a verifier log).

    ``fields`` are the detail as JSON (``log``, ``rule``): with ``-j`` the error is printed as
    ``{"error": message, **fields}`` on stdout, as bpftool does."""

    def __init__(self, message: str, detail: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.detail = detail
        self.fields = fields


def print_error(e: CliError, *, as_json: bool) -> None:
    """The one place an error is printed: a line on stderr (and its detail), or a JSON object on stdout."""
    if as_json:
        doc: dict[str, Any] = {"error": str(e), **e.fields}
        if e.detail and not e.fields:
            doc["detail"] = e.detail
        emit_json(doc)
        sys.stdout.flush()
        return
    print(f"vxdp: {e}", file=sys.stderr)
    if e.detail:
        print(e.detail.rstrip(), file=sys.stderr)


def show_tag(tag: str | None) -> str:
    """A program's tag for humans: the interpreter (a native program) computes none, and the text says
    so rather than print Python's None."""
    return f"tag {tag}" if tag else "tag unknown"


def emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=None, separators=(",", ":"))
    sys.stdout.write("\n")


def as_int(data: bytes) -> int | None:
    """Little-endian unsigned integer of a 1-, 2-, 4- or 8-byte field; None for other sizes."""
    return int.from_bytes(data, "little") if len(data) in (1, 2, 4, 8) else None


def show_bytes(data: bytes) -> str:
    """A field for humans: its integer value when it has a natural width, hex bytes otherwise."""
    value = as_int(data)
    return str(value) if value is not None else data.hex(" ")


def print_map(doc: dict[str, Any], *, show_zero: bool = False) -> None:
    """A map for humans: a header line, then one line per entry whose value is not all zero."""
    print(
        f"  {doc['name']}  {doc['type']}  key {doc['key_size']}B  value {doc['value_size']}B"
        f"  max_entries {doc['max_entries']}{'  frozen' if doc.get('frozen') else ''}"
    )
    hidden = 0
    for entry in doc["entries"]:
        key = show_bytes(bytes.fromhex(entry["key"]))
        if "values" in entry:
            raw = [bytes.fromhex(v["value"]) for v in entry["values"]]
            if not show_zero and not any(any(r) for r in raw):
                hidden += 1
                continue
            shown = " ".join(f"cpu{v['cpu']}:{show_bytes(r)}" for v, r in zip(entry["values"], raw))
        else:
            raw_value = bytes.fromhex(entry["value"])
            if not show_zero and not any(raw_value):
                hidden += 1
                continue
            shown = show_bytes(raw_value)
        print(f"    [{key}] = {shown}")
    if hidden:
        print(f"    ({hidden} entries all zero, not shown)")
