# Moat build and test entry points. `make test` is the one command that runs
# every test on a fresh machine: it installs the system packages the interop
# tests need when they are missing, then runs gofmt, vet, staticcheck, the
# race-enabled test suite and short fuzzing passes.

GO ?= go
PKGS ?= ./...
# Debian packages used by the interop tests (real peers, not mocks).
DEB_PACKAGES := mosquitto mosquitto-clients python3-paho-mqtt python3-cryptography python3-pycryptodome openssl testssl.sh curl microsocks slapd ldap-utils chromium prometheus
FUZZTIME ?= 10s
# staticcheck, pinned; fetched through the Go module proxy on first use.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build test deps vet lint unit fuzz bench gobench clean

all: build

build:
	$(GO) build -o bin/moat ./cmd/moat

deps:
	@./scripts/install-deps.sh $(DEB_PACKAGES)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)

lint:
	$(GO) run $(STATICCHECK) $(PKGS)

unit:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

fuzz:
	@./scripts/fuzz-all.sh $(FUZZTIME)

test: deps vet lint unit fuzz

# Side-by-side benchmark of Moat and Mosquitto (scripts/bench.sh; knobs are
# BENCH_* environment variables, see the script). Not part of `make test`.
bench:
	@./scripts/bench.sh

# Go micro-benchmarks of the hot paths.
gobench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

clean:
	rm -rf bin
