"""The guest's Python API, in the spirit of libbpf: open an object, load it, use its maps by name.

    from vxdp.guest import api

    obj = api.open("samples/build/xdp1.o")          # parse only: programs, maps, BTF
    with obj.load(guest="g0", mode="offload") as loaded:
        ...                                          # traffic
        rxcnt = loaded.maps["rxcnt"]
        print(rxcnt[6])                              # TCP frames the host counted (an int)
        for key, value in rxcnt.items(): ...         # bytes, as the kernel's map API

A program in the guest is one of the driver's "user programs": it reaches the
driver (the guest's "kernel") through the driver's control socket, and the
driver carries offloaded requests to the device over the ctrl virtqueue. So the
maps here are `vxdp.bpf.mapapi.Map`s like every engine's (bytes in and out,
None for a missing key, OSError with the kernel's errno), plus integer
indexing for the common case of integer keys and values.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any, Self

from .. import rpc
from ..bpf.elf import load_object
from ..bpf.mapapi import Map
from ..bpf.mapspec import MapSpec, MapType, UpdateFlag
from ..bpf.obj import BpfObject

_FLAGS = {UpdateFlag.ANY: "any", UpdateFlag.NOEXIST: "noexist", UpdateFlag.EXIST: "exist"}


class ApiError(OSError):
    """A request the guest driver refused; ``errno`` as the driver (or the device) answered."""


def _call(sock: os.PathLike, method: str, **params: Any) -> Any:
    try:
        return rpc.call(sock, method, **params)
    except rpc.RpcError as e:
        err = ApiError(e.errno, e.message)
        err.detail = e.data  # type: ignore[attr-defined]  # a verifier log, a policy rule
        raise err from None


class GuestMap(Map):
    """One map of a loaded object, reached through the guest driver."""

    def __init__(self, sock: os.PathLike, doc: dict[str, Any]) -> None:
        self._sock = sock
        self.name = doc["name"]
        self.handle = doc["handle"]
        self.value_bytes = doc["value_bytes"]
        self.spec = MapSpec(self.name, MapType[doc["type"].upper()], doc["key_size"], doc["value_size"],
                            doc["max_entries"], doc.get("flags", 0))

    def lookup(self, key: bytes) -> bytes | None:
        try:
            return bytes.fromhex(_call(self._sock, "map.lookup", map=self.name, key=key.hex())["value"])
        except ApiError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    def update(self, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
        _call(self._sock, "map.update", map=self.name, key=key.hex(), value=value.hex(),
              flags=_FLAGS[UpdateFlag(flags)])

    def delete(self, key: bytes) -> None:
        _call(self._sock, "map.delete", map=self.name, key=key.hex())

    def next_key(self, key: bytes | None) -> bytes | None:
        nxt = _call(self._sock, "map.next_key", map=self.name, key=key.hex() if key is not None else None)["key"]
        return bytes.fromhex(nxt) if nxt is not None else None

    def freeze(self) -> None:
        """Read-only to user space from now on (offloaded: MAP_FREEZE on the device); EPERM if it already is."""
        _call(self._sock, "map.freeze", map=self.name)

    def dump(self) -> dict[str, Any]:
        """All entries in one request (``vxdp map dump``'s JSON)."""
        return _call(self._sock, "map.dump", map=self.name)

    # integer convenience: rxcnt[6] -> the u64 at key 6
    def __getitem__(self, key: int) -> int:
        value = self.lookup(key.to_bytes(self.spec.key_size, "little"))
        if value is None:
            raise KeyError(key)
        return int.from_bytes(value, "little")

    def __setitem__(self, key: int, value: int) -> None:
        self.update(key.to_bytes(self.spec.key_size, "little"), value.to_bytes(self.value_bytes, "little"))

    def __repr__(self) -> str:
        return f"GuestMap({self.name!r}, {self.spec.type.name.lower()}, handle={self.handle})"


@dataclass
class LoadedGuestObject:
    """An object loaded through a guest driver; `detach()` (or leaving a ``with``) frees it."""

    sock: os.PathLike
    mode: str
    programs: list[dict[str, Any]]
    maps: dict[str, GuestMap] = field(default_factory=dict)

    @property
    def attached(self) -> dict[str, Any]:
        return next(p for p in self.programs if p["attached"])

    def counters(self) -> dict[str, int]:
        """The attached program's verdict counts (offloaded: counted on the host)."""
        for p in _call(self.sock, "prog.show")["programs"]:
            if p["mode"] == self.mode and p["attached"]:
                return p.get("counters") or {}
        return {}

    def detach(self) -> None:
        _call(self.sock, "prog.detach", mode=self.mode)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


@dataclass
class GuestBpfObject:
    """An opened object (parsed, nothing loaded yet), as libbpf's ``bpf_object__open``."""

    path: str
    obj: BpfObject

    @property
    def programs(self) -> list[str]:
        return list(self.obj.programs)

    @property
    def maps(self) -> dict[str, MapSpec]:
        return dict(self.obj.maps)

    def load(self, *, guest: str, mode: str = "offload", prog: str | None = None) -> LoadedGuestObject:
        """Load through guest driver ``guest``: ``offload`` (runs on the host) or ``native``."""
        sock = rpc.guest_socket(guest)
        doc = _call(sock, "prog.load", path=self.path, mode=mode, prog=prog)
        loaded = LoadedGuestObject(sock, mode, doc["programs"])
        loaded.maps = {m["name"]: GuestMap(sock, m) for m in doc["maps"]}
        return loaded


def open(path: str | os.PathLike) -> GuestBpfObject:  # shadows the builtin: libbpf's verb
    """Parse an object file; errors name the section and offset (`vxdp.bpf.elf.ObjectError`)."""
    path = os.path.abspath(os.fspath(path))
    return GuestBpfObject(path, load_object(path))
