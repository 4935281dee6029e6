"""Bugs clang can express, as C: each compiles to a program both verifiers must refuse.

Each source is self-contained (no headers): the few declarations it needs are
in `PRELUDE`. ``says`` is a piece of our refusal's reason.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

PRELUDE = r"""
#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
struct xdp_md { unsigned int data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex; };
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *) 1;
static long (*bpf_xdp_adjust_head)(struct xdp_md *ctx, int delta) = (void *) 44;
struct { __uint(type, 1); __uint(max_entries, 16); __type(key, long); __type(value, long); } flows SEC(".maps");
struct { __uint(type, 2); __uint(max_entries, 4); __type(key, int); __type(value, long[2]); } stats SEC(".maps");
char _license[] SEC("license") = "GPL";
"""


@dataclass(frozen=True)
class BadC:
    name: str
    body: str
    says: str


BAD_C = [
    BadC("c.packet byte read without a data_end check", """
SEC("xdp") int prog(struct xdp_md *ctx) {
    unsigned char *data = (void *)(long)ctx->data;
    return data[0] == 1 ? 1 : 2;
}""", "invalid access to packet"),
    BadC("c.off-by-one: 14 bytes checked, byte 14 read", """
SEC("xdp") int prog(struct xdp_md *ctx) {
    unsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    if (data + 14 > end) return 2;
    return data[14] == 6 ? 1 : 2;
}""", "invalid access to packet"),
    BadC("c.hash lookup dereferenced without a NULL check", """
SEC("xdp") int prog(struct xdp_md *ctx) {
    long key = ctx->rx_queue_index;
    long *v = bpf_map_lookup_elem(&flows, &key);
    return *v ? 1 : 2;
}""", "map_value_or_null"),
    BadC("c.array value indexed past its end", """
SEC("xdp") int prog(struct xdp_md *ctx) {
    int key = 0;
    long *v = bpf_map_lookup_elem(&stats, &key);
    if (!v) return 2;
    return v[ctx->rx_queue_index & 3] ? 1 : 2;
}""", "invalid access to map value"),
    BadC("c.write to the context", """
SEC("xdp") int prog(struct xdp_md *ctx) {
    ctx->rx_queue_index = 1;
    return 2;
}""", "invalid bpf_context access"),
    BadC("c.packet pointer used after xdp_adjust_head", """
SEC("xdp") int prog(struct xdp_md *ctx) {
    unsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    if (data + 14 > end) return 2;
    bpf_xdp_adjust_head(ctx, 0);
    return data[0] == 1 ? 1 : 2;
}""", "invalid mem access 'scalar'"),
]


def compile_c(case: BadC, out_dir: Path) -> Path:
    src = out_dir / "bad.c"
    obj = out_dir / "bad.o"
    src.write_text(PRELUDE + case.body + "\n")
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-c", str(src), "-o", str(obj)], check=True)
    return obj
