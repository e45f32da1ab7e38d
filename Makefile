# Moat build and test entry points. `make test` is the one command that runs
# every test on a fresh machine: it installs the system packages the interop
# tests need when they are missing, then runs gofmt, vet, staticcheck, the
# race-enabled test suite and short fuzzing passes.

GO ?= go
PKGS ?= ./...
# Debian packages used by the interop tests (real peers, not mocks).
DEB_PACKAGES := mosquitto mosquitto-clients python3-paho-mqtt python3-cryptography python3-pycryptodome openssl testssl.sh curl microsocks slapd ldap-utils
FUZZTIME ?= 10s
# staticcheck, pinned; fetched through the Go module proxy on first use.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build build-fips test deps vet lint unit fuzz fips-test bench gobench clean

all: build

build:
	$(GO) build -o bin/moat ./cmd/moat

# FIPS 140-3 build (docs/fips.md): the Go Cryptographic Module snapshot
# shipped with the toolchain (GOROOT/lib/fips140, no download), FIPS mode on
# without any GODEBUG setting.
GOFIPS140_VERSION ?= v1.0.0
build-fips:
	GOFIPS140=$(GOFIPS140_VERSION) $(GO) build -o bin/moat-fips ./cmd/moat

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

# The FIPS 140-3 claims, run in FIPS mode: the TLS policy (handshakes with
# Go and openssl, refused settings), e2e, password hashes, the key service,
# `moat version` and a GOFIPS140 build. testssl.sh's scan runs in `unit`.
FIPS_PKGS := ./internal/tlsconf/... ./e2e/ ./e2e/internal/... ./e2e/ota/ ./internal/authn/passwd/...
fips-test:
	GODEBUG=fips140=on $(GO) test -count=1 -timeout 5m -skip 'TestTestSSLScan|ExampleGenerateMemberKey' $(FIPS_PKGS)
	GODEBUG=fips140=on $(GO) test -count=1 -timeout 5m -run FIPS ./e2e/keyservice/ ./internal/cli/

test: deps vet lint unit fuzz fips-test

# Side-by-side benchmark of Moat and Mosquitto (scripts/bench.sh; knobs are
# BENCH_* environment variables, see the script). Not part of `make test`.
bench:
	@./scripts/bench.sh

# Go micro-benchmarks of the hot paths.
gobench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

clean:
	rm -rf bin
