"""What kind of program an ELF section holds, from its name, the way libbpf reads ``SEC("…")``.

Why it matters: every engine of ours runs XDP programs only (the interpreter and the
kernel engine give the program an ``xdp_md`` context; the offload attaches it to a
port's XDP hook). A ``SEC("tc")`` program loaded as XDP reads ``__sk_buff`` fields at
``xdp_md`` offsets and returns TC verdicts as XDP actions (0, TC_ACT_OK, is XDP_ABORTED),
so it would cut the port off without a word. The section says what the author meant;
loaders pass the type it gives on, and whoever runs only XDP refuses the rest by name.

The table is libbpf's ``section_defs`` (libbpf 1.x, ``src/libbpf.c``), reduced to the
program type. An entry matches the section name exactly or as a prefix followed by
``/`` (``kprobe/do_sys_open``, ``tc/ingress``, and ``tc/anything``, which libbpf 1.x
refuses and older libbpf read as tc: refused here as tc too, never run as XDP). ``xdp``,
``xdp.frags`` and ``xdp/…`` are XDP, and so is a name the table does not know: objects written for vxdp may use any section name for their XDP programs
(``xdp1``, ``prog``), as the old ``ip link`` loader allowed.
"""

from __future__ import annotations

from enum import IntEnum


class ProgType(IntEnum):
    """``enum bpf_prog_type`` (uapi)."""

    UNSPEC = 0
    SOCKET_FILTER = 1
    KPROBE = 2
    SCHED_CLS = 3
    SCHED_ACT = 4
    TRACEPOINT = 5
    XDP = 6
    PERF_EVENT = 7
    CGROUP_SKB = 8
    CGROUP_SOCK = 9
    LWT_IN = 10
    LWT_OUT = 11
    LWT_XMIT = 12
    SOCK_OPS = 13
    SK_SKB = 14
    CGROUP_DEVICE = 15
    SK_MSG = 16
    RAW_TRACEPOINT = 17
    CGROUP_SOCK_ADDR = 18
    LWT_SEG6LOCAL = 19
    LIRC_MODE2 = 20
    SK_REUSEPORT = 21
    FLOW_DISSECTOR = 22
    CGROUP_SYSCTL = 23
    RAW_TRACEPOINT_WRITABLE = 24
    CGROUP_SOCKOPT = 25
    TRACING = 26
    STRUCT_OPS = 27
    EXT = 28
    LSM = 29
    SK_LOOKUP = 30
    SYSCALL = 31
    NETFILTER = 32


T = ProgType
# (section name, type): libbpf's section_defs, in its order
_SECTIONS: tuple[tuple[str, ProgType], ...] = (
    ("socket", T.SOCKET_FILTER),
    ("sk_reuseport/migrate", T.SK_REUSEPORT), ("sk_reuseport", T.SK_REUSEPORT),
    *((name, T.KPROBE) for name in ("kprobe", "uprobe", "uprobe.s", "kretprobe", "uretprobe", "uretprobe.s",
                                          "kprobe.multi", "kretprobe.multi", "kprobe.session", "uprobe.multi",
                                          "uretprobe.multi", "uprobe.session", "uprobe.multi.s", "uretprobe.multi.s",
                                          "uprobe.session.s", "ksyscall", "kretsyscall", "usdt", "usdt.s")),
    ("tc/ingress", T.SCHED_CLS), ("tc/egress", T.SCHED_CLS), ("tcx/ingress", T.SCHED_CLS),
    ("tcx/egress", T.SCHED_CLS), ("tc", T.SCHED_CLS), ("classifier", T.SCHED_CLS),
    ("action", T.SCHED_ACT), ("netkit/primary", T.SCHED_CLS), ("netkit/peer", T.SCHED_CLS),
    ("tracepoint", T.TRACEPOINT), ("tp", T.TRACEPOINT),
    ("raw_tracepoint", T.RAW_TRACEPOINT), ("raw_tp", T.RAW_TRACEPOINT),
    ("raw_tracepoint.w", T.RAW_TRACEPOINT_WRITABLE), ("raw_tp.w", T.RAW_TRACEPOINT_WRITABLE),
    *((name, T.TRACING) for name in ("tp_btf", "fentry", "fmod_ret", "fexit", "fentry.s", "fmod_ret.s",
                                           "fexit.s", "iter", "iter.s")),
    ("freplace", T.EXT),
    ("lsm", T.LSM), ("lsm.s", T.LSM), ("lsm_cgroup", T.LSM),
    ("syscall", T.SYSCALL),
    ("perf_event", T.PERF_EVENT),
    ("lwt_in", T.LWT_IN), ("lwt_out", T.LWT_OUT), ("lwt_xmit", T.LWT_XMIT),
    ("lwt_seg6local", T.LWT_SEG6LOCAL),
    ("sockops", T.SOCK_OPS),
    ("sk_skb/stream_parser", T.SK_SKB), ("sk_skb/stream_verdict", T.SK_SKB),
    ("sk_skb/verdict", T.SK_SKB), ("sk_skb", T.SK_SKB),
    ("sk_msg", T.SK_MSG),
    ("lirc_mode2", T.LIRC_MODE2),
    ("flow_dissector", T.FLOW_DISSECTOR),
    ("cgroup_skb/ingress", T.CGROUP_SKB), ("cgroup_skb/egress", T.CGROUP_SKB),
    ("cgroup/skb", T.CGROUP_SKB),
    *((f"cgroup/{name}", T.CGROUP_SOCK) for name in ("sock_create", "sock_release", "sock", "post_bind4",
                                                           "post_bind6")),
    ("cgroup/dev", T.CGROUP_DEVICE),
    *((f"cgroup/{name}", T.CGROUP_SOCK_ADDR) for name in (
        "bind4", "bind6", "connect4", "connect6", "connect_unix", "sendmsg4", "sendmsg6", "sendmsg_unix",
        "recvmsg4", "recvmsg6", "recvmsg_unix", "getpeername4", "getpeername6", "getpeername_unix",
        "getsockname4", "getsockname6", "getsockname_unix")),
    ("cgroup/sysctl", T.CGROUP_SYSCTL),
    ("cgroup/getsockopt", T.CGROUP_SOCKOPT), ("cgroup/setsockopt", T.CGROUP_SOCKOPT),
    ("struct_ops", T.STRUCT_OPS), ("struct_ops.s", T.STRUCT_OPS),
    ("sk_lookup", T.SK_LOOKUP),
    ("netfilter", T.NETFILTER),
)


def section_prog_type(section: str) -> ProgType:
    """The program type ``SEC(section)`` declares; XDP for ``xdp``, ``xdp.frags``, ``xdp/…`` and any
    name libbpf does not know."""
    for name, prog_type in _SECTIONS:
        if section == name or section.startswith(name + "/"):
            return prog_type
    return ProgType.XDP


def prog_type_name(prog_type: int) -> str:
    """``SCHED_CLS`` for 3, ``type 99`` for a number the uapi does not have."""
    try:
        return ProgType(prog_type).name
    except ValueError:
        return f"type {prog_type}"


__all__ = ["ProgType", "prog_type_name", "section_prog_type"]
