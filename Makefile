# lewel: the two commands are `make demo` and `make test`; both set up whatever is missing first.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: all setup build release test unit e2e demo bench fuzz fmt lint clean guard-controls learning

all: build

setup:
	@./scripts/setup.sh

build: setup
	$(CARGO) build --workspace

release: setup
	$(CARGO) build --workspace --release

## The whole suite: unit and black-box tests (`make unit`), then the cross-tool pipeline tests (`make e2e`).
test: unit
	$(MAKE) --no-print-directory e2e

## The cargo tests of the workspace: every crate's unit tests and its tests/ folder (no e2e).
unit: setup
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --no-fail-fast

## The cross-tool pipeline tests (tests/*.sh through scripts/e2e.sh) on a debug build;
## LEWEL_E2E_ONLY=NAME runs tests/NAME.sh alone.
e2e: build
	./scripts/e2e.sh

## The learning guards' negative controls: each guard (tests/learning-guard.sh for LEWEL_M,
## tests/learning-guard-byol.sh for LEWEL_B) must miss a detached backbone gradient, a frozen EMA and a
## negated loss (LEWEL_FAULT); about 8 minutes.
guard-controls: build
	for g in learning-guard learning-guard-byol; do \
		d=$$(mktemp -d) && (cd "$$d" && GUARD_CONTROLS=1 BIN=$(CURDIR)/target/debug FIXTURES=$(CURDIR)/fixtures \
			bash $(CURDIR)/tests/$$g.sh) || exit 1; rm -rf "$$d"; done

## The learning comparison of BENCHMARKS.md (scripts/learn-fmnist.sh): hours on a CPU; see the script for a GPU.
learning: release
	./scripts/learn-fmnist.sh

## Bounded fuzzing of every reader of outside bytes (RELIABILITY.md): FUZZ_SECONDS per target (10 targets),
## from FUZZ_SEED (default: the clock; printed, so a crash can be replayed). Crashing inputs land in target/fuzz-crashes/.
FUZZ_SECONDS ?= 30
fuzz: setup
	mkdir -p target
	LEWEL_FUZZ_SECONDS=$(FUZZ_SECONDS) LEWEL_FUZZ_VERBOSE=1 $(if $(FUZZ_SEED),LEWEL_FUZZ_SEED=$(FUZZ_SEED)) \
		$(CARGO) test -p lewel --test fuzz -- --nocapture --test-threads 1 2>&1 | tee target/fuzz.log

## The real pipeline on Fashion-MNIST (bundled fixtures when the Debian package is missing).
demo: release
	./scripts/demo.sh

## Benchmarks against peers measured in the same run (see BENCHMARKS.md).
bench: release
	./scripts/bench.sh

fmt:
	$(CARGO) fmt --all

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
