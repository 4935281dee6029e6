"""How a BPF-class message lays out its fields: one declaration per message, read and written here.

Most messages are a fixed list of fields, so each declares its wire layout once
(``WIRE``: attribute, kind, cap) and `Message` reads and writes it; the layout in
docs/offload-protocol.md §5 is that list in the same order. The batch messages lay
out their entries with `read_entries` / `write_entries`. Sequences are stored as
tuples so that a decoded message compares equal to the one that was encoded.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..bpf import isa
from ..bpf.obj import FuncInfo, LineInfo
from .wire import (
    FUNC_INFO_SIZE,
    LINE_INFO_SIZE,
    MAX_BATCH,
    MAX_INSNS,
    MAX_KEY,
    MAX_REC_SIZE,
    MAX_VALUE,
    TAG_LEN,
    Command,
    Reader,
    Writer,
)


@dataclass(frozen=True)
class F:
    """One wire field: dataclass attribute, kind (a key of `_READERS`), cap for variable kinds."""

    attr: str
    kind: str
    cap: int = 0


def _read_u32list(r: Reader, f: F) -> tuple[int, ...]:
    n = r.count(f"{f.attr} count", f.cap)
    raw = r.array(f.attr, n, 4)
    return tuple(int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4))


def _read_u64list(r: Reader, f: F) -> tuple[int, ...]:
    n = r.count(f"{f.attr} count", f.cap)
    raw = r.array(f.attr, n, 8)
    return tuple(int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))


def _read_insns(r: Reader, f: F) -> tuple[isa.Insn, ...]:
    n = r.count("insn_cnt", MAX_INSNS)
    return tuple(isa.decode(r.array(f.attr, n, isa.INSN_SIZE)))


def _read_records(r: Reader, f: F, base: int) -> list[bytes]:
    """Records of ``rec_size`` ≥ ``base`` bytes; bytes past ``base`` must be zero (kernel rule)."""
    rec_size = r.u32(f"{f.attr}_rec_size")
    if not base <= rec_size <= MAX_REC_SIZE:
        raise r.error(f"{f.attr}_rec_size", f"{rec_size} is outside {base}..{MAX_REC_SIZE}")
    n = r.count(f"{f.attr}_cnt", MAX_INSNS)
    raw = r.array(f.attr, n, rec_size)
    out = []
    for i in range(n):
        rec = raw[i * rec_size : (i + 1) * rec_size]
        if rec[base:].strip(b"\0"):
            raise r.error(f"{f.attr}[{i}]", f"bytes past the first {base} are not zero")
        out.append(rec[:base])
    return out


def _u32s(rec: bytes) -> list[int]:
    return [int.from_bytes(rec[i : i + 4], "little") for i in range(0, len(rec), 4)]


def _read_func_info(r: Reader, f: F) -> tuple[FuncInfo, ...]:
    return tuple(FuncInfo(*_u32s(rec)) for rec in _read_records(r, f, FUNC_INFO_SIZE))


def _read_line_info(r: Reader, f: F) -> tuple[LineInfo, ...]:
    out = []
    for rec in _read_records(r, f, LINE_INFO_SIZE):
        insn, file_off, line_off, line_col = _u32s(rec)
        out.append(LineInfo(insn, file_off, line_off, line_col >> 10, line_col & 0x3FF))
    return tuple(out)


_READERS: dict[str, Callable[[Reader, F], Any]] = {
    "u8": lambda r, f: r.u8(f.attr),
    "u16": lambda r, f: r.u16(f.attr),
    "u32": lambda r, f: r.u32(f.attr),
    "u64": lambda r, f: r.u64(f.attr),
    "name": lambda r, f: r.name(f.attr),
    "tag": lambda r, f: r.take(TAG_LEN, f.attr),
    "blob": lambda r, f: r.blob(f.attr, f.cap),
    "ascii": lambda r, f: r.ascii(f.attr, f.cap),
    "u32list": _read_u32list,
    "u64list": _read_u64list,
    "insns": _read_insns,
    "func_info": _read_func_info,
    "line_info": _read_line_info,
}


def _write_tag(w: Writer, v: bytes, f: F) -> None:
    if len(v) != TAG_LEN:
        raise w.error(f.attr, f"must be {TAG_LEN} bytes, not {len(v)}")
    w.raw(v)


def _write_list(w: Writer, v: tuple[int, ...], f: F, size: int) -> None:
    w.count(len(v), f"{f.attr} count", f.cap)
    for i, x in enumerate(v):
        (w.u32 if size == 4 else w.u64)(x, f"{f.attr}[{i}]")


def _write_insns(w: Writer, v: tuple[isa.Insn, ...], f: F) -> None:
    w.count(len(v), "insn_cnt", MAX_INSNS)
    try:
        w.raw(isa.encode(list(v)))
    except (struct.error, TypeError) as e:  # a field out of range in Insn.encode
        raise w.error(f.attr, f"an instruction does not encode: {e}") from None


def _write_func_info(w: Writer, v: tuple[FuncInfo, ...], f: F) -> None:
    w.u32(FUNC_INFO_SIZE, f"{f.attr}_rec_size")
    w.count(len(v), f"{f.attr}_cnt", MAX_INSNS)
    for i, fi in enumerate(v):
        w.u32(fi.insn, f"{f.attr}[{i}].insn_off")
        w.u32(fi.type_id, f"{f.attr}[{i}].type_id")


def _write_line_info(w: Writer, v: tuple[LineInfo, ...], f: F) -> None:
    w.u32(LINE_INFO_SIZE, f"{f.attr}_rec_size")
    w.count(len(v), f"{f.attr}_cnt", MAX_INSNS)
    for i, li in enumerate(v):
        for name, value in (("insn_off", li.insn), ("file_name_off", li.file_name_off),
                            ("line_off", li.line_off), ("line_col", li.line_col)):
            w.u32(value, f"{f.attr}[{i}].{name}")


_WRITERS: dict[str, Callable[[Writer, Any, F], None]] = {
    "u8": lambda w, v, f: w.u8(v, f.attr),
    "u16": lambda w, v, f: w.u16(v, f.attr),
    "u32": lambda w, v, f: w.u32(v, f.attr),
    "u64": lambda w, v, f: w.u64(v, f.attr),
    "name": lambda w, v, f: w.name(v, f.attr),
    "tag": _write_tag,
    "blob": lambda w, v, f: w.blob(v, f.attr, f.cap),
    "ascii": lambda w, v, f: w.ascii(v, f.attr, f.cap),
    "u32list": lambda w, v, f: _write_list(w, v, f, 4),
    "u64list": lambda w, v, f: _write_list(w, v, f, 8),
    "insns": _write_insns,
    "func_info": _write_func_info,
    "line_info": _write_line_info,
}
_SEQUENCE_KINDS = frozenset({"u32list", "u64list", "insns", "func_info", "line_info"})


class Message:
    """Base of every request and reply payload: reads and writes its ``WIRE`` layout."""

    COMMAND: ClassVar[Command]
    WIRE: ClassVar[tuple[F, ...]] = ()

    def __post_init__(self) -> None:
        for f in self.WIRE:
            if f.kind in _SEQUENCE_KINDS:
                object.__setattr__(self, f.attr, tuple(getattr(self, f.attr)))

    def write(self, w: Writer) -> None:
        for f in self.WIRE:
            _WRITERS[f.kind](w, getattr(self, f.attr), f)

    @classmethod
    def read(cls, r: Reader) -> Message:
        return cls(**{f.attr: _READERS[f.kind](r, f) for f in cls.WIRE})


def read_entries(r: Reader) -> tuple[int, int, tuple[bytes, ...], tuple[bytes, ...]]:
    count = r.count("count", MAX_BATCH)
    key_size = r.count("key_size", MAX_KEY)
    value_size = r.count("value_size", MAX_VALUE)
    keys = r.array("keys", count, key_size)
    values = r.array("values", count, value_size)
    return (
        key_size,
        value_size,
        tuple(keys[i * key_size : (i + 1) * key_size] for i in range(count)),
        tuple(values[i * value_size : (i + 1) * value_size] for i in range(count)),
    )


def write_entries(w: Writer, key_size: int, value_size: int, keys: tuple[bytes, ...],
                   values: tuple[bytes, ...]) -> None:
    if len(keys) != len(values):
        raise w.error("keys", f"{len(keys)} keys but {len(values)} values")
    w.count(len(keys), "count", MAX_BATCH)
    w.count(key_size, "key_size", MAX_KEY)
    w.count(value_size, "value_size", MAX_VALUE)
    for i, k in enumerate(keys):
        if len(k) != key_size:
            raise w.error(f"keys[{i}]", f"is {len(k)} bytes, key_size is {key_size}")
    for i, v in enumerate(values):
        if len(v) != value_size:
            raise w.error(f"values[{i}]", f"is {len(v)} bytes, value_size is {value_size}")
    w.raw(b"".join(keys))
    w.raw(b"".join(values))
