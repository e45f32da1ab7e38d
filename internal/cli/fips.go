package cli

import (
	"crypto/fips140"
	"log/slog"

	"github.com/moatmq/moat/internal/tlsconf"
)

// fipsState describes the process's FIPS 140-3 mode for `moat version`
// and the start-up log: "fips140: on (Go Cryptographic Module v1.0.0)".
func fipsState() string {
	mode := tlsconf.FIPS140Mode()
	if mode == "off" {
		return "fips140: off"
	}
	v := fips140.Version()
	if v == "latest" {
		v = "latest: the toolchain's in-tree module, not the v1.0.0 snapshot; build with make build-fips"
	}
	return "fips140: " + mode + " (Go Cryptographic Module " + v + ")"
}

// logFIPS logs the FIPS 140-3 state once at start-up.
func logFIPS(log *slog.Logger) {
	log.Info(fipsState(), "fips140", tlsconf.FIPS140Mode(), "module", fips140.Version())
	if fips140.Enforced() {
		log.Warn("fips140: only: a non-approved algorithm fails when used; Moat is tested with fips140=on, and end-to-end payloads cannot be sealed in this mode (see docs/fips.md)")
	}
}
