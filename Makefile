# nodewire — top-level commands. Needs root (network namespaces, loop devices) on Debian 12.
#   make demo   nodewire on a 2-node simulated VPC: pods on VPC IPs, traffic, an EBS volume
#               moving between nodes; a report; full teardown (DEMO_ARGS="--help" for options)
#   make test   everything CI runs: fmt, clippy, manifests, unit, kernel and e2e tests, moto contract suite
#   make bench  every benchmark (bench-* targets)
#   make image  the container image (buildah), checked: each binary answers --version

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= /var/tmp/nodewire-target
VENV := .venv
MOTO_VERSION := 5.2.5
KUBERNETES_VALIDATE_VERSION := 1.37.0
VPCSIM := $(CARGO_TARGET_DIR)/debug/vpcsim

# The vpc-cni that ships: release, statically linked. It runs on the host, not in the image, so it
# must not depend on the host's glibc; and with no dynamic loader every pod ADD/DEL starts ~0.4 ms
# sooner. Built for the explicit host triple so RUSTFLAGS reach only it (not build scripts).
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
# Segments aligned to 2 MiB in memory as in the file (no bigger file): where the page cache holds
# the binary in 2 MiB folios (an installed copy on ext4/xfs with large folios), the kernel maps
# the middle of the code with one huge-page entry instead of hundreds of small ones.
CNI_RUSTFLAGS := -C target-feature=+crt-static -C relocation-model=static -C link-arg=-Wl,-z,max-page-size=0x200000
CNI_STATIC := $(CARGO_TARGET_DIR)/$(HOST_TRIPLE)/cni/vpc-cni

# Benchmarks register themselves here (bench-cni, bench-ipamd, …) as they are added.
BENCH_TARGETS := bench-ipamd bench-cni bench-csi

.PHONY: image manifests ipamd-release cni-static all build test fmt-check clippy unit venv peers demo bench bench-ipamd bench-cni bench-csi deps leftovers clean-sim

all: build

deps:
	@bash scripts/deps.sh

build:
	$(CARGO) build --workspace --all-targets

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(VENV)/bin/moto_server: | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet --disable-pip-version-check moto==$(MOTO_VERSION) flask flask-cors

$(VENV)/bin/kubernetes-validate: | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)

venv: $(VENV)/bin/moto_server $(VENV)/bin/kubernetes-validate

# deploy/: every kustomize overlay rendered offline (kubectl kustomize), checked against the
# Kubernetes schemas (kubernetes-validate --strict) and for one driver name / existing accounts.
manifests: venv
	$(VENV)/bin/python scripts/validate-manifests.py

# Third-party CNI clients for the tests: containerd 1.6 + runc, Debian's reference plugins,
# cnitool built from Debian's libcni source, a local pause image, the PyPI CRI client (.peers/).
peers:
	@bash scripts/peers.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: venv peers
	$(CARGO) test --workspace --no-fail-fast

test: deps fmt-check clippy manifests
	@bash scripts/check-leftovers.sh snapshot
	@status=0; $(MAKE) --no-print-directory unit || status=$$?; \
	  bash scripts/check-leftovers.sh verify || status=1; exit $$status

DEMO_ARGS ?=
demo: deps
	$(CARGO) build -p nodewire-demo -p nodewire-ipamd -p nodewire-cni -p nodewire-csi
	@bash scripts/demo.sh $(CARGO_TARGET_DIR)/debug/nodewire-demo $(DEMO_ARGS)

bench:
ifeq ($(strip $(BENCH_TARGETS)),)
	@echo "no benchmarks yet: bench-* targets arrive with ipamd, vpc-cni and ebs-csi"
else
	$(MAKE) $(BENCH_TARGETS)
endif

# ipamd against vpcsim: EC2 calls to fill a node, ADD-path EC2 calls, peak RSS, datastore ops/s.
# The ipamd that ships: profile `ipamd` (size-optimised, fat LTO; its code pages are most of its RSS).
ipamd-release:
	$(CARGO) build --profile ipamd -p nodewire-ipamd --bin ipamd

bench-ipamd: deps ipamd-release
	$(CARGO) build --profile perf -p nodewire-ipamd --bin ipamd --example bench
	BENCH_IPAMD_BIN=$(CARGO_TARGET_DIR)/ipamd/ipamd $(CARGO_TARGET_DIR)/perf/examples/bench

# vpc-cni (+ ipamd on a vpcsim m5.4xlarge) vs Debian ptp+host-local: ADD/DEL p50/p99 and ratio,
# 200 pods sequential and 8-way; the stripped vpc-cni size (release build, as shipped).
cni-static:
	RUSTFLAGS="$(CNI_RUSTFLAGS)" \
	  $(CARGO) build --profile cni -p nodewire-cni --bin vpc-cni --target $(HOST_TRIPLE)
	@file $(CNI_STATIC) | grep -q 'statically linked' || { echo "$(CNI_STATIC) is not static" >&2; exit 1; }

bench-cni: deps peers cni-static
	$(CARGO) build --profile perf -p nodewire-ipamd -p nodewire-cni --bin ipamd --bin vpc-cni --example bench_cni
	BENCH_CNI_BIN=$(CNI_STATIC) $(CARGO_TARGET_DIR)/perf/examples/bench_cni

# ebs-csi against vpcsim (delays 0) and the raw tools: NodeStage vs mkfs.ext4 + mount (ratio),
# EC2 calls per create/attach/detach/delete cycle, CreateVolume → published mount.
bench-csi: deps
	$(CARGO) build --profile perf -p nodewire-csi --bin ebs-csi --example bench_csi
	BENCH_CSI_BIN=$(CARGO_TARGET_DIR)/perf/ebs-csi $(CARGO_TARGET_DIR)/perf/examples/bench_csi

# The container image (Dockerfile) built with buildah against local Debian/Rust base images
# (scripts/base-images.sh: debootstrap + this machine's toolchain, under the default names);
# proven by every binary answering --version inside it.
image: deps
	bash scripts/image.sh

# Remove a simulation left behind by a crashed `vpcsim up` (default state directory).
clean-sim:
	$(VPCSIM) down --state-dir /var/run/vpcsim
