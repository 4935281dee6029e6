# vxdp: two commands on a fresh machine: `make demo` and `make test`.
# Both set everything up first (Debian packages, a virtualenv, the package, the
# sample programs) and are safe to run again.

PYTHON   ?= python3
VENV     := .venv
VPY      := $(VENV)/bin/python
ARCH     := $(shell uname -m)
APT_PKGS := clang llvm libbpf-dev bpftool iproute2 ethtool iperf3 sockperf qemu-system-x86 dpdk dpdk-dev busybox-static cpio iputils-ping
SAMPLES  := samples
BUILD    := $(SAMPLES)/build
BPF_CFLAGS := -O2 -g -target bpf -Wall -Wno-unused-value -I/usr/include/$(ARCH)-linux-gnu -I$(SAMPLES)/include
SOURCES  := $(wildcard $(SAMPLES)/*.c) $(wildcard $(SAMPLES)/corpus/*.c)
OBJECTS  := $(patsubst $(SAMPLES)/%.c,$(BUILD)/%.o,$(SOURCES))
PYTEST_ARGS ?=

.PHONY: all setup apt venv samples compile test demo bpffs clean

all: setup

setup: apt venv samples bpffs compile

# the daemons' compiled datapath loops (numba), built once so that no daemon compiles them on its first
# run; they live in src/vxdp/**/__pycache__ (or $$NUMBA_CACHE_DIR); a no-op when the cache is current
compile: venv
	$(VENV)/bin/vxdp compile

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

samples: apt $(OBJECTS)

$(BUILD)/%.o: $(SAMPLES)/%.c $(wildcard $(SAMPLES)/include/*.h)
	@mkdir -p $(dir $@)
	clang $(BPF_CFLAGS) -c $< -o $@

bpffs:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/vxdp prog run $(BUILD)/xdp1.o --engine interp --mix 64
	$(VENV)/bin/vxdp prog run $(BUILD)/xdp1.o --engine kernel --mix 64
	$(VENV)/bin/vxdp demo

clean:
	rm -rf $(BUILD) $(VENV)
	find src -name '*.nbi' -o -name '*.nbc' | xargs -r rm -f
