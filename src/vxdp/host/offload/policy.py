"""The host's offload policy: what a guest may load, and how much of the host it may use.

A policy is a TOML file (``vxdp host serve --policy FILE``; every key is
documented in ``examples/policy.toml``) over safe defaults, so an empty file,
or none at all, gives a policy that lets a guest offload an ordinary XDP
program and nothing that reads or changes host state:

- program types: XDP only (an offloaded program runs on the host port's
  receive path; no other hook makes sense for a virtio-net device);
- helpers: an allowlist by name (`vxdp.bpf.helpers.Helper`), and a fixed
  `NEVER_HELPERS` set that no policy file can allow: redirects (the program
  would steer packets into other host devices), fib lookups (host routing
  tables), ``get_current_*`` (host tasks), ``probe_read*`` (host memory),
  perf/ring-buffer output (a channel to host user space), ``trace_printk``
  (writes to the host's trace pipe), socket lookups (host sockets) and the
  like. A file that tries gets a `PolicyError` naming the helper;
- ``ktime_get_ns`` is in the default allowlist because XDP programs use it
  for rate limiting and ageing; it leaks the host's monotonic clock (not wall
  time, not other guests' state), so ``helpers.allow_ktime = false`` removes it;
- map types: array, hash, their per-CPU and LRU forms, and prog_array (for
  tail calls between the guest's own programs);
- quotas per device (see `Quota`); the command rate is a token bucket whose
  clock is injectable, so tests need no sleeps;
- the engine (``[engine] name``): ``kernel`` runs the guest's programs in the host
  kernel (its verifier, its JIT, the port's XDP hook); ``jit`` and ``interp`` keep
  every guest program and map out of the host kernel and run them in the daemon on
  the port's frames (our verifier first). The daemon's ``--engine`` says it too; a
  file and a flag that disagree are refused at start.

Map memory is an accounting estimate, the same formula everywhere so that a
guest can predict it::

    memory = max_entries * (round_up(key_size, 8) + round_up(value_size, 8) * cpus)

with ``cpus`` the host's possible CPUs for per-CPU types and 1 otherwise. It is
not the kernel's exact memlock charge (that depends on the map's internals) but
it grows the same way and is never below the data the map holds.
"""

from __future__ import annotations

import errno
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...bpf.helpers import Helper
from ...bpf.mapspec import PERCPU_TYPES, MapType, possible_cpus
from ...bpf.sections import ProgType
from ...engine import ENGINES
from .errors import OffloadError


class PolicyError(ValueError):
    """A policy file that cannot be used: unknown key, wrong type, a never-allowed helper."""


NEVER_HELPERS: frozenset[Helper] = frozenset(
    h for h in Helper
    if h.name.startswith(("get_current_", "probe_read", "probe_write", "perf_", "ringbuf_", "sk_", "skc_",
                          "sock_", "msg_", "tcp_", "redirect", "sys_", "task_", "get_task_", "d_path",
                          "copy_from_user", "send_signal", "kallsyms_", "find_vma", "trace_", "seq_",
                          "snprintf", "get_stack", "get_ns_current", "inode_", "ima_", "cgrp_", "get_socket",
                          "user_ringbuf"))
) | frozenset({
    Helper.fib_lookup, Helper.clone_redirect, Helper.xdp_output, Helper.skb_output, Helper.override_return,
    Helper.get_netns_cookie, Helper.get_listener_sock, Helper.check_mtu, Helper.get_route_realm,
    Helper.current_task_under_cgroup, Helper.get_stackid, Helper.get_func_ip, Helper.timer_init,
    Helper.timer_set_callback, Helper.timer_start, Helper.timer_cancel, Helper.loop, Helper.for_each_map_elem,
    Helper.kptr_xchg, Helper.btf_find_by_name_kind, Helper.bind, Helper.setsockopt, Helper.getsockopt,
})
"""Helpers no policy may allow: each reads or changes host state, or runs guest code outside the program
(``loop``/``for_each_map_elem``/timers take callbacks, which the rewriter does not accept)."""

DEFAULT_HELPERS: frozenset[Helper] = frozenset({
    Helper.map_lookup_elem, Helper.map_update_elem, Helper.map_delete_elem, Helper.get_prandom_u32,
    Helper.get_smp_processor_id, Helper.csum_diff, Helper.tail_call, Helper.xdp_adjust_head,
    Helper.xdp_adjust_tail, Helper.xdp_adjust_meta, Helper.ktime_get_ns, Helper.xdp_get_buff_len,
    Helper.xdp_load_bytes, Helper.xdp_store_bytes,
})

KTIME_HELPERS: frozenset[Helper] = frozenset({Helper.ktime_get_ns, Helper.ktime_get_boot_ns,
                                              Helper.ktime_get_coarse_ns, Helper.ktime_get_tai_ns,
                                              Helper.jiffies64})

DEFAULT_MAP_TYPES: frozenset[MapType] = frozenset({
    MapType.ARRAY, MapType.HASH, MapType.PERCPU_ARRAY, MapType.PERCPU_HASH, MapType.LRU_HASH,
    MapType.LRU_PERCPU_HASH, MapType.PROG_ARRAY,
})

PROG_TYPES = {"xdp": 6}  # the only program type an offload can have


@dataclass(frozen=True)
class Quota:
    """Per-device limits. ``max_insns`` is per program, ``max_total_insns`` over all the device's programs."""

    max_maps: int = 16
    max_map_memory: int = 16 << 20
    max_progs: int = 16
    max_insns: int = 4096
    max_total_insns: int = 32768
    max_key_size: int = 512
    max_value_size: int = 4096
    max_entries: int = 65536
    commands_per_second: float = 1000.0
    command_burst: int = 1000
    verifier_seconds_per_minute: float = 20.0  # host verifier time one device may use (PROG_LOAD), refilled evenly
    max_verifier_log: int = 4 << 20  # bytes of the one kernel log a PROG_LOAD gets (less: the guest's log_size)


@dataclass(frozen=True)
class Policy:
    """What a guest may offload. ``helpers`` and ``map_types`` are the effective allowlists."""

    prog_types: frozenset[str] = frozenset({"xdp"})
    helpers: frozenset[Helper] = DEFAULT_HELPERS
    allow_ktime: bool = True
    map_types: frozenset[MapType] = DEFAULT_MAP_TYPES
    quota: Quota = field(default_factory=Quota)
    engine: str | None = None
    """What runs the device's programs (``[engine] name``: kernel, jit, interp); ``None``: the daemon's
    ``--engine`` (default kernel)."""

    def helper_allowed(self, helper_id: int) -> str | None:
        """``None`` if programs may call helper ``helper_id``, else the rule that refuses it."""
        try:
            h = Helper(helper_id)
        except ValueError:
            return "helpers.allow"
        if h in NEVER_HELPERS:
            return "helpers.never"
        if h in KTIME_HELPERS and not self.allow_ktime:
            return "helpers.allow_ktime"
        if h not in self.helpers:
            return "helpers.allow"
        return None

    def check_helper(self, helper_id: int, where: str = "") -> None:
        """Raise `OffloadError` (EPERM) naming the helper and the rule if a program may not call it."""
        rule = self.helper_allowed(helper_id)
        if rule is None:
            return
        name = f"bpf_{Helper(helper_id).name}" if helper_id in Helper._value2member_map_ else "unknown helper"
        why = {"helpers.never": "is never allowed to offloaded programs",
               "helpers.allow_ktime": "is not allowed (the policy hides host time)"}.get(rule, "is not allowed")
        raise OffloadError(errno.EPERM, f"policy: helper {name} ({helper_id}) {why}{where}", rule)

    def check_map(self, *, type: int, key_size: int, value_size: int, max_entries: int, name: str = "") -> int:
        """Check one map against the type allowlist and the size limits; return its memory estimate."""
        what = f"map {name!r}" if name else "map"
        try:
            mt = MapType(type)
        except ValueError:
            raise OffloadError(errno.EINVAL, f"policy: {what}: unknown map type {type}", "map_types.allow") from None
        if mt not in self.map_types:
            raise OffloadError(errno.EPERM, f"policy: {what}: map type {mt.name.lower()} ({int(mt)}) is not allowed",
                               "map_types.allow")
        q = self.quota
        for value, limit, rule in ((key_size, q.max_key_size, "max_key_size"),
                                   (value_size, q.max_value_size, "max_value_size"),
                                   (max_entries, q.max_entries, "max_entries")):
            if value > limit:
                raise OffloadError(errno.E2BIG, f"policy: {what}: {rule.removeprefix('max_')} {value} "
                                   f"exceeds the limit {limit}", f"quota.{rule}")
        return map_memory(mt, key_size, value_size, max_entries)

    def check_prog_type(self, prog_type: int | str) -> None:
        """EPERM (rule ``prog_type``) naming the type, e.g. ``program type SCHED_CLS (3)``, unless allowed."""
        names = {v: k for k, v in PROG_TYPES.items()}
        name = prog_type if isinstance(prog_type, str) else names.get(prog_type)
        if name is None or name not in self.prog_types:
            if isinstance(prog_type, str):
                what = repr(prog_type)
            elif prog_type in ProgType._value2member_map_:
                what = f"{ProgType(prog_type).name} ({prog_type})"
            else:
                what = f"{prog_type} (not a known type)"
            raise OffloadError(errno.EPERM, f"policy: program type {what} is not allowed; only "
                               f"{', '.join(sorted(self.prog_types))} programs can be offloaded", "prog_type")


def map_memory(type: MapType | int, key_size: int, value_size: int, max_entries: int,
               cpus: int | None = None) -> int:
    """The memory a map is charged for (formula in the module docstring)."""
    per_cpu = type in PERCPU_TYPES
    n = (cpus if cpus is not None else possible_cpus()) if per_cpu else 1
    return max_entries * (_round8(key_size) + _round8(value_size) * n)


def _round8(n: int) -> int:
    return (n + 7) & ~7


# -- the command rate -------------------------------------------------------------------------------

class TokenBucket:
    """``rate`` tokens a second up to ``burst``; each command takes one. ``clock`` returns seconds."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()

    def take(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens (at most the burst, so any request can pass once the bucket is full)."""
        now = self.clock()
        if now > self.last:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = max(self.last, now)
        cost = min(float(cost), float(self.burst))
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class TimeBudget:
    """``seconds`` of work a minute, refilled evenly, up to ``seconds``: `spend` charges what a run
    really took (it may go below zero: the next runs wait until it refills), `available` says whether
    a new run may start. The work is not known before it runs (a verifier pass), hence no take-first."""

    def __init__(self, seconds: float, clock: Callable[[], float]):
        self.seconds = float(seconds)
        self.clock = clock
        self.left = self.seconds
        self.last = clock()

    def _refill(self) -> None:
        now = self.clock()
        if now > self.last:
            self.left = min(self.seconds, self.left + (now - self.last) * self.seconds / 60.0)
        self.last = max(self.last, now)

    def available(self) -> bool:
        self._refill()
        return self.left > 0.0

    def spend(self, seconds: float) -> None:
        self._refill()
        self.left -= max(0.0, seconds)


# -- loading from TOML ------------------------------------------------------------------------------

_SECTIONS = {
    "programs": {"types"},
    "helpers": {"allow", "allow_ktime"},
    "map_types": {"allow"},
    "quota": set(Quota.__dataclass_fields__),
    "engine": {"name"},
}


def load_policy(path: str | Path) -> Policy:
    """The policy in the TOML file at ``path`` (defaults for every key it leaves out)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise PolicyError(f"policy {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"policy {path}: not valid TOML: {e}") from None
    return policy_from_dict(data, str(path))


def policy_from_toml(text: str, where: str = "<policy>") -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"policy {where}: not valid TOML: {e}") from None
    return policy_from_dict(data, where)


def policy_from_dict(data: dict, where: str = "<policy>") -> Policy:
    """Build a `Policy` from parsed TOML; every unknown section or key is an error that names it."""
    for section, body in data.items():
        if section not in _SECTIONS:
            raise PolicyError(f"policy {where}: unknown section [{section}]; known: {', '.join(_SECTIONS)}")
        if not isinstance(body, dict):
            raise PolicyError(f"policy {where}: {section} must be a table [{section}]")
        for key in body:
            if key not in _SECTIONS[section]:
                raise PolicyError(f"policy {where}: unknown key {section}.{key}; "
                                  f"known: {', '.join(sorted(_SECTIONS[section]))}")
    kwargs: dict = {}
    progs = data.get("programs", {})
    if "types" in progs:
        types = _str_list(progs["types"], "programs.types", where)
        for t in types:
            if t not in PROG_TYPES:
                raise PolicyError(f"policy {where}: programs.types: {t!r} cannot be offloaded; "
                                  f"only {', '.join(PROG_TYPES)}")
        kwargs["prog_types"] = frozenset(types)
    helpers = data.get("helpers", {})
    if "allow" in helpers:
        allowed = set()
        for name in _str_list(helpers["allow"], "helpers.allow", where):
            h = Helper.__members__.get(name.removeprefix("bpf_"))
            if h is None:
                raise PolicyError(f"policy {where}: helpers.allow: unknown helper {name!r}")
            if h in NEVER_HELPERS:
                raise PolicyError(f"policy {where}: helpers.allow: helper bpf_{h.name} ({int(h)}) can never be "
                                  "allowed to offloaded programs (it reads or changes host state)")
            allowed.add(h)
        kwargs["helpers"] = frozenset(allowed)
    if "allow_ktime" in helpers:
        kwargs["allow_ktime"] = _typed(helpers["allow_ktime"], bool, "helpers.allow_ktime", where)
    maps = data.get("map_types", {})
    if "allow" in maps:
        types_ = set()
        for name in _str_list(maps["allow"], "map_types.allow", where):
            mt = MapType.__members__.get(name.upper())
            if mt is None:
                raise PolicyError(f"policy {where}: map_types.allow: unknown map type {name!r}")
            if mt not in DEFAULT_MAP_TYPES:
                raise PolicyError(f"policy {where}: map_types.allow: map type {name!r} cannot be offloaded; "
                                  f"possible: {', '.join(sorted(t.name.lower() for t in DEFAULT_MAP_TYPES))}")
            types_.add(mt)
        kwargs["map_types"] = frozenset(types_)
    quota = data.get("quota", {})
    if quota:
        q = {}
        for key, value in quota.items():
            want = float if key in ("commands_per_second", "verifier_seconds_per_minute") else int
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            q[key] = _typed(value, want, f"quota.{key}", where)
            if q[key] < 0 or (key in ("command_burst",) and q[key] < 1):
                raise PolicyError(f"policy {where}: quota.{key} must be positive, not {value}")
        kwargs["quota"] = Quota(**q)
    engine = data.get("engine", {})
    if "name" in engine:
        name = _typed(engine["name"], str, "engine.name", where)
        if name not in ENGINES:
            raise PolicyError(f"policy {where}: engine.name: {name!r}; one of {', '.join(ENGINES)}")
        kwargs["engine"] = name
    return Policy(**kwargs)


def _typed(value, want: type, key: str, where: str):
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise PolicyError(f"policy {where}: {key} must be {want.__name__}, not {type(value).__name__} {value!r}")
    return value


def _str_list(value, key: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"policy {where}: {key} must be a list of strings")
    return value
