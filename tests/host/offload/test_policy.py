"""Policy: defaults, TOML loading (unknown keys, never-allowed helpers), the map checks, the token bucket."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from vxdp.bpf.helpers import Helper
from vxdp.bpf.mapspec import MapType
from vxdp.engine import ENGINES
from vxdp.host.offload.errors import OffloadError
from vxdp.host.offload.policy import (
    DEFAULT_HELPERS,
    NEVER_HELPERS,
    Policy,
    PolicyError,
    TokenBucket,
    load_policy,
    map_memory,
    policy_from_toml,
)

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_allow_the_xdp_basics_and_nothing_that_touches_the_host():
    p = Policy()
    for h in (Helper.map_lookup_elem, Helper.tail_call, Helper.xdp_adjust_head, Helper.csum_diff, Helper.ktime_get_ns):
        assert p.helper_allowed(h) is None
    assert p.helper_allowed(Helper.fib_lookup) == "helpers.never"
    assert p.helper_allowed(Helper.redirect) == "helpers.never"
    assert p.helper_allowed(Helper.redirect_map) == "helpers.never"
    assert p.helper_allowed(Helper.trace_printk) == "helpers.never"
    assert p.helper_allowed(Helper.get_current_pid_tgid) == "helpers.never"
    assert p.helper_allowed(Helper.probe_read_kernel) == "helpers.never"
    assert p.helper_allowed(Helper.ringbuf_output) == "helpers.never"
    assert p.helper_allowed(Helper.skb_load_bytes) == "helpers.allow"  # not never, just not allowed
    assert p.helper_allowed(99999) == "helpers.allow"
    assert not DEFAULT_HELPERS & NEVER_HELPERS
    assert p.prog_types == {"xdp"}


def test_refusal_names_the_helper_and_the_rule():
    with pytest.raises(OffloadError) as e:
        Policy().check_helper(Helper.fib_lookup)
    assert e.value.rule == "helpers.never" and e.value.errno == errno.EPERM
    assert "bpf_fib_lookup (69)" in str(e.value)


def test_allow_ktime_switch():
    p = policy_from_toml("[helpers]\nallow_ktime = false\n")
    assert p.helper_allowed(Helper.ktime_get_ns) == "helpers.allow_ktime"
    assert p.helper_allowed(Helper.map_lookup_elem) is None


def test_example_policy_file_loads_and_equals_the_defaults():
    p = load_policy(ROOT / "examples" / "policy.toml")
    assert p == Policy()


def test_empty_file_is_the_defaults():
    assert policy_from_toml("") == Policy()


def test_toml_sets_every_section():
    p = policy_from_toml("""
[helpers]
allow = ["map_lookup_elem", "bpf_tail_call"]
[map_types]
allow = ["array", "prog_array"]
[quota]
max_maps = 2
commands_per_second = 5
command_burst = 3
""")
    assert p.helpers == {Helper.map_lookup_elem, Helper.tail_call}
    assert p.map_types == {MapType.ARRAY, MapType.PROG_ARRAY}
    assert p.quota.max_maps == 2 and p.quota.commands_per_second == 5.0 and p.quota.command_burst == 3
    assert p.quota.max_progs == Policy().quota.max_progs


@pytest.mark.parametrize("text, needle", [
    ("[quota]\nmax_mapz = 3\n", "unknown key quota.max_mapz"),
    ("[helperz]\nallow = []\n", "unknown section [helperz]"),
    ("[helpers]\nallow = ['fib_lookup']\n", "bpf_fib_lookup (69) can never be allowed"),
    ("[helpers]\nallow = ['redirect_map']\n", "bpf_redirect_map (51) can never be allowed"),
    ("[helpers]\nallow = ['trace_printk']\n", "can never be allowed"),
    ("[helpers]\nallow = ['no_such_helper']\n", "unknown helper 'no_such_helper'"),
    ("[map_types]\nallow = ['devmap']\n", "map type 'devmap' cannot be offloaded"),
    ("[map_types]\nallow = ['nope']\n", "unknown map type 'nope'"),
    ("[programs]\ntypes = ['sched_cls']\n", "'sched_cls' cannot be offloaded"),
    ("[quota]\nmax_maps = 'many'\n", "quota.max_maps must be int"),
    ("[quota]\nmax_maps = -1\n", "must be positive"),
    ("[helpers]\nallow_ktime = 1\n", "helpers.allow_ktime must be bool"),
    ("[quota\n", "not valid TOML"),
    ("[engine]\nname = 'ebpf'\n", "engine.name: 'ebpf'; one of"),
    ("[engine]\nname = 1\n", "engine.name must be str"),
    ("[engine]\nkind = 'jit'\n", "unknown key engine.kind"),
])
def test_bad_files_say_what_is_wrong(text, needle):
    with pytest.raises(PolicyError) as e:
        policy_from_toml(text, "test.toml")
    assert needle in str(e.value)
    assert "test.toml" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="policy .*nope.toml"):
        load_policy(tmp_path / "nope.toml")


def test_map_checks_name_the_rule():
    p = policy_from_toml("[quota]\nmax_key_size = 8\nmax_value_size = 16\nmax_entries = 100\n")
    assert p.check_map(type=MapType.HASH, key_size=8, value_size=16, max_entries=100) == 100 * (8 + 16)
    cases = [
        ({"type": MapType.DEVMAP, "key_size": 4, "value_size": 4, "max_entries": 1}, "map_types.allow", "devmap"),
        ({"type": MapType.RINGBUF, "key_size": 0, "value_size": 0, "max_entries": 4096}, "map_types.allow", "ringbuf"),
        ({"type": MapType.HASH, "key_size": 9, "value_size": 4, "max_entries": 1}, "quota.max_key_size", "key_size 9"),
        ({"type": MapType.HASH, "key_size": 4, "value_size": 17, "max_entries": 1}, "quota.max_value_size", "value_size 17"),
        ({"type": MapType.HASH, "key_size": 4, "value_size": 4, "max_entries": 101}, "quota.max_entries", "entries 101"),
        ({"type": 999, "key_size": 4, "value_size": 4, "max_entries": 1}, "map_types.allow", "unknown map type 999"),
    ]
    for kwargs, rule, text in cases:
        with pytest.raises(OffloadError) as e:
            p.check_map(**kwargs, name="m")
        assert e.value.rule == rule and text in str(e.value)


def test_map_memory_formula():
    assert map_memory(MapType.ARRAY, 4, 8, 256) == 256 * 16
    assert map_memory(MapType.HASH, 3, 5, 10) == 10 * (8 + 8)
    assert map_memory(MapType.PERCPU_ARRAY, 4, 8, 10, cpus=4) == 10 * (8 + 8 * 4)
    assert map_memory(MapType.LRU_PERCPU_HASH, 4, 12, 10, cpus=2) == 10 * (8 + 16 * 2)


def test_prog_type():
    Policy().check_prog_type("xdp")
    Policy().check_prog_type(6)
    with pytest.raises(OffloadError) as e:
        Policy().check_prog_type(3)
    assert e.value.rule == "prog_type" and e.value.errno == errno.EPERM
    assert str(e.value).startswith("policy: program type SCHED_CLS (3) is not allowed"), str(e.value)
    with pytest.raises(OffloadError) as e:
        Policy().check_prog_type(99)
    assert "program type 99 (not a known type) is not allowed" in str(e.value)


def test_token_bucket_with_an_injected_clock():
    now = [100.0]
    b = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert b.take() and not b.take()
    now[0] += 100  # refills only up to the burst
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    now[0] -= 50  # a clock going backwards gives nothing back
    assert not b.take()


@pytest.mark.parametrize("name", ENGINES)
def test_engine_is_named_by_the_file_or_left_to_the_daemon(name):
    assert policy_from_toml(f"[engine]\nname = '{name}'\n").engine == name
    assert policy_from_toml("").engine is None
