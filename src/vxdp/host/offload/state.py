"""STATE_EXPORT / STATE_IMPORT for the offload service: a device's objects out as a blob, and back in.

Why apart from the per-command code: migration walks every object of a device and recreates
them under chosen handles, which single commands never do. Export reads the device's record
(its handle table) alone; import makes objects through `Objects`, the small API the service
offers for it (a map or a program at a given handle, a map filled, an attachment, a clear),
with the same policy checks and quotas as the guest's commands and without the command rate.
The caller holds the lock that guards the device.

Export: one snapshot per device, taken when the driver starts a walk (empty token) and
kept until the last chunk went out or a new walk starts; so a driver that interleaves
other commands still gets one consistent state (of the moment it started). Frames the
device's port receives meanwhile change map contents the program writes; a migrating
driver detaches (or the VMM pauses the device) first if it needs them exact.

Import (everything or nothing), into a device with no objects (else EBUSY):
1. maps, under their handles, through the same policy checks and quotas as MAP_CREATE;
2. contents of every map but prog_arrays, then freeze the frozen ones (before any program
   loads, so a ``BPF_F_RDONLY_PROG`` map is constant to the verifier, as at the source);
3. programs, under their handles, through PROG_LOAD's policy, quotas, rewrite and the
   host verifier (the guest's own instructions, so the host rewrites them for itself);
4. prog_array contents (program handles), freezing those that were frozen;
5. the attachment.
Any failure detaches and frees everything the import made (`Objects.clear`),
so the device is left empty, and the error goes back as PROG_LOAD's would.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from typing import Protocol

from ...bpf.mapspec import MapType
from ...offload.messages import ProgLoadRequest
from ...offload.wire import OffloadEncodeError, OffloadProtocolError, wire_name
from .errors import OffloadError, engine_call
from .objects import Device, MapObj, ProgObj
from .policy import Policy, Quota
from .state_format import DeviceState, Entries, MapState, ProgState, decode_state, encode_state

_TOKEN = struct.Struct("<IQ")  # snapshot serial, offset of the next chunk
HARD_STATE_LIMIT = 64 << 20  # whatever the quotas, a device buffers no more for one import
BTF_ALLOWANCE = 2 << 20  # per program
FILL_BATCH = 1024  # map entries written per BPF_MAP_UPDATE_BATCH on import


def state_limit(q: Quota) -> int:
    """The largest blob a device with quota ``q`` accepts: all of its map memory, room for every
    instruction with its func/line info, a BTF allowance per program, capped at 64 MiB."""
    return min(HARD_STATE_LIMIT, q.max_map_memory + q.max_total_insns * 48 + q.max_progs * BTF_ALLOWANCE + (1 << 20))


class Objects(Protocol):
    """What an import makes a device's objects with (the offload service offers it): each call applies
    the policy and quotas of the matching command and raises `OffloadError` when refused."""

    policy: Policy

    def create_map_at(self, dev: Device, handle: int, *, type: int, key_size: int, value_size: int,
                      max_entries: int, flags: int = 0, name: str = "") -> MapObj: ...

    def load_prog_at(self, dev: Device, handle: int, load: ProgLoadRequest) -> ProgObj: ...

    def fill_map(self, dev: Device, obj: MapObj, keys: Sequence[bytes], values: Sequence[bytes]) -> int: ...

    def attach(self, dev: Device, handle: int) -> None: ...

    def clear(self, dev: Device) -> None: ...


# -- export ----------------------------------------------------------------------------------------

def export_state(dev: Device) -> DeviceState:
    """The device's objects as its table records them, map contents as the guest knows them."""
    maps = []
    for obj in dev.maps():
        h = obj.handle
        items = dev.guest_values(obj, engine_call(f"map {h}: export", lambda o=obj: list(o.map.items())))
        if obj.is_prog_array:  # a slot whose program is not the device's is not the guest's to move
            items = [(k, v) for k, v in items if v != bytes(4)]
        t = obj.spec.type
        maps.append(MapState(h, obj.name, int(t), obj.spec.key_size, obj.spec.value_size, obj.spec.max_entries,
                             int(obj.spec.flags), bool(getattr(obj.map, "frozen", False)), obj.spec.user_value_size(),
                             tuple(items)))
    progs = []
    for p in dev.progs():
        h, src = p.handle, p.source
        if src is None:
            raise OffloadError(errno.EOPNOTSUPP, f"program {h}: the device did not keep its instructions")
        progs.append(ProgState(h, ProgLoadRequest(src.insns, src.license, wire_name(p.name), src.prog_type,
                                                  btf=src.btf, func_info=src.func_info, line_info=src.line_info)))
    return DeviceState(tuple(maps), tuple(progs), dev.attached or 0, dev.handles.next_handle)


def export_chunk(dev: Device, token: bytes, room: int) -> tuple[bytes, bytes]:
    """The chunk from ``token`` on (at most ``room`` bytes, at least 1) and the token to continue
    (empty: this was the last). An empty ``token`` takes a new snapshot."""
    if not token:
        try:
            blob = encode_state(export_state(dev))
        except OffloadEncodeError as e:
            raise OffloadError(errno.EINVAL, f"STATE_EXPORT: {e}") from None
        dev.export_serial += 1
        dev.export_snapshot = (dev.export_serial, blob)
        offset = 0
    else:
        snap = dev.export_snapshot
        serial, offset = _TOKEN.unpack(token) if len(token) == _TOKEN.size else (-1, 0)
        if snap is None or serial != snap[0] or offset > len(snap[1]):
            raise OffloadError(errno.EINVAL, "STATE_EXPORT: unknown or stale token (a new walk started, the "
                               "walk ended, or the device was reset); start again with an empty token")
    serial, blob = dev.export_snapshot  # type: ignore[misc]
    end = min(len(blob), offset + max(room, 1))
    if end >= len(blob):
        dev.export_snapshot = None
        return blob[offset:], b""
    return blob[offset:end], _TOKEN.pack(serial, end)


# -- import ----------------------------------------------------------------------------------------

def import_chunk(svc: Objects, dev: Device, chunk: bytes, last: bool) -> None:
    """Add ``chunk`` to the device's import; on ``last`` recreate everything (or nothing)."""
    if len(dev.handles) or dev.attached is not None:
        dev.import_buffer = None
        raise OffloadError(errno.EBUSY, f"STATE_IMPORT: device {dev.name} has objects; a state is imported "
                           "only into an empty device (reset it first)")
    buf = dev.import_buffer if dev.import_buffer is not None else bytearray()
    limit = state_limit(svc.policy.quota)
    if len(buf) + len(chunk) > limit:
        dev.import_buffer = None
        raise OffloadError(errno.E2BIG, f"STATE_IMPORT: the state is over {limit} bytes, the most device "
                           f"{dev.name} accepts", "quota.state_size")
    buf += chunk
    dev.import_buffer = buf
    if not last:
        return
    dev.import_buffer = None
    try:
        st = decode_state(buf, QuotaLimits(svc.policy, dev.name))
    except OffloadProtocolError as e:
        raise OffloadError(e.code, str(e)) from None
    import_state(svc, dev, st)


class QuotaLimits:
    """The destination's quotas, asked by the decoder from each header before the bulk it announces
    is read: so a blob declaring more than the device may hold (maps, map memory, programs,
    instructions) is refused having cost its headers, never what it declares. The import's own
    MAP_CREATE / PROG_LOAD checks still apply after (the device is empty, so these are the same sums)."""

    def __init__(self, policy: Policy, device: str):
        self.policy, self.device = policy, device
        self.memory = self.insns = 0

    def counts(self, n_maps: int | None, n_progs: int | None) -> None:
        q = self.policy.quota
        if n_maps is not None and n_maps > q.max_maps:
            raise OffloadError(errno.ENOSPC, f"STATE_IMPORT: {n_maps} maps; device {self.device} may have "
                               f"{q.max_maps}", "quota.max_maps")
        if n_progs is not None and n_progs > q.max_progs:
            raise OffloadError(errno.ENOSPC, f"STATE_IMPORT: {n_progs} programs; device {self.device} may have "
                               f"{q.max_progs}", "quota.max_progs")

    def map_header(self, i: int, map_type: int, key_size: int, value_size: int, max_entries: int,
                   name: str) -> None:
        q = self.policy.quota
        memory = self.policy.check_map(type=map_type, key_size=key_size, value_size=value_size,
                                       max_entries=max_entries, name=name)
        if self.memory + memory > q.max_map_memory:
            raise OffloadError(errno.ENOSPC, f"STATE_IMPORT: map[{i}] {name!r} needs {memory} bytes; the state's "
                               f"maps before it need {self.memory} of the {q.max_map_memory} device "
                               f"{self.device} may use", "quota.max_map_memory")
        self.memory += memory

    def prog_header(self, i: int, insns: int, func_info: int, line_info: int) -> None:
        q = self.policy.quota
        if insns > q.max_insns:
            raise OffloadError(errno.E2BIG, f"STATE_IMPORT: prog[{i}] has {insns} instructions, over the limit "
                               f"{q.max_insns}", "quota.max_insns")
        if self.insns + insns > q.max_total_insns:
            raise OffloadError(errno.ENOSPC, f"STATE_IMPORT: prog[{i}] has {insns} instructions; the state's "
                               f"programs before it have {self.insns} of {q.max_total_insns}",
                               "quota.max_total_insns")
        if func_info > insns or line_info > insns:
            raise OffloadError(errno.EINVAL, f"STATE_IMPORT: prog[{i}]: {func_info} func_info / {line_info} "
                               f"line_info records for {insns} instructions")
        self.insns += insns


def import_state(svc: Objects, dev: Device, st: DeviceState) -> None:
    try:
        _recreate(svc, dev, st)
    except BaseException:
        svc.clear(dev)
        raise
    dev.handles.advance(st.next_handle)


def _recreate(svc: Objects, dev: Device, st: DeviceState) -> None:
    made = {m.handle: svc.create_map_at(dev, m.handle, type=m.map_type, key_size=m.key_size,
                                        value_size=m.value_size, max_entries=m.max_entries, flags=m.flags,
                                        name=m.name) for m in st.maps}
    arrays = [m for m in st.maps if m.map_type == MapType.PROG_ARRAY]
    for m in st.maps:
        if m.map_type != MapType.PROG_ARRAY:
            _fill(svc, dev, made[m.handle], m)
    for p in st.progs:
        svc.load_prog_at(dev, p.handle, p.load)
    for m in arrays:
        _fill(svc, dev, made[m.handle], m)
    if st.attached:
        svc.attach(dev, st.attached)


def _fill(svc: Objects, dev: Device, obj: MapObj, m: MapState) -> None:
    want = obj.spec.user_value_size()
    if m.value_len != want:
        raise OffloadError(errno.EINVAL, f"STATE_IMPORT: map {m.handle}: values of {m.value_len} bytes, this "
                           f"device's are {want} (a per-CPU map needs the same number of CPUs)")
    entries = m.entries if isinstance(m.entries, Entries) else Entries(
        b"".join(k + v for k, v in m.entries), m.key_size, m.value_len)
    for keys, values in entries.batches(FILL_BATCH):  # a batch at a time: the blob stays the only copy
        svc.fill_map(dev, obj, keys, values)
    if m.frozen:
        engine_call(f"STATE_IMPORT: map {m.handle}: freeze", obj.map.freeze)
