"""Program types from section names (`vxdp.bpf.sections`), as libbpf reads ``SEC("…")``."""

from __future__ import annotations

import pytest

from vxdp.bpf.sections import ProgType, prog_type_name, section_prog_type


@pytest.mark.parametrize("section", ["xdp", "xdp.frags", "xdp/devmap", "xdp.frags/cpumap", "xdp/anything",
                                     "xdp1", "prog", "my_filter", ".text.xdp"])
def test_xdp_and_unknown_names_are_xdp(section):
    assert section_prog_type(section) is ProgType.XDP


@pytest.mark.parametrize(("section", "want"), [
    ("tc", ProgType.SCHED_CLS), ("tc/ingress", ProgType.SCHED_CLS), ("tcx/egress", ProgType.SCHED_CLS),
    ("tc/whatever", ProgType.SCHED_CLS), ("classifier", ProgType.SCHED_CLS), ("action", ProgType.SCHED_ACT),
    ("socket", ProgType.SOCKET_FILTER), ("kprobe/do_sys_open", ProgType.KPROBE), ("kretprobe/x", ProgType.KPROBE),
    ("uprobe/bin:func", ProgType.KPROBE), ("tracepoint/syscalls/sys_enter_open", ProgType.TRACEPOINT),
    ("tp/sched/x", ProgType.TRACEPOINT), ("raw_tp/sys_enter", ProgType.RAW_TRACEPOINT),
    ("fentry/tcp_v4_connect", ProgType.TRACING), ("lsm/file_open", ProgType.LSM),
    ("cgroup/skb", ProgType.CGROUP_SKB), ("cgroup_skb/ingress", ProgType.CGROUP_SKB),
    ("cgroup/connect4", ProgType.CGROUP_SOCK_ADDR), ("cgroup/sock_create", ProgType.CGROUP_SOCK),
    ("cgroup/dev", ProgType.CGROUP_DEVICE), ("cgroup/sysctl", ProgType.CGROUP_SYSCTL),
    ("sk_skb/stream_verdict", ProgType.SK_SKB), ("sk_msg", ProgType.SK_MSG), ("sockops", ProgType.SOCK_OPS),
    ("flow_dissector", ProgType.FLOW_DISSECTOR), ("lwt_xmit", ProgType.LWT_XMIT),
    ("struct_ops/x", ProgType.STRUCT_OPS), ("sk_lookup", ProgType.SK_LOOKUP), ("netfilter", ProgType.NETFILTER),
    ("perf_event", ProgType.PERF_EVENT), ("syscall", ProgType.SYSCALL),
])
def test_libbpf_sections_name_their_type(section, want):
    assert section_prog_type(section) is want


def test_a_prefix_matches_only_at_a_slash():
    """``tcp_filter`` is not ``tc``, ``socket2`` not ``socket``: both stay XDP (unknown names)."""
    assert section_prog_type("tcp_filter") is ProgType.XDP
    assert section_prog_type("socket2") is ProgType.XDP
    assert section_prog_type("kprobes") is ProgType.XDP


def test_type_names():
    assert prog_type_name(3) == "SCHED_CLS" and prog_type_name(6) == "XDP" and prog_type_name(99) == "type 99"
