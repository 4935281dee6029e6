"""Kernel maps through bpf(2): create, element ops, batch ops, freeze, info.

`KernelMap` is a `vxdp.bpf.mapapi.Map`, the interface every engine's maps share:
keys and values are bytes, a lookup or next_key that finds nothing is
``None``, and every other refusal is a `BpfError` (an `OSError`) carrying the
kernel's errno, so callers see exactly what the kernel said. Per-CPU values are
what the kernel gives user space: ``possible_cpus()`` slots of
``round_up(value_size, 8)`` bytes each.

Batch commands (BPF_MAP_*_BATCH) move many elements per syscall; their
``in_batch``/``out_batch`` token is opaque (a bucket index for hashes, a key for
arrays), so we keep it as bytes of ``max(key_size, 8)`` and hand it back.
"""

from __future__ import annotations

import ctypes
import errno
import re
from dataclasses import dataclass

from ..mapapi import Map, freezes_after_init
from ..mapspec import MapSpec, MapType, UpdateFlag, possible_cpus
from .objects import obj_get_info
from .syscall import BpfError, Cmd, FdOwner, buf_addr, call, call_or_none

OBJ_NAME_LEN = 16  # BPF_OBJ_NAME_LEN, including the NUL


class MapError(ValueError):
    """A caller passed a key or value of the wrong size, or a bad spec, before any syscall."""


class _MapCreateAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_MAP_CREATE. Offsets: map_type 0, key_size 4, value_size 8,
    max_entries 12, map_flags 16, inner_map_fd 20, numa_node 24, map_name 28..43, map_ifindex 44,
    btf_fd 48, btf_key_type_id 52, btf_value_type_id 56, btf_vmlinux_value_type_id 60, map_extra 64."""

    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * OBJ_NAME_LEN),
        ("map_ifindex", ctypes.c_uint32),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class _ElemAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_MAP_*_ELEM and GET_NEXT_KEY: map_fd 0, key 8, value/next_key 16, flags 24."""

    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _BatchAttr(ctypes.Structure):
    """``union bpf_attr`` (``batch``) for BPF_MAP_*_BATCH: in_batch 0, out_batch 8, keys 16,
    values 24, count 32, map_fd 36, elem_flags 40, flags 48."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class BpfMapInfo(ctypes.Structure):
    """``struct bpf_map_info`` (uapi), 88 bytes, 8-aligned."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says about a map (BPF_OBJ_GET_INFO_BY_FD)."""

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str
    btf_id: int
    btf_key_type_id: int
    btf_value_type_id: int


@dataclass
class BatchResult:
    """One batch lookup: the elements it returned and the token to continue from.

    ``next_batch`` is ``None`` once the kernel reported the end of the map (ENOENT).
    """

    keys: list[bytes]
    values: list[bytes]
    next_batch: bytes | None

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(zip(self.keys, self.values))


_NAME_BAD = re.compile(r"[^A-Za-z0-9_.]")


def sanitize_name(name: str) -> str:
    """A name the kernel accepts for a map or program: [A-Za-z0-9_.], at most 15 characters."""
    return _NAME_BAD.sub("_", name)[: OBJ_NAME_LEN - 1]


class KernelMap(FdOwner, Map):
    """A kernel map this process owns through one fd (closed by `close`, idempotently)."""

    def __init__(self, fd: int, spec: MapSpec):
        self._fd = fd
        self.spec = spec
        self._ncpus = possible_cpus() if spec.is_percpu else 1
        self._batch_token = max(spec.key_size, 8)
        self.frozen = False  # set once we froze it (the kernel answers EPERM to a second freeze)

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        spec: MapSpec,
        *,
        name: str | None = None,
        btf_fd: int = 0,
        btf_key_type_id: int = 0,
        btf_value_type_id: int = 0,
        inner_map_fd: int = 0,
    ) -> KernelMap:
        """Create the map ``spec`` describes; fill and freeze global-data maps as libbpf does.

        A spec with ``data`` gets it written at key 0 (zero-padded to value_size);
        a ``.rodata`` map (`freezes_after_init`) is then frozen so that user space can
        no longer change it and the verifier may treat its contents as constants.
        """
        if spec.key_size < 0 or spec.value_size <= 0 or spec.max_entries <= 0:
            raise MapError(f"map {spec.name!r}: bad sizes key={spec.key_size} value={spec.value_size} "
                           f"max_entries={spec.max_entries}")
        attr = _MapCreateAttr(
            map_type=int(spec.type),
            key_size=spec.key_size,
            value_size=spec.value_size,
            max_entries=spec.max_entries,
            map_flags=spec.flags,
            inner_map_fd=inner_map_fd,
            map_name=sanitize_name(name if name is not None else spec.name).encode(),
            btf_fd=btf_fd,
            btf_key_type_id=btf_key_type_id or (spec.btf_key_type_id if btf_fd else 0),
            btf_value_type_id=btf_value_type_id or (spec.btf_value_type_id if btf_fd else 0),
        )
        fd = call(Cmd.MAP_CREATE, attr, f"map {spec.name!r}")
        m = cls(fd, spec)
        try:
            if spec.data is not None:
                if len(spec.data) > spec.value_size:
                    raise MapError(f"map {spec.name!r}: initial data of {len(spec.data)} bytes "
                                   f"exceeds value_size {spec.value_size}")
                m.update(bytes(spec.key_size), spec.data.ljust(spec.value_size, b"\0"))
            if freezes_after_init(spec):
                m.freeze()
        except BaseException:
            m.close()
            raise
        return m

    @classmethod
    def from_fd(cls, fd: int, name: str | None = None) -> KernelMap:
        """Adopt an fd (from `map_get_fd_by_id`, `obj_get`): its spec comes from the kernel's info."""
        info = BpfMapInfo()
        obj_get_info(fd, info, "map")
        spec = MapSpec(
            name=name or info.name.decode(errors="replace"),
            type=MapType(info.type) if info.type in MapType._value2member_map_ else info.type,
            key_size=info.key_size,
            value_size=info.value_size,
            max_entries=info.max_entries,
            flags=info.map_flags,
        )
        return cls(fd, spec)

    @property
    def handle(self) -> int:
        """What ``lddw src=MAP_FD`` carries for this map: its fd."""
        return self.fd

    @property
    def value_bytes(self) -> int:
        """Bytes of one value as user space sees it (all CPUs' slots for a per-CPU map)."""
        return self.spec.user_value_size(self._ncpus)

    def _what(self) -> str:
        return f"map {self.spec.name!r}"

    def _key(self, key: bytes) -> ctypes.Array:
        if len(key) != self.spec.key_size:
            raise MapError(f"{self._what()}: key of {len(key)} bytes, expected {self.spec.key_size}")
        return ctypes.create_string_buffer(bytes(key), max(len(key), 1))

    def _value(self, value: bytes) -> ctypes.Array:
        if len(value) != self.value_bytes:
            raise MapError(f"{self._what()}: value of {len(value)} bytes, expected {self.value_bytes}")
        return ctypes.create_string_buffer(bytes(value), len(value))

    def _keys_buf(self, keys: list[bytes]) -> ctypes.Array:
        raw = b"".join(self._key(k).raw for k in keys)
        return ctypes.create_string_buffer(raw, len(raw))

    # -- element ops ----------------------------------------------------------------------
    def lookup(self, key: bytes) -> bytes | None:
        k, v = self._key(key), ctypes.create_string_buffer(self.value_bytes)
        attr = _ElemAttr(map_fd=self.fd, key=buf_addr(k), value=buf_addr(v))
        if call_or_none(Cmd.MAP_LOOKUP_ELEM, attr, self._what()) is None:
            return None
        return v.raw

    def update(self, key: bytes, value: bytes, flags: UpdateFlag | int = UpdateFlag.ANY) -> None:
        k, v = self._key(key), self._value(value)
        call(Cmd.MAP_UPDATE_ELEM, _ElemAttr(map_fd=self.fd, key=buf_addr(k), value=buf_addr(v), flags=flags),
             self._what())

    def delete(self, key: bytes) -> None:
        """Raises `BpfError` ENOENT for a missing key, EINVAL on arrays (the kernel's answers)."""
        k = self._key(key)
        call(Cmd.MAP_DELETE_ELEM, _ElemAttr(map_fd=self.fd, key=buf_addr(k)), self._what())

    def lookup_and_delete(self, key: bytes) -> bytes | None:
        k, v = self._key(key), ctypes.create_string_buffer(self.value_bytes)
        attr = _ElemAttr(map_fd=self.fd, key=buf_addr(k), value=buf_addr(v))
        if call_or_none(Cmd.MAP_LOOKUP_AND_DELETE_ELEM, attr, self._what()) is None:
            return None
        return v.raw

    def next_key(self, key: bytes | None) -> bytes | None:
        """The key after ``key`` (the first with ``None``); ``None`` at the end."""
        k = self._key(key) if key is not None else None
        nk = ctypes.create_string_buffer(max(self.spec.key_size, 1))
        attr = _ElemAttr(map_fd=self.fd, key=buf_addr(k), value=buf_addr(nk))
        if call_or_none(Cmd.MAP_GET_NEXT_KEY, attr, self._what()) is None:
            return None
        return nk.raw[: self.spec.key_size]

    def freeze(self) -> None:
        """Make the map read-only for user space from now on (BPF_MAP_FREEZE); programs still write
        unless it was created with BPF_F_RDONLY_PROG. Idempotent for maps this object froze
        (`create` already freezes ``.rodata``)."""
        if self.frozen:
            return
        call(Cmd.MAP_FREEZE, _ElemAttr(map_fd=self.fd), self._what())
        self.frozen = True

    def info(self) -> MapInfo:
        i = BpfMapInfo()
        obj_get_info(self.fd, i, self._what())
        return MapInfo(
            id=i.id, type=i.type, key_size=i.key_size, value_size=i.value_size, max_entries=i.max_entries,
            map_flags=i.map_flags, name=i.name.decode(errors="replace"), btf_id=i.btf_id,
            btf_key_type_id=i.btf_key_type_id, btf_value_type_id=i.btf_value_type_id,
        )

    # -- batch ops ------------------------------------------------------------------------
    def _lookup_batch(self, cmd: Cmd, in_batch: bytes | None, count: int) -> BatchResult:
        if count <= 0:
            raise MapError(f"{self._what()}: batch count must be positive, not {count}")
        ks, vs = self.spec.key_size, self.value_bytes
        keys = ctypes.create_string_buffer(max(ks * count, 1))
        values = ctypes.create_string_buffer(vs * count)
        inb = ctypes.create_string_buffer(in_batch, self._batch_token) if in_batch is not None else None
        outb = ctypes.create_string_buffer(self._batch_token)
        attr = _BatchAttr(in_batch=buf_addr(inb), out_batch=buf_addr(outb), keys=buf_addr(keys),
                          values=buf_addr(values), count=count, map_fd=self.fd)
        done = False
        try:
            call(cmd, attr, self._what())
        except BpfError as e:
            if e.errno != errno.ENOENT:
                raise
            done = True  # the end of the map; attr.count says how many came with it
        n = attr.count
        kraw, vraw = keys.raw, values.raw
        return BatchResult(
            keys=[kraw[i * ks:(i + 1) * ks] for i in range(n)],
            values=[vraw[i * vs:(i + 1) * vs] for i in range(n)],
            next_batch=None if done else outb.raw,
        )

    def lookup_batch(self, in_batch: bytes | None = None, count: int = 64) -> BatchResult:
        """Up to ``count`` elements from where ``in_batch`` left off (the start with ``None``).

        A hash bucket holding more than ``count`` elements makes the kernel answer ENOSPC.
        """
        return self._lookup_batch(Cmd.MAP_LOOKUP_BATCH, in_batch, count)

    def lookup_and_delete_batch(self, in_batch: bytes | None = None, count: int = 64) -> BatchResult:
        """As `lookup_batch`, removing what it returns (hash maps only; arrays answer EINVAL/ENOTSUPP)."""
        return self._lookup_batch(Cmd.MAP_LOOKUP_AND_DELETE_BATCH, in_batch, count)

    def items_batched(self, count: int = 64) -> list[tuple[bytes, bytes]]:
        """Every element, ``count`` per syscall (more when one hash bucket holds more).

        The kernel returns a hash map's buckets whole: a bucket holding more than
        ``count`` elements fails with ENOSPC, and the same call with a larger
        ``count`` succeeds, so we double it and ask again from the same token.
        """
        out: list[tuple[bytes, bytes]] = []
        token: bytes | None = None
        for _ in range(self.spec.max_entries + 2):  # each round returns ≥1 element or ends
            while True:
                try:
                    r = self.lookup_batch(token, count)
                    break
                except BpfError as e:
                    if e.errno != errno.ENOSPC or count >= self.spec.max_entries:
                        raise
                    count = min(count * 2, self.spec.max_entries)
            out.extend(r.items())
            if r.next_batch is None:
                break
            token = r.next_batch
        return out

    def update_batch(self, keys: list[bytes], values: list[bytes],
                     flags: UpdateFlag | int = UpdateFlag.ANY) -> int:
        """Write many elements in one syscall; returns how many the kernel wrote."""
        if len(keys) != len(values):
            raise MapError(f"{self._what()}: {len(keys)} keys but {len(values)} values")
        if not keys:
            return 0
        kb = self._keys_buf(keys)
        vb = ctypes.create_string_buffer(b"".join(self._value(v).raw for v in values),
                                         self.value_bytes * len(values))
        attr = _BatchAttr(keys=buf_addr(kb), values=buf_addr(vb), count=len(keys), map_fd=self.fd,
                          elem_flags=int(flags))
        call(Cmd.MAP_UPDATE_BATCH, attr, self._what())
        return attr.count

    def delete_batch(self, keys: list[bytes]) -> int:
        """Delete many keys in one syscall; returns how many the kernel deleted (it stops at the first error)."""
        if not keys:
            return 0
        kb = self._keys_buf(keys)
        attr = _BatchAttr(keys=buf_addr(kb), count=len(keys), map_fd=self.fd)
        call(Cmd.MAP_DELETE_BATCH, attr, self._what())
        return attr.count

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        kind = self.spec.type.name if isinstance(self.spec.type, MapType) else self.spec.type
        return f"KernelMap({self.spec.name!r}, {kind}, {state})"
