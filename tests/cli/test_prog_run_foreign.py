"""Objects clang did not write that way: no BTF, no .BTF.ext, the code in a section of any name, its
subprograms known only by their local FUNC symbols. ``vxdp prog run`` runs them on every engine, and
every engine gives the kernel's answers (actions, packets out, maps).

The object is compiled by clang and then made foreign with ``llvm-objcopy``: the BTF sections
removed, the program's section renamed to one no loader convention knows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bpf.bpf_cc import compile_bpf

from vxdp.bpf.elf import load_object as parse_object
from vxdp.engine import ENGINES

SOURCE = r"""
struct bpf_map_def { unsigned int type, key_size, value_size, max_entries, map_flags; };
struct bpf_map_def SEC("maps") seen = { .type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 8,
                                        .max_entries = 4 };

static __attribute__((noinline)) int weigh(unsigned char *p, unsigned char *end)
{
    if (p + 14 > end)
        return 0;
    return p[12] ^ p[13];
}

static __attribute__((noinline)) int classify(struct xdp_md *ctx)
{
    unsigned char *p = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    return weigh(p, end) & 3;
}

SEC("xdp") int foreign(struct xdp_md *ctx)
{
    __u32 k = classify(ctx);
    __u64 *v = bpf_map_lookup_elem(&seen, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return k == 1 ? XDP_DROP : XDP_PASS;
}
char _l[] SEC("license") = "GPL";
"""


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    built = compile_bpf(tmp_path, SOURCE, "foreign_src")
    out = tmp_path / "foreign.o"
    subprocess.run(["llvm-objcopy", "--remove-section", ".BTF", "--remove-section", ".BTF.ext",
                    "--rename-section", "xdp=filter/main", str(built), str(out)], check=True, timeout=60)
    return out


def _run(path: Path, engine: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "vxdp.cli.main", "prog", "run", str(path), "--engine", engine,
                        "--mix", "48", "-j"], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr or r.stdout
    doc = json.loads(r.stdout)
    return {"runs": [(x["action"], x["packet"]) for x in doc["runs"]], "maps": doc["maps"]}


def test_the_object_is_as_foreign_as_meant(foreign):
    obj = parse_object(str(foreign))
    assert obj.btf is None and obj.btf_raw is None
    (prog,) = obj.programs.values()
    assert prog.section == "filter/main"
    # the subprograms come from their symbols alone: local FUNCs, no func_info anywhere
    subs = {f.name: f for f in obj.functions.values() if f.name != prog.name}
    assert {"weigh", "classify"} <= set(subs) and not any(f.is_global for f in subs.values())
    assert not any(f.func_info or f.line_info for f in obj.functions.values())
    sections = subprocess.run(["readelf", "-S", str(foreign)], capture_output=True, text=True, check=True).stdout
    assert ".BTF" not in sections and "filter/main" in sections


@pytest.mark.privileged
def test_every_engine_runs_it_as_the_kernel_does(foreign):
    want = _run(foreign, "kernel")
    assert {a for a, _ in want["runs"]} >= {"XDP_PASS"}
    for engine in ENGINES:
        if engine != "kernel":
            assert _run(foreign, engine) == want, engine
