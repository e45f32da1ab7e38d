package tlsconf

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/fips140"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
)

// FIPS 140-3 mode.
//
// A process runs in FIPS 140-3 mode when it was built with GOFIPS140 set or
// started with GODEBUG=fips140=on (or =only). crypto/tls then filters every
// configured list down to what Go's module allows; tlsconf applies the same
// rules itself, explicitly, so that a listener configured with something
// FIPS mode forbids is refused when the configuration is loaded, naming the
// setting, rather than failing handshakes later. The lists below mirror
// crypto/tls's FIPS 140-3 policy (defaults_fips140.go of Go 1.26) intersected
// with Moat's own policy (forward secrecy and AEAD).

// FIPSCipherSuites are the TLS 1.2 suites offered in FIPS 140-3 mode when
// ListenerConfig.CipherSuites is empty: DefaultCipherSuites without
// ChaCha20-Poly1305, which is not a NIST-approved algorithm.
//
// The slice is shared: callers must not modify it.
var FIPSCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
}

// FIPSTLS13CipherSuites are the TLS 1.3 suites Go negotiates in FIPS 140-3
// mode: the AES-GCM ones.
//
// The slice is shared: callers must not modify it.
var FIPSTLS13CipherSuites = []uint16{
	tls.TLS_AES_128_GCM_SHA256,
	tls.TLS_AES_256_GCM_SHA384,
}

// FIPSCurvePreferences is the key exchange order in FIPS 140-3 mode when
// ListenerConfig.CurvePreferences is empty: the hybrid X25519MLKEM768
// (its ML-KEM-768 share is approved, FIPS 203; Go's module allows the
// combination), the all-NIST hybrid SecP256r1MLKEM768, then P-256 and
// P-384. Plain X25519 is not approved and never offered.
//
// The slice is shared: callers must not modify it.
var FIPSCurvePreferences = []tls.CurveID{
	tls.X25519MLKEM768,
	tls.SecP256r1MLKEM768,
	tls.CurveP256,
	tls.CurveP384,
}

// fipsGroups are the key exchange groups Go allows in FIPS 140-3 mode.
var fipsGroups = []tls.CurveID{
	tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024,
	tls.CurveP256, tls.CurveP384, tls.CurveP521,
}

// fipsTLS12Suites are the TLS 1.2 suites Go allows in FIPS 140-3 mode
// (the CBC ones also need allow_insecure_ciphers under Moat's policy).
var fipsTLS12Suites = []uint16{
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,
}

// FIPS140Mode reports the process's FIPS 140-3 mode: "off", "on"
// (approved algorithms are selected by default; built with GOFIPS140 or
// run with GODEBUG=fips140=on) or "only" (GODEBUG=fips140=only: a
// non-approved algorithm fails when used).
func FIPS140Mode() string {
	switch {
	case fips140.Enforced():
		return "only"
	case fips140.Enabled():
		return "on"
	}
	return "off"
}

// fipsApproved reports whether Go's FIPS 140-3 mode lets TLS negotiate s.
func (s suiteInfo) fipsApproved() bool {
	if s.tls13 {
		return slices.Contains(FIPSTLS13CipherSuites, s.id)
	}
	return slices.Contains(fipsTLS12Suites, s.id)
}

// fipsRefuses reports whether s may not be used because the process runs
// in FIPS 140-3 mode.
func (s suiteInfo) fipsRefuses() bool { return fips140.Enabled() && !s.fipsApproved() }

// fipsRefusesGroup reports whether key exchange group g may not be used
// because the process runs in FIPS 140-3 mode.
func fipsRefusesGroup(g tls.CurveID) bool {
	return fips140.Enabled() && !slices.Contains(fipsGroups, g)
}

// fipsRefusedKey describes the public key of a server certificate that
// FIPS 140-3 mode does not allow (Go would fail every handshake with it),
// or returns "" when the key is allowed or the process is not in that
// mode.
func fipsRefusedKey(c *x509.Certificate) string {
	if !fips140.Enabled() {
		return ""
	}
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Sprintf("%d-bit RSA", k.N.BitLen())
		}
		return ""
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() || k.Curve == elliptic.P521() {
			return ""
		}
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return ""
	}
	return fmt.Sprintf("%T", c.PublicKey)
}

// defaultCipherSuites returns the TLS 1.2 suites of a listener that
// configures none.
func defaultCipherSuites() []uint16 {
	if fips140.Enabled() {
		return FIPSCipherSuites
	}
	return DefaultCipherSuites
}

// defaultCurvePreferences returns the group order of a listener that
// configures none.
func defaultCurvePreferences() []tls.CurveID {
	if fips140.Enabled() {
		return FIPSCurvePreferences
	}
	return DefaultCurvePreferences
}

// fipsNote is appended to every FIPS refusal.
func fipsNote() string {
	return "not approved in FIPS 140-3 mode (fips140=" + FIPS140Mode() + "); see docs/fips.md"
}
