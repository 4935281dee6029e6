"""Bad input to the commands that need no daemon: one clear line and exit 1, never a traceback;
with ``-j`` the error is ``{"error": ...}`` on stdout, as bpftool prints it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bpf.bpf_cc import compile_bpf
from testpaths import ROOT, SAMPLES_BUILD

XDP1 = str(SAMPLES_BUILD / "xdp1.o")

# an object with a map and no program
NO_PROGRAMS = """
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64); __uint(max_entries, 4); }
counts SEC(".maps");
char _l[] SEC("license") = "GPL";
"""
# the verifier refuses it: packet data read with no bounds check
UNSAFE = """
SEC("xdp") int p(struct xdp_md *ctx) { unsigned char *d = (void *)(long)ctx->data; return d[0] & 1; }
char _l[] SEC("license") = "GPL";
"""


def vxdp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # COLUMNS: --help on one line per option, so that paths are not wrapped at a hyphen
    return subprocess.run([sys.executable, "-m", "vxdp.cli.main", *args], capture_output=True, text=True,
                          check=False, cwd=cwd, timeout=300, env=dict(os.environ, COLUMNS="1000"))


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The message of a command that failed as it must: exit 1, nothing on stdout, one line on stderr."""
    assert r.returncode == 1, r
    assert r.stdout == "" and "Traceback" not in r.stderr, r
    assert r.stderr.startswith("vxdp: ") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr.removeprefix("vxdp: ").rstrip("\n")


# every command that takes FILE.o, with what it needs besides (never reached: the object is refused first)
OBJECT_COMMANDS = [
    ("prog", "disasm", "{}"),
    ("prog", "run", "{}", "--mix", "1"),
    ("prog", "load", "{}", "--device", "nodev0"),
    ("prog", "load", "{}", "--offload", "--guest", "noguest0"),
    ("demo", "--object", "{}"),
]


@pytest.mark.parametrize("command", OBJECT_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_bad_objects_are_one_line_for_every_command(tmp_path: Path, command: tuple[str, ...]):
    not_elf = tmp_path / "text.o"
    not_elf.write_text("not an object\n")
    no_progs = compile_bpf(tmp_path, NO_PROGRAMS, "maps_only")
    cases = {
        str(tmp_path): f"{tmp_path}: is a directory",
        str(tmp_path / "missing.o"): f"{tmp_path}/missing.o: no such file",
        str(not_elf): f"{not_elf}: not an ELF file",
    }
    for path, message in cases.items():
        assert one_line_error(vxdp(*(a.format(path) for a in command))) == message
    # no program: said once, without Python's quotes around it
    err = one_line_error(vxdp(*(a.format(no_progs) for a in command)))
    assert err.startswith(f"{no_progs}: no programs") and "'" not in err, err


def test_disasm_and_load_of_an_object_with_no_program_fail(tmp_path: Path):
    no_progs = str(compile_bpf(tmp_path, NO_PROGRAMS, "maps_only"))
    disasm = vxdp("prog", "disasm", no_progs)
    load = vxdp("prog", "load", no_progs, "--device", "nodev0")
    assert one_line_error(disasm) == one_line_error(load)


def test_load_names_an_unknown_program_before_any_daemon(samples_built):
    err = one_line_error(vxdp("prog", "load", XDP1, "--prog", "nope", "--device", "nodev0"))
    assert err == f"{XDP1}: no program named 'nope'; have xdp_prog1"


def test_json_errors_are_an_object_on_stdout(tmp_path: Path, samples_built):
    r = vxdp("prog", "disasm", str(tmp_path), "-j")
    assert r.returncode == 1 and r.stderr == ""
    assert json.loads(r.stdout) == {"error": f"{tmp_path}: is a directory"}
    r = vxdp("prog", "run", XDP1, "-j")  # no packets
    assert r.returncode == 1 and r.stderr == "" and "no packets" in json.loads(r.stdout)["error"]
    # a daemon that is not there: the same form, the exit status unchanged
    r = vxdp("prog", "show", "--device", "nodev0", "-j")
    assert r.returncode == 1 and r.stderr == ""
    assert json.loads(r.stdout)["error"].startswith("device nodev0: not running")
    r = vxdp("map", "dump", "rxcnt", "--guest", "noguest0", "-j")
    assert r.returncode == 1 and json.loads(r.stdout)["error"].startswith("guest noguest0: not running")
    # bad usage: exit 2, argparse's usage on stderr; with -j an error object on stdout
    r = vxdp("map", "lookup", "rxcnt", "--device", "nodev0")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("usage: vxdp map lookup")
    assert "vxdp map lookup: error: the following arguments are required: KEY" in r.stderr
    r = vxdp("map", "lookup", "rxcnt", "--device", "nodev0", "-j")
    assert (r.returncode, r.stderr) == (2, "")
    assert json.loads(r.stdout) == {"error": "vxdp map lookup: the following arguments are required: KEY"}


@pytest.mark.privileged
def test_json_error_carries_the_verifier_log(tmp_path: Path):
    unsafe = str(compile_bpf(tmp_path, UNSAFE, "unsafe"))
    text = vxdp("prog", "run", unsafe, "--engine", "kernel", "--mix", "1")
    assert text.returncode == 1 and "Traceback" not in text.stderr
    first, _, log = text.stderr.partition("\n")
    assert first.startswith(f"vxdp: {unsafe}: ") and "invalid access to packet" in log
    r = vxdp("prog", "run", unsafe, "--engine", "kernel", "--mix", "1", "-j")
    assert r.returncode == 1 and r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["error"] == first.removeprefix("vxdp: ") and "invalid access to packet" in doc["log"]


def test_bench_engines_without_samples_says_make_samples(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = one_line_error(vxdp("bench", "engines", "--samples", str(empty), "--out", str(tmp_path), cwd=tmp_path))
    assert err == f"{empty}/xdp1.o: no such file (run `make samples` in {ROOT})"
    assert not (tmp_path / "engines.json").exists()


@pytest.mark.privileged
@pytest.mark.slow
def test_bench_engines_outside_the_repository_finds_the_samples(tmp_path: Path, samples_built):
    """Run from a directory with no samples/build, as `vxdp demo` can be."""
    r = vxdp("bench", "engines", "--quick", "--out", str(tmp_path / "out"), "-j", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["results"]
    assert {row["object"] for row in rows} == {"xdp1.o", "xdp2.o", "xdp_flow.o"}


def test_help_says_the_defaults_and_the_exit_status():
    top = vxdp("--help").stdout
    assert "exit status" in top and '{"error"' in top
    bench = " ".join(vxdp("bench", "engines", "--help").stdout.split())
    assert f"default: {SAMPLES_BUILD}" in bench
    demo = " ".join(vxdp("demo", "--help").stdout.split())
    assert f"default: {SAMPLES_BUILD}/xdp1.o" in demo
    detach = " ".join(vxdp("prog", "detach", "--help").stdout.split())
    assert "nothing is loaded" in detach and "exit status 0" in detach
    update = " ".join(vxdp("map", "update", "--help").stdout.split())
    assert "(default: any)" in update
    load = " ".join(vxdp("prog", "load", "--help").stdout.split())
    assert "the default, and the only mode, with --device" in load
    for command in (("prog", "run"), ("prog", "load"), ("map", "lookup"), ("offload", "import"), ("demo",),
                    ("bench", "engines"), ("host", "show")):
        r = vxdp(*command, "--help")
        assert r.returncode == 0 and "exit status: 0 success; 1 an error" in " ".join(r.stdout.split()), command


def test_other_files_and_numbers_are_one_line(tmp_path: Path, samples_built):
    missing = tmp_path / "missing"
    assert one_line_error(vxdp("prog", "run", XDP1, "--pcap", str(tmp_path))) == f"{tmp_path}: is a directory"
    assert one_line_error(vxdp("prog", "run", XDP1, "--pcap", str(missing))) == f"{missing}: no such file"
    for n in ("0", "-3"):
        assert one_line_error(vxdp("prog", "run", XDP1, "--mix", n)) == "--mix must be at least 1"
        # no frames would "pass" the demo without showing anything
        assert one_line_error(vxdp("demo", "--frames", n)) == "--frames must be at least 1"
    # frames both engines' test runs would refuse
    for frame in ("", "00" * 13):
        for engine in ("interp", "kernel"):
            err = one_line_error(vxdp("prog", "run", XDP1, "--engine", engine, "--packet", frame))
            assert err.startswith(f"packet 0: {len(frame) // 2} bytes; a frame is 14 to "), err
    # bench refuses an --out that cannot be a directory before it runs, not after
    not_dir = tmp_path / "file"
    not_dir.write_text("")
    for bench in ("engines", "datapath"):
        assert one_line_error(vxdp("bench", bench, "--quick", "--out", str(not_dir))) == \
            f"--out {not_dir}: not a directory"
    # offload import reads its file before it asks the device
    assert one_line_error(vxdp("offload", "import", str(tmp_path), "--device", "nodev0")) == \
        f"{tmp_path}: is a directory"
    assert one_line_error(vxdp("offload", "import", str(missing), "--device", "nodev0")) == \
        f"{missing}: no such file"


def test_engine_choices_are_refused_before_any_daemon_starts(tmp_path: Path, samples_built):
    # --engine picks a native program's engine; an offloaded one runs on the host's
    assert one_line_error(vxdp("prog", "load", XDP1, "--offload", "--engine", "interp", "--guest", "noguest0")) == \
        "--engine picks what runs a --native program; an offloaded one runs on the host's engine"
    # a policy file and a flag that disagree on the engine: which did the operator mean?
    policy = tmp_path / "policy.toml"
    policy.write_text("[engine]\nname = 'kernel'\n")
    err = one_line_error(vxdp("host", "serve", "--socket", str(tmp_path / "s.sock"), "--port", "nosuch0",
                              "--engine", "interp", "--policy", str(policy)))
    assert err == f"--engine interp but the policy {policy} says engine.name = 'kernel': say one"
    assert not (tmp_path / "s.sock").exists()
