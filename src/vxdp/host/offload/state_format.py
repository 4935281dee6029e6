"""The device state format of STATE_EXPORT / STATE_IMPORT (docs/offload-protocol.md §5 "State"), version 1.

Pure: a `DeviceState` to bytes and back, no syscalls. The blob crosses the guest (the
driver carries it from the source device to the destination of a migration, and may
keep it in a file), so the decoder is a security boundary like the request codec: it
reads with the codec's bounded `Reader` (every length and count checked against its cap
and against what is left *before* anything is sliced or allocated), checks the
structure (unique non-zero handles, an attachment that names a program), and the
CRC-32 trailer catches a blob damaged on the way. Every failure is one
`OffloadProtocolError` (``EINVAL``, ``E2BIG`` for a cap) whose message names the field.

Layout (little-endian, packed)::

    u8   magic[8] = "VXDPSTAT"
    le16 version (1); le16 flags (0)
    le32 next_handle        the source's next fresh handle (the destination starts there)
    le32 attached           program handle on attach point RX, 0 = none
    le32 n_maps;  map records
    le32 n_progs; program records
    le32 crc32              zlib CRC-32 of every byte before it

    map record:  le32 handle, map_type, key_size, value_size, max_entries, map_flags;
                 blob(name, UTF-8); u8 frozen; le32 value_len; le32 n_entries;
                 n_entries x (u8 key[key_size], u8 value[value_len])
    prog record: le32 handle; then exactly a PROG_LOAD request body (§5) as the guest
                 sent it: guest map handles in the lddw immediates, BTF, func_info, line_info

Values are as on the wire: per-CPU maps carry ``ncpus x round_up(value_size, 8)`` bytes
(``value_len`` says how many; a destination with another CPU count refuses), prog_array
values are le32 *program handles*.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ...offload.messages import ProgLoadRequest
from ...offload.wire import MAX_KEY, MAX_VALUE, NAME_LEN, Command, OffloadProtocolError, Reader, Writer

MAGIC = b"VXDPSTAT"
FORMAT_VERSION = 1
MAX_OBJECTS = 4096  # maps, programs: far above any quota, below anything that costs memory to count
MAX_ENTRIES = 1 << 24  # entries of one map in a blob
MAX_NAME = 255
_WHAT = "state blob"


class Entries(Sequence[tuple[bytes, bytes]]):
    """A map's entries as the blob holds them: one buffer of ``n x (key, value)`` records, cut into
    pairs only when read, so decoding a blob allocates nothing per entry (an import writes them in
    batches straight from here). Equal to the tuple of its pairs."""

    def __init__(self, raw: bytes | memoryview, key_size: int, value_len: int):
        self.raw, self.key_size, self.step = raw, key_size, key_size + value_len

    def __len__(self) -> int:
        return len(self.raw) // self.step if self.step else 0

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        at = (i % len(self)) * self.step
        return bytes(self.raw[at:at + self.key_size]), bytes(self.raw[at + self.key_size:at + self.step])

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        for i in range(len(self)):
            yield self[i]

    def batches(self, n: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """(keys, values) lists of at most ``n`` entries each: what a batched update takes."""
        for start in range(0, len(self), n):
            pairs = [self[i] for i in range(start, min(start + n, len(self)))]
            yield [k for k, _ in pairs], [v for _, v in pairs]

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (Entries, tuple)) else other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Entries({len(self)} x {self.step} bytes)"


class Limits(Protocol):
    """What a decoder asks before it reads a record's bulk (an importing device's quotas): each hook
    raises to refuse, so a blob over the quota costs no more than its headers."""

    def counts(self, n_maps: int | None, n_progs: int | None) -> None: ...

    def map_header(self, i: int, map_type: int, key_size: int, value_size: int, max_entries: int,
                   name: str) -> None: ...

    def prog_header(self, i: int, insns: int, func_info: int, line_info: int) -> None: ...


@dataclass(frozen=True)
class MapState:
    """One map: spec, frozen or not, every entry (wire values)."""

    handle: int
    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    frozen: bool
    value_len: int
    entries: Sequence[tuple[bytes, bytes]] = ()  # a tuple, or the decoder's lazy `Entries`


@dataclass(frozen=True)
class ProgState:
    """One program: its handle and the PROG_LOAD the guest sent (log fields zero)."""

    handle: int
    load: ProgLoadRequest


@dataclass(frozen=True)
class DeviceState:
    maps: tuple[MapState, ...] = ()
    progs: tuple[ProgState, ...] = ()
    attached: int = 0
    next_handle: int = 1


def encode_state(st: DeviceState) -> bytes:
    """The blob for ``st``; `OffloadEncodeError` if a field cannot be carried."""
    w = Writer(Command.STATE_EXPORT, _WHAT)
    w.raw(MAGIC)
    w.u16(FORMAT_VERSION, "version")
    w.u16(0, "flags")
    w.u32(st.next_handle, "next_handle")
    w.u32(st.attached, "attached")
    w.count(len(st.maps), "n_maps", MAX_OBJECTS)
    for i, m in enumerate(st.maps):
        f = f"map[{i}]"
        for attr in ("handle", "map_type", "key_size", "value_size", "max_entries", "flags"):
            w.u32(getattr(m, attr), f"{f}.{attr}")
        w.blob(m.name.encode("utf-8"), f"{f}.name", MAX_NAME)
        w.u8(1 if m.frozen else 0, f"{f}.frozen")
        w.count(m.value_len, f"{f}.value_len", MAX_VALUE)
        w.count(len(m.entries), f"{f}.n_entries", MAX_ENTRIES)
        if isinstance(m.entries, Entries) and m.entries.step == m.key_size + m.value_len:
            w.raw(bytes(m.entries.raw))
            continue
        for j, (k, v) in enumerate(m.entries):
            if len(k) != m.key_size or len(v) != m.value_len:
                raise w.error(f"{f}.entries[{j}]", f"key {len(k)}/value {len(v)} bytes, not "
                              f"{m.key_size}/{m.value_len}")
            w.raw(k)
            w.raw(v)
    w.count(len(st.progs), "n_progs", MAX_OBJECTS)
    for i, p in enumerate(st.progs):
        w.u32(p.handle, f"prog[{i}].handle")
        p.load.write(w)
    body = w.bytes()
    return body + zlib.crc32(body).to_bytes(4, "little")


def decode_state(blob: bytes | bytearray, limits: Limits | None = None) -> DeviceState:
    """Parse and check a blob; `OffloadProtocolError` (naming the field) for anything wrong.

    ``limits`` is asked about each count and record header before the record's bulk is read (map
    entries stay in the blob's buffer, see `Entries`); what it raises propagates."""
    if len(blob) < len(MAGIC) + 4 + 4:
        raise OffloadProtocolError(Command.STATE_IMPORT, _WHAT, f"{len(blob)} bytes is too short to be a state")
    view = memoryview(blob)
    body, crc = view[:-4], int.from_bytes(view[-4:], "little")
    r = Reader(body, Command.STATE_IMPORT, _WHAT)
    if r.take(len(MAGIC), "magic") != MAGIC:
        raise r.error("magic", f"is not {MAGIC.decode()}: not a vxdp device state")
    version = r.u16("version")
    if version != FORMAT_VERSION:
        raise r.error("version", f"{version} is not the supported version {FORMAT_VERSION}")
    if zlib.crc32(body) != crc:
        raise r.error("crc32", "checksum mismatch: the blob was cut or damaged")
    if r.u16("flags"):
        raise r.error("flags", "must be 0 in version 1")
    next_handle = r.u32("next_handle")
    attached = r.u32("attached")
    n_maps = r.count("n_maps", MAX_OBJECTS)
    if limits is not None:
        limits.counts(n_maps, None)
    maps = tuple(_read_map(r, f"map[{i}]", i, limits) for i in range(n_maps))
    progs = []
    n_progs = r.count("n_progs", MAX_OBJECTS)
    if limits is not None:
        limits.counts(None, n_progs)
    for i in range(n_progs):
        handle = r.u32(f"prog[{i}].handle")
        if limits is not None:
            limits.prog_header(i, *_peek_prog_counts(r))
        load = ProgLoadRequest.read(r)
        assert isinstance(load, ProgLoadRequest)
        progs.append(ProgState(handle, load))
    r.end()
    st = DeviceState(maps, tuple(progs), attached, next_handle)
    _check_structure(r, st)
    return st


_PEEK_U32 = struct.Struct("<I")


def _peek_prog_counts(r: Reader) -> tuple[int, int, int]:
    """(insn_cnt, func_info_cnt, line_info_cnt) of the PROG_LOAD body at the reader's position, read
    ahead without moving it (0 where the body is too short: the real read then says what is wrong)."""
    buf, pos = r.ahead(), 0

    def u32(at: int) -> int | None:
        return _PEEK_U32.unpack_from(buf, at)[0] if 0 <= at <= len(buf) - 4 else None

    lic = u32(pos + 12 + NAME_LEN + 12)  # prog_type, attach type, flags; name; log_level, log_size, version
    if lic is None:
        return 0, 0, 0
    at = pos + 12 + NAME_LEN + 12 + 4 + lic
    insns = u32(at) or 0
    at += 4 + 8 * insns
    btf = u32(at)
    if btf is None:
        return insns, 0, 0
    at += 4 + btf
    frec, fcnt = u32(at), u32(at + 4)
    if frec is None or fcnt is None:
        return insns, 0, 0
    at += 8 + frec * fcnt
    lcnt = u32(at + 4)
    return insns, fcnt, lcnt or 0


def _read_map(r: Reader, f: str, i: int = 0, limits: Limits | None = None) -> MapState:
    handle, map_type, key_size, value_size, max_entries, flags = (
        r.u32(f"{f}.{a}") for a in ("handle", "map_type", "key_size", "value_size", "max_entries", "flags"))
    try:
        name = r.blob(f"{f}.name", MAX_NAME).decode("utf-8")
    except UnicodeDecodeError:
        raise r.error(f"{f}.name", "is not UTF-8") from None
    if limits is not None:
        limits.map_header(i, map_type, key_size, value_size, max_entries, name)
    frozen = r.u8(f"{f}.frozen")
    if frozen > 1:
        raise r.error(f"{f}.frozen", f"{frozen} is not 0 or 1")
    value_len = r.count(f"{f}.value_len", MAX_VALUE)
    n = r.count(f"{f}.n_entries", MAX_ENTRIES)
    if n and not (0 < key_size <= MAX_KEY and value_len > 0):
        raise r.error(f"{f}.key_size", f"{n} entries of key {key_size} / value {value_len} bytes")
    if n > max_entries:
        raise r.error(f"{f}.n_entries", f"{n} is above the map's max_entries {max_entries}")
    step = key_size + value_len
    if n * step > r.remaining:
        raise r.error(f"{f}.entries", f"{n} x {step} bytes run past the end ({r.remaining} left)")
    raw = r.view(n * step, f"{f}.entries")  # a view of the blob: no copy, nothing per entry
    return MapState(handle, name, map_type, key_size, value_size, max_entries, flags, bool(frozen), value_len,
                    Entries(raw, key_size, value_len))


def _check_structure(r: Reader, st: DeviceState) -> None:
    seen: set[int] = set()
    for what, h in [("map", m.handle) for m in st.maps] + [("prog", p.handle) for p in st.progs]:
        if h == 0:
            raise r.error(f"{what} handle", "0 is not a handle")
        if h in seen:
            raise r.error(f"{what} handle", f"{h} appears twice")
        seen.add(h)
    if st.attached and st.attached not in {p.handle for p in st.progs}:
        raise r.error("attached", f"{st.attached} is not one of the blob's programs")
