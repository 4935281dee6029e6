"""One dataclass per request and per reply payload of the BPF control class.

Most messages are a fixed list of fields, so each declares its wire layout once
(``WIRE``: attribute, kind, cap) and `Message` reads and writes it; the layout in
docs/offload-protocol.md §5 is that list in the same order. The two batch messages
lay out their entries by hand. Sequences are stored as tuples so that a decoded
message compares equal to the one that was encoded.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..bpf import isa
from ..bpf.obj import FuncInfo, LineInfo
from .offload_wire import (
    FUNC_INFO_SIZE,
    LINE_INFO_SIZE,
    MAX_ACTIONS,
    MAX_BATCH,
    MAX_BTF,
    MAX_CHUNK,
    MAX_ENGINE,
    MAX_HELPERS,
    MAX_INSNS,
    MAX_KEY,
    MAX_LICENSE,
    MAX_OBJ_RECORD,
    MAX_REC_SIZE,
    MAX_VALUE,
    OBJ_RECORD_SIZE,
    TAG_LEN,
    VERSION_MAJOR,
    VERSION_MINOR,
    Command,
    ObjFlag,
    ObjKind,
    ObjOrigin,
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


def _read_entries(r: Reader) -> tuple[int, int, tuple[bytes, ...], tuple[bytes, ...]]:
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


def _write_entries(w: Writer, key_size: int, value_size: int, keys: tuple[bytes, ...],
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


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CapsRequest(Message):
    COMMAND = Command.CAPS


@dataclass(frozen=True)
class MapCreateRequest(Message):
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int = 0
    name: str = ""
    COMMAND = Command.MAP_CREATE
    WIRE = (F("map_type", "u32"), F("key_size", "u32"), F("value_size", "u32"),
            F("max_entries", "u32"), F("map_flags", "u32"), F("name", "name"))


@dataclass(frozen=True)
class MapFreeRequest(Message):
    map: int
    COMMAND = Command.MAP_FREE
    WIRE = (F("map", "u32"),)


@dataclass(frozen=True)
class MapLookupRequest(Message):
    map: int
    key: bytes
    flags: int = 0
    COMMAND = Command.MAP_LOOKUP
    WIRE = (F("map", "u32"), F("flags", "u64"), F("key", "blob", MAX_KEY))


@dataclass(frozen=True)
class MapUpdateRequest(Message):
    map: int
    key: bytes
    value: bytes
    flags: int = 0  # BPF_ANY / BPF_NOEXIST / BPF_EXIST
    COMMAND = Command.MAP_UPDATE
    WIRE = (F("map", "u32"), F("flags", "u64"), F("key", "blob", MAX_KEY), F("value", "blob", MAX_VALUE))


@dataclass(frozen=True)
class MapDeleteRequest(Message):
    map: int
    key: bytes
    COMMAND = Command.MAP_DELETE
    WIRE = (F("map", "u32"), F("key", "blob", MAX_KEY))


@dataclass(frozen=True)
class MapGetNextKeyRequest(Message):
    map: int
    key: bytes = b""  # empty: the first key
    COMMAND = Command.MAP_GET_NEXT_KEY
    WIRE = (F("map", "u32"), F("key", "blob", MAX_KEY))


@dataclass(frozen=True)
class MapLookupBatchRequest(Message):
    map: int
    max_count: int
    token: bytes = b""  # empty: from the start
    COMMAND = Command.MAP_LOOKUP_BATCH
    WIRE = (F("map", "u32"), F("max_count", "u32"), F("token", "blob", MAX_KEY))


@dataclass(frozen=True)
class MapUpdateBatchRequest(Message):
    map: int
    key_size: int
    value_size: int
    keys: tuple[bytes, ...]
    values: tuple[bytes, ...]
    flags: int = 0
    COMMAND = Command.MAP_UPDATE_BATCH

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "values", tuple(self.values))

    def write(self, w: Writer) -> None:
        w.u32(self.map, "map")
        w.u64(self.flags, "flags")
        _write_entries(w, self.key_size, self.value_size, self.keys, self.values)

    @classmethod
    def read(cls, r: Reader) -> MapUpdateBatchRequest:
        map_, flags = r.u32("map"), r.u64("flags")
        key_size, value_size, keys, values = _read_entries(r)
        return cls(map_, key_size, value_size, keys, values, flags)


@dataclass(frozen=True)
class MapFreezeRequest(Message):
    """MAP_FREEZE (1.1): the map becomes read-only to the driver for good, and a BPF_F_RDONLY_PROG
    map's contents constants to the device's verifier (libbpf freezes ``.rodata`` so)."""

    map: int
    COMMAND = Command.MAP_FREEZE
    WIRE = (F("map", "u32"),)


@dataclass(frozen=True)
class ProgLoadRequest(Message):
    """PROG_LOAD. ``insns`` carry guest map handles in lddw immediates (MAP_FD / MAP_VALUE)."""

    insns: tuple[isa.Insn, ...]
    license: str = "GPL"
    name: str = ""
    prog_type: int = 6  # BPF_PROG_TYPE_XDP
    expected_attach_type: int = 0
    prog_flags: int = 0
    log_level: int = 0
    log_size: int = 0
    kern_version: int = 0
    btf: bytes = b""
    func_info: tuple[FuncInfo, ...] = ()
    line_info: tuple[LineInfo, ...] = ()
    COMMAND = Command.PROG_LOAD
    WIRE = (F("prog_type", "u32"), F("expected_attach_type", "u32"), F("prog_flags", "u32"),
            F("name", "name"), F("log_level", "u32"), F("log_size", "u32"), F("kern_version", "u32"),
            F("license", "ascii", MAX_LICENSE), F("insns", "insns"), F("btf", "blob", MAX_BTF),
            F("func_info", "func_info"), F("line_info", "line_info"))


@dataclass(frozen=True)
class ProgFreeRequest(Message):
    prog: int
    COMMAND = Command.PROG_FREE
    WIRE = (F("prog", "u32"),)


@dataclass(frozen=True)
class ProgAttachRequest(Message):
    prog: int
    attach_point: int = 0  # AttachPoint.RX
    flags: int = 0  # AttachFlag.REPLACE
    COMMAND = Command.PROG_ATTACH
    WIRE = (F("prog", "u32"), F("attach_point", "u32"), F("flags", "u32"))


@dataclass(frozen=True)
class ProgDetachRequest(Message):
    attach_point: int = 0
    COMMAND = Command.PROG_DETACH
    WIRE = (F("attach_point", "u32"),)


@dataclass(frozen=True)
class ProgQueryRequest(Message):
    attach_point: int = 0
    COMMAND = Command.PROG_QUERY
    WIRE = (F("attach_point", "u32"),)


@dataclass(frozen=True)
class StateExportRequest(Message):
    token: bytes = b""
    COMMAND = Command.STATE_EXPORT
    WIRE = (F("token", "blob", MAX_KEY),)


@dataclass(frozen=True)
class StateImportRequest(Message):
    chunk: bytes
    flags: int = 0  # StateImportFlag.LAST
    COMMAND = Command.STATE_IMPORT
    WIRE = (F("flags", "u32"), F("chunk", "blob", MAX_CHUNK))


@dataclass(frozen=True)
class ObjListRequest(Message):
    """OBJ_LIST (1.2): the device's record of its maps and programs, from ``token`` on."""

    max_count: int = 0  # 0: as many as the writable area holds
    token: bytes = b""  # empty: from the start
    COMMAND = Command.OBJ_LIST
    WIRE = (F("max_count", "u32"), F("token", "blob", MAX_KEY))


REQUESTS: dict[Command, type[Message]] = {
    cls.COMMAND: cls
    for cls in (CapsRequest, MapCreateRequest, MapFreeRequest, MapLookupRequest, MapUpdateRequest,
                MapDeleteRequest, MapGetNextKeyRequest, MapLookupBatchRequest, MapUpdateBatchRequest,
                MapFreezeRequest, ProgLoadRequest, ProgFreeRequest, ProgAttachRequest, ProgDetachRequest, ProgQueryRequest,
                StateExportRequest, StateImportRequest, ObjListRequest)
}

# --- reply payloads -------------------------------------------------------------------------


@dataclass(frozen=True)
class CapsReply(Message):
    engine: str
    map_types: int  # bit n: enum bpf_map_type n allowed
    helpers: tuple[int, ...]
    max_maps: int = 0
    max_progs: int = 0
    max_map_memory: int = 0
    max_insns: int = 0
    max_key_size: int = 0
    max_value_size: int = 0
    max_entries: int = 0
    max_batch: int = 0
    max_request: int = 0
    cmd_rate: int = 0
    ncpus: int = 1
    attach_points: int = 1  # bit 0: RX
    flags: int = 0  # CapsFlag
    version_major: int = VERSION_MAJOR
    version_minor: int = VERSION_MINOR
    COMMAND = Command.CAPS
    WIRE = (F("version_major", "u16"), F("version_minor", "u16"), F("flags", "u32"),
            F("map_types", "u64"), F("max_maps", "u32"), F("max_progs", "u32"),
            F("max_map_memory", "u64"), F("max_insns", "u32"), F("max_key_size", "u32"),
            F("max_value_size", "u32"), F("max_entries", "u32"), F("max_batch", "u32"),
            F("max_request", "u32"), F("cmd_rate", "u32"), F("ncpus", "u32"), F("attach_points", "u32"),
            F("engine", "ascii", MAX_ENGINE), F("helpers", "u32list", MAX_HELPERS))

    def allows_map_type(self, map_type: int) -> bool:
        return 0 <= map_type < 64 and bool(self.map_types >> map_type & 1)


@dataclass(frozen=True)
class MapCreateReply(Message):
    map: int
    COMMAND = Command.MAP_CREATE
    WIRE = (F("map", "u32"),)


@dataclass(frozen=True)
class MapLookupReply(Message):
    value: bytes
    COMMAND = Command.MAP_LOOKUP
    WIRE = (F("value", "blob", MAX_VALUE),)


@dataclass(frozen=True)
class MapGetNextKeyReply(Message):
    key: bytes
    COMMAND = Command.MAP_GET_NEXT_KEY
    WIRE = (F("key", "blob", MAX_KEY),)


@dataclass(frozen=True)
class MapLookupBatchReply(Message):
    key_size: int
    value_size: int
    keys: tuple[bytes, ...]
    values: tuple[bytes, ...]
    token: bytes = b""  # empty: the walk is complete
    COMMAND = Command.MAP_LOOKUP_BATCH

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "values", tuple(self.values))

    def write(self, w: Writer) -> None:
        w.blob(self.token, "token", MAX_KEY)
        _write_entries(w, self.key_size, self.value_size, self.keys, self.values)

    @classmethod
    def read(cls, r: Reader) -> MapLookupBatchReply:
        token = r.blob("token", MAX_KEY)
        key_size, value_size, keys, values = _read_entries(r)
        return cls(key_size, value_size, keys, values, token)


@dataclass(frozen=True)
class MapUpdateBatchReply(Message):
    applied: int
    COMMAND = Command.MAP_UPDATE_BATCH
    WIRE = (F("applied", "u32"),)


@dataclass(frozen=True)
class ProgLoadReply(Message):
    prog: int
    tag: bytes
    COMMAND = Command.PROG_LOAD
    WIRE = (F("prog", "u32"), F("tag", "tag"))


@dataclass(frozen=True)
class ProgQueryReply(Message):
    prog: int
    tag: bytes
    actions: tuple[int, ...]  # frames per XDP action: ABORTED, DROP, PASS, TX, REDIRECT
    COMMAND = Command.PROG_QUERY
    WIRE = (F("prog", "u32"), F("tag", "tag"), F("actions", "u64list", MAX_ACTIONS))


@dataclass(frozen=True)
class StateExportReply(Message):
    token: bytes
    chunk: bytes
    COMMAND = Command.STATE_EXPORT
    WIRE = (F("token", "blob", MAX_KEY), F("chunk", "blob", MAX_CHUNK))


@dataclass(frozen=True)
class ObjInfo(Message):
    """One record of an OBJ_LIST reply (not a message by itself): a map (``kind`` MAP, the map fields
    set) or a program (``kind`` PROG, ``insns`` and ``tag`` set) as the device records it."""

    handle: int
    kind: int  # ObjKind
    name: str = ""
    origin: int = ObjOrigin.DRIVER
    flags: int = 0  # ObjFlag
    type: int = 0  # enum bpf_map_type or enum bpf_prog_type
    key_size: int = 0
    value_size: int = 0
    max_entries: int = 0
    map_flags: int = 0
    insns: int = 0
    tag: bytes = bytes(TAG_LEN)
    COMMAND = Command.OBJ_LIST
    WIRE = (F("handle", "u32"), F("kind", "u8"), F("origin", "u8"), F("flags", "u16"), F("name", "name"),
            F("type", "u32"), F("key_size", "u32"), F("value_size", "u32"), F("max_entries", "u32"),
            F("map_flags", "u32"), F("insns", "u32"), F("tag", "tag"))

    @property
    def is_map(self) -> bool:
        return self.kind == ObjKind.MAP

    @property
    def attached(self) -> bool:
        return bool(self.flags & ObjFlag.ATTACHED)

    @property
    def frozen(self) -> bool:
        return bool(self.flags & ObjFlag.FROZEN)


@dataclass(frozen=True)
class ObjListReply(Message):
    """OBJ_LIST's records in handle order, and the token to continue from (empty: the list is complete)."""

    objects: tuple[ObjInfo, ...]
    token: bytes = b""
    COMMAND = Command.OBJ_LIST

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))

    def write(self, w: Writer) -> None:
        w.blob(self.token, "token", MAX_KEY)
        w.count(len(self.objects), "count", MAX_BATCH)
        w.u32(OBJ_RECORD_SIZE, "rec_size")
        for i, o in enumerate(self.objects):
            if o.kind not in tuple(ObjKind):
                raise w.error(f"objects[{i}].kind", f"{o.kind!r} is not MAP (1) or PROG (2)")
            o.write(w)

    @classmethod
    def read(cls, r: Reader) -> ObjListReply:
        token = r.blob("token", MAX_KEY)
        count = r.count("count", MAX_BATCH)
        rec_size = r.u32("rec_size")
        if not OBJ_RECORD_SIZE <= rec_size <= MAX_OBJ_RECORD:
            raise r.error("rec_size", f"{rec_size} is outside {OBJ_RECORD_SIZE}..{MAX_OBJ_RECORD}")
        raw = r.array("records", count, rec_size)
        objects = []
        for i in range(count):
            rr = Reader(raw[i * rec_size : i * rec_size + OBJ_RECORD_SIZE], r.command, f"{r.what} objects[{i}]")
            o = ObjInfo.read(rr)  # bytes past the 1.2 fields belong to a later version: skipped
            if o.kind not in tuple(ObjKind):
                raise rr.error("kind", f"{o.kind} is not MAP (1) or PROG (2)")
            objects.append(o)
        return cls(tuple(objects), token)  # type: ignore[arg-type]


# Commands absent here answer an empty payload on success.
REPLIES: dict[Command, type[Message]] = {
    cls.COMMAND: cls
    for cls in (CapsReply, MapCreateReply, MapLookupReply, MapGetNextKeyReply, MapLookupBatchReply,
                MapUpdateBatchReply, ProgLoadReply, ProgQueryReply, StateExportReply, ObjListReply)
}
