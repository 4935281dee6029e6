"""One dataclass per request and per reply payload of the BPF control class (spec §5), in command order."""

from __future__ import annotations

from dataclasses import dataclass

from ..bpf import isa
from ..bpf.obj import FuncInfo, LineInfo
from .layout import F, Message, read_entries, write_entries
from .wire import (
    MAX_ACTIONS,
    MAX_BATCH,
    MAX_BTF,
    MAX_CHUNK,
    MAX_ENGINE,
    MAX_HELPERS,
    MAX_KEY,
    MAX_LICENSE,
    MAX_OBJ_RECORD,
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
        write_entries(w, self.key_size, self.value_size, self.keys, self.values)

    @classmethod
    def read(cls, r: Reader) -> MapUpdateBatchRequest:
        map_, flags = r.u32("map"), r.u64("flags")
        key_size, value_size, keys, values = read_entries(r)
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
        write_entries(w, self.key_size, self.value_size, self.keys, self.values)

    @classmethod
    def read(cls, r: Reader) -> MapLookupBatchReply:
        token = r.blob("token", MAX_KEY)
        key_size, value_size, keys, values = read_entries(r)
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
