"""Compile small BPF C snippets for the loader tests (clang -target bpf into a temp dir).

Each snippet exercises one feature of the ELF loader, so a failing test names
the feature. The sample programs under ``samples/`` are tested separately.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

HEADER = "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"


def compile_bpf(tmp_path: Path, source: str, name: str = "t") -> Path:
    """Compile ``source`` (the helper headers prepended) to ``tmp_path/name.o``."""
    src = tmp_path / f"{name}.c"
    out = tmp_path / f"{name}.o"
    src.write_text(HEADER + source)
    cmd = ["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{platform.machine()}-linux-gnu",
           "-Wno-incompatible-function-pointer-types", "-c", str(src), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return out


# Every loader feature in one object: two programs in one section, a program in a
# section of its own, static and global subprograms, a callback, BTF maps of each
# attribute form, a statically initialised prog_array, and global data.
FEATURES = r"""
struct pair { __u32 a; __u64 b; };
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, __u32);
    __type(value, struct pair);
    __uint(max_entries, 64);
    __uint(map_flags, BPF_F_NO_PREALLOC);
} pairs SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(key_size, 4);
    __uint(value_size, 8);
    __uint(max_entries, 4);
} counts SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(max_entries, 4);
    __uint(key_size, 4);
    __array(values, int (void *));
} jmp SEC(".maps");

int gcount = 7;
static volatile int scount = 3;
const volatile int limit = 100;
int zeroed;
static volatile int zeroed_static;

static __attribute__((noinline)) int sub_static(int x) { return x + scount; }
__attribute__((noinline)) int sub_global(int x) { return sub_static(x) * 2 + limit; }
static __attribute__((noinline)) int sub_leaf(int x) { return x ^ zeroed_static; }
static __attribute__((noinline)) int sub_mid(int x) { return sub_leaf(x) + 1; }

static long loop_cb(__u32 idx, void *ctx) { zeroed += idx; return 0; }

SEC("xdp") int prog_one(struct xdp_md *ctx)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&counts, &k);
    if (v)
        *v += 1;
    zeroed++;
    bpf_tail_call(ctx, &jmp, 1);
    return sub_global(gcount) + sub_mid(1);
}

SEC("xdp") int prog_two(struct xdp_md *ctx)
{
    struct pair *p;
    __u32 k = 1;
    p = bpf_map_lookup_elem(&pairs, &k);
    bpf_loop(4, loop_cb, 0, 0);
    return sub_static(p ? p->a : 2) & 3;
}

SEC("xdp/other") int prog_three(struct xdp_md *ctx) { zeroed_static = 9; return sub_mid(2) ? XDP_PASS : XDP_DROP; }

struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(max_entries, 4);
    __uint(key_size, 4);
    __array(values, int (void *));
} jmp_init SEC(".maps") = { .values = { [1] = &prog_two, [3] = &prog_three } };

char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""

# The old samples' format: struct bpf_map_def in SEC("maps").
LEGACY = r"""
struct bpf_map_def_legacy { unsigned int type, key_size, value_size, max_entries, map_flags; };
struct bpf_map_def_legacy SEC("maps") rxcnt = {
    .type = BPF_MAP_TYPE_PERCPU_ARRAY, .key_size = 4, .value_size = 8, .max_entries = 256,
};
struct bpf_map_def_legacy SEC("maps") flows = {
    .type = BPF_MAP_TYPE_HASH, .key_size = 8, .value_size = 16, .max_entries = 1024, .map_flags = 1,
};
SEC("xdp") int xdp_legacy(struct xdp_md *ctx)
{
    __u32 k = 0;
    __u64 fk = 1;
    long *v = bpf_map_lookup_elem(&rxcnt, &k);
    if (v)
        *v += 1;
    return bpf_map_lookup_elem(&flows, &fk) ? XDP_DROP : XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
__u32 _version SEC("version") = 0x050a00;
"""
